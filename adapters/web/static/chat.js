// The web chat: sign in, pick a persona, start or reopen a conversation, stream answers.
import { api, errorFrom, h, randomId, show, signIn, storedKey, when } from "./common.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const el = {
  app: $("app"),
  conversations: $("conversations"),
  noConversations: $("no-conversations"),
  newConversation: $("new-conversation"),
  title: $("conversation-title"),
  persona: $("persona"),
  personaDescription: $("persona-description"),
  reset: $("reset"),
  pageError: $("page-error"),
  messages: $("messages"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  answering: $("answering"),
};

const state = {
  personas: [],
  conversations: [],
  current: null, // the open Conversation, or null before the first message of a new one
  stream: null, // the AbortController of the answer being streamed
};

const CLOSING = new Set(["final", "command", "refused", "retracted", "failed"]);

const signOut = signIn({
  elements: {
    form: $("sign-in"),
    input: $("key"),
    error: $("sign-in-error"),
    signOut: $("sign-out"),
    who: $("who"),
  },
  onSignedIn: start,
  onSignedOut: stop,
});

async function start() {
  show(el.app, true);
  try {
    await Promise.all([loadPersonas(), loadConversations()]);
    const id = decodeURIComponent(location.hash.slice(1));
    if (id) await openConversation(id);
    else startNew();
  } catch (e) {
    failed(e);
  }
  el.message.focus();
}

function stop() {
  state.stream?.abort();
  Object.assign(state, { personas: [], conversations: [], current: null, stream: null });
  el.messages.replaceChildren();
  el.conversations.replaceChildren();
  setError("");
  setBusy(false);
  history.replaceState(null, "", location.pathname);
  show(el.app, false);
}

// An API error: 401 means the key stopped working (back to sign-in); others show inline.
function failed(e) {
  if (e.status === 401) signOut("Your key is no longer accepted. Sign in again.");
  else setError(e.message);
}

function setError(message) {
  el.pageError.textContent = message;
  show(el.pageError, Boolean(message));
}

function setBusy(busy) {
  show(el.answering, busy);
  el.send.disabled = busy;
  el.composer.setAttribute("aria-busy", String(busy));
}

// --- personas ------------------------------------------------------------------------------

async function loadPersonas() {
  const answer = await api("/api/v1/personas");
  state.personas = answer.personas;
  el.persona.replaceChildren(
    ...answer.personas.map((p) =>
      h("option", { value: p.name, textContent: p.name }),
    ),
  );
  el.persona.value = answer.default;
  describePersona();
}

function describePersona() {
  const persona = state.personas.find((p) => p.name === el.persona.value);
  el.personaDescription.textContent = persona
    ? [persona.description, persona.model && `model: ${persona.model}`].filter(Boolean).join(" · ")
    : "";
}

el.persona.addEventListener("change", async () => {
  describePersona();
  if (!state.current) return; // the persona of the next new conversation
  const previous = state.current.persona;
  try {
    state.current = await api(`/api/v1/conversations/${enc(state.current.id)}/persona`, {
      method: "PUT",
      body: { persona: el.persona.value },
    });
    addNotice(`This conversation now uses the persona ${state.current.persona}.`, "info");
    setError("");
    await loadConversations();
  } catch (e) {
    el.persona.value = previous;
    describePersona();
    failed(e);
  }
});

// --- conversations -------------------------------------------------------------------------

const enc = encodeURIComponent;

async function loadConversations() {
  const answer = await api("/api/v1/conversations");
  state.conversations = answer.conversations;
  renderConversations();
}

function renderConversations() {
  el.conversations.replaceChildren(
    ...state.conversations.map((c) => {
      const button = h(
        "button",
        { type: "button", className: "conversation-link", onclick: () => openConversation(c.id) },
        h("span", { className: "conversation-name", textContent: c.title || "New conversation" }),
        h("span", { className: "muted small", textContent: `${c.persona} · ${when(c.updated_at)}` }),
      );
      if (state.current?.id === c.id) button.setAttribute("aria-current", "true");
      return h("li", { dataset: { id: c.id } }, button);
    }),
  );
  show(el.noConversations, state.conversations.length === 0);
  const current = state.conversations.find((c) => c.id === state.current?.id);
  if (current) el.title.textContent = current.title || "New conversation";
}

async function openConversation(id) {
  state.stream?.abort();
  setError("");
  let conversation;
  try {
    conversation = await api(`/api/v1/conversations/${enc(id)}`);
  } catch (e) {
    if (e.status === 404) {
      setError("That conversation was not found.");
      startNew();
    } else failed(e);
    return;
  }
  state.current = conversation;
  history.replaceState(null, "", `#${enc(conversation.id)}`);
  el.title.textContent = conversation.title || "New conversation";
  if (![...el.persona.options].some((o) => o.value === conversation.persona)) {
    el.persona.append(h("option", { value: conversation.persona, textContent: conversation.persona }));
  }
  el.persona.value = conversation.persona;
  describePersona();
  el.reset.disabled = false;
  el.messages.replaceChildren(
    ...(conversation.messages || []).map((m) =>
      m.role === "user" ? userMessage(m.content, m.created_at) : assistantMessage(m.content),
    ),
  );
  renderConversations();
  scrollDown(true);
}

// A blank page for a new conversation; it is created when its first message is sent (or at
// once with the "New conversation" button).
function startNew() {
  state.current = null;
  history.replaceState(null, "", location.pathname);
  el.title.textContent = "New conversation";
  el.reset.disabled = true;
  el.messages.replaceChildren();
  renderConversations();
}

async function createConversation() {
  const conversation = await api("/api/v1/conversations", {
    method: "POST",
    body: { persona: el.persona.value },
  });
  state.current = conversation;
  history.replaceState(null, "", `#${enc(conversation.id)}`);
  el.title.textContent = conversation.title || "New conversation";
  el.reset.disabled = false;
  state.conversations = [conversation, ...state.conversations.filter((c) => c.id !== conversation.id)];
  renderConversations();
  return conversation;
}

el.newConversation.addEventListener("click", async () => {
  state.stream?.abort();
  setError("");
  startNew();
  try {
    await createConversation();
  } catch (e) {
    failed(e);
  }
  el.message.focus();
});

el.reset.addEventListener("click", async () => {
  if (!state.current) return;
  try {
    await api(`/api/v1/conversations/${enc(state.current.id)}/reset`, { method: "POST" });
    addNotice("The conversation was reset: the next message starts afresh.", "info");
    setError("");
  } catch (e) {
    failed(e);
  }
});

// --- messages ------------------------------------------------------------------------------

function userMessage(text, createdAt) {
  // The user's own words are shown exactly as typed: plain text, never Markdown or HTML.
  return h(
    "li",
    { className: "msg user" },
    h("span", { className: "role", textContent: "You" }),
    h("div", { className: "body plain", textContent: text, title: when(createdAt) }),
  );
}

function assistantMessage(text) {
  const body = h("div", { className: "body markdown" });
  body.append(renderMarkdown(text));
  return h(
    "li",
    { className: "msg assistant" },
    h("span", { className: "role", textContent: "Parley" }),
    body,
  );
}

// A notice: a command's answer, a refusal, a failure, an error. Shown as Markdown (safe).
function addNotice(text, kind) {
  const body = h("div", { className: "body markdown" });
  body.append(renderMarkdown(text));
  const item = h("li", { className: `msg notice ${kind}`, dataset: { kind } }, body);
  el.messages.append(item);
  scrollDown(true);
  return item;
}

function scrollDown(force = false) {
  const m = el.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 80) m.scrollTop = m.scrollHeight;
}

// The answer being streamed: text rendered as it grows, tool activity under it.
class Answer {
  constructor() {
    this.text = "";
    this.body = h("div", { className: "body markdown" });
    this.tools = h("ul", { className: "tools", "aria-label": "Tool activity" });
    this.item = h(
      "li",
      { className: "msg assistant streaming" },
      h("span", { className: "role", textContent: "Parley" }),
      this.tools,
      this.body,
    );
    el.messages.append(this.item);
    this.pending = false;
  }

  add(delta) {
    this.text += delta;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render(this.text);
    });
  }

  render(text) {
    this.body.replaceChildren(renderMarkdown(text));
    scrollDown();
  }

  tool({ name, call_id: callId, state: toolState, ok }) {
    const id = callId || name;
    let line = [...this.tools.children].find((li) => li.dataset.call === id);
    if (!line) {
      line = h("li", { dataset: { call: id } });
      this.tools.append(line);
    }
    line.textContent =
      toolState === "started" ? `using ${name}…` : `used ${name}${ok === false ? " (failed)" : ""}`;
    scrollDown();
  }

  finish(text) {
    this.text = text;
    this.pending = true; // no later frame re-renders the deltas over the final text
    this.render(text);
    this.item.classList.remove("streaming");
  }

  remove() {
    this.pending = true;
    this.item.remove();
  }
}

el.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    el.composer.requestSubmit();
  }
});

el.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = el.message.value;
  if (!text.trim() || state.stream) return;
  el.message.value = "";
  setError("");
  await send(text);
});

async function send(text) {
  const controller = new AbortController();
  state.stream = controller;
  setBusy(true);
  let answer = null;
  try {
    const conversation = state.current ?? (await createConversation());
    el.messages.append(userMessage(text, new Date().toISOString()));
    scrollDown(true);
    answer = new Answer();
    const response = await fetch(`/api/v1/conversations/${enc(conversation.id)}/messages`, {
      method: "POST",
      headers: {
        Accept: "text/event-stream",
        "Content-Type": "application/json",
        Authorization: `Bearer ${storedKey()}`,
        "Idempotency-Key": randomId(),
      },
      body: JSON.stringify({ text }),
      signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    let closed = false;
    if ((response.headers.get("Content-Type") || "").includes("text/event-stream")) {
      for await (const { event, data } of serverEvents(response)) {
        handleEvent(answer, event, data);
        if (CLOSING.has(event)) {
          closed = true;
          break;
        }
      }
    } else {
      const data = await response.json(); // the JSON form: {"kind": ..., "text": ...}
      handleEvent(answer, data.kind, data);
      closed = CLOSING.has(data.kind);
    }
    if (!closed) {
      answer.finish(answer.text);
      addNotice(
        "The connection closed before the answer was complete. The answer is kept: " +
          "reopen the conversation to see it.",
        "failed",
      );
    }
  } catch (e) {
    if (controller.signal.aborted) return; // another conversation was opened
    if (answer && !answer.text) answer.remove();
    if (e.status === 401) {
      failed(e);
      return;
    }
    if (!el.message.value) el.message.value = text; // to send again
    addNotice(e.message || "The message could not be sent.", "error");
  } finally {
    if (state.stream === controller) {
      state.stream = null;
      setBusy(false);
    }
  }
  if (!controller.signal.aborted) {
    loadConversations().catch(failed); // titles and order change after a message
  }
}

function handleEvent(answer, event, data) {
  switch (event) {
    case "delta":
      answer.add(data.text ?? "");
      break;
    case "tool":
      answer.tool(data);
      break;
    case "final":
      answer.finish(data.text ?? answer.text);
      break;
    case "failed":
      if (data.partial) answer.finish(data.partial);
      else answer.remove();
      addNotice(data.text ?? "The answer failed.", "failed");
      break;
    case "command":
    case "refused":
    case "retracted":
      // A retracted answer was withdrawn by moderation: what was shown goes away.
      answer.remove();
      addNotice(data.text ?? "", event);
      break;
    default:
      break; // an event this page does not know: ignored
  }
}

// The events of a text/event-stream response: {event, data} with data parsed as JSON.
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let match;
      while ((match = /\r?\n\r?\n/.exec(buffer))) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const parsed = parseEvent(block);
        if (parsed) yield parsed;
      }
    }
    const last = parseEvent(buffer);
    if (last) yield last;
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
