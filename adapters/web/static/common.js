// Shared by the chat page and the admin console: the API key, API calls, sign-in, and a
// small DOM helper. Nothing here ever parses a string as HTML.

const KEY_STORAGE = "parley.key";

export class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export const storedKey = () => localStorage.getItem(KEY_STORAGE);
export const storeKey = (key) => localStorage.setItem(KEY_STORAGE, key);
export const forgetKey = () => localStorage.removeItem(KEY_STORAGE);

// The error a failed response carries: the server's message when it sent one.
export async function errorFrom(response) {
  let message = `The server answered ${response.status} ${response.statusText}`.trim();
  let type = "http";
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      message = body.error.message;
      type = body.error.type || type;
    }
  } catch {
    // Not JSON (a proxy's error page, say): keep the status line.
  }
  return new ApiError(response.status, message, type);
}

// fetch() for the API with the bearer key; JSON in and out. `key` defaults to the stored one.
export async function api(path, { method = "GET", body, key, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  const token = key ?? storedKey();
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The server could not be reached. Check the connection and try again.");
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// h("li", {className: "x", onclick: f}, "text", child): properties are set as properties
// (textContent and the like), strings become text nodes.
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("aria-") || name === "role" || name === "for") {
      el.setAttribute(name, value);
    } else el[name] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

// "2026-12-06T10:00:00Z" -> a short local date and time; the raw string when unparseable.
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/*
 * The sign-in form both pages share. `elements`: form, input, error (a role=alert element),
 * signOut (a button), who (where "Signed in as NAME" goes). `onSignedIn(me)` runs once a key is
 * accepted; `accept(me)` may return a message refusing it (the admin console's "admin key
 * needed"), in which case the key is not stored. `onSignedOut()` runs on sign-out.
 */
export function signIn({ elements, onSignedIn, onSignedOut, accept = () => null }) {
  const { form, input, error, signOut, who } = elements;
  const fail = (message) => {
    error.textContent = message;
    show(error, Boolean(message));
    if (message) show(form, true);
  };

  const enter = async (key, { stored }) => {
    let me;
    try {
      me = await api("/api/v1/me", { key });
    } catch (e) {
      if (e.status === 401) {
        if (stored) forgetKey();
        fail(
          stored
            ? "Your saved key is no longer accepted. Sign in with a valid key."
            : "That key was not accepted. Check it and try again.",
        );
      } else fail(e.message);
      return false;
    }
    const refusal = accept(me);
    if (refusal) {
      fail(refusal);
      return false;
    }
    if (!stored) storeKey(key);
    fail("");
    input.value = "";
    who.textContent = `Signed in as ${me.name}${me.admin ? " (admin)" : ""}`;
    show(signOut, true);
    show(form, false);
    await onSignedIn(me);
    return true;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      fail("Enter an API key (it starts with pk-).");
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await enter(key, { stored: false });
    } finally {
      button.disabled = false;
    }
  });

  const leave = (message = "") => {
    forgetKey();
    who.textContent = "";
    show(signOut, false);
    show(form, true);
    fail(message);
    onSignedOut();
    input.focus();
  };
  signOut.addEventListener("click", () => leave());

  const key = storedKey();
  if (key) enter(key, { stored: true });
  else {
    show(form, true);
    input.focus();
  }
  // The pages call this when the API answers 401 later on (a revoked key).
  return (message) => leave(message);
}
