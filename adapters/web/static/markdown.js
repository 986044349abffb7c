// A small, safe Markdown renderer for model output.
//
// It builds DOM nodes with document.createElement and text nodes only: the text is never
// parsed as HTML, so "<script>" or "<img onerror=...>" in an answer shows as those characters.
// The only attribute taken from the text is a link's href, and only for absolute http, https
// and mailto URLs; any other link ([x](javascript:...), data:, relative) stays plain text.
//
// Supported: paragraphs (a single newline is a line break), # headings, **bold**, __bold__,
// *italic*, _italic_, `inline code`, ``` fenced code blocks, - / * / + bullet lists,
// 1. numbered lists, > quotes, --- rules, [text](url) links, bare http(s) URLs, \ escapes.

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const ESCAPABLE = "\\`*_{}[]()#+-.!>~|<";

// The href to use for `url`, or null when it is not an absolute http, https or mailto URL.
export function safeHref(url) {
  const trimmed = url.trim();
  if (!/^(https?|mailto):/i.test(trimmed)) return null;
  let parsed;
  try {
    parsed = new URL(trimmed);
  } catch {
    return null;
  }
  return SAFE_SCHEMES.has(parsed.protocol) ? trimmed : null;
}

// Markdown text -> a DocumentFragment.
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let paragraph = [];

  const flushParagraph = () => {
    if (!paragraph.length) return;
    const p = document.createElement("p");
    paragraph.forEach((line, n) => {
      if (n) p.append(document.createElement("br"));
      renderInline(line, p);
    });
    fragment.append(p);
    paragraph = [];
  };

  while (i < lines.length) {
    const line = lines[i];
    let match;

    if ((match = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/.exec(line))) {
      flushParagraph();
      const fence = match[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence)) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end of the text while the answer streams)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (/^[\w+#.-]{1,30}$/.test(match[2])) {
        code.className = `language-${match[2]}`;
        code.dataset.language = match[2];
      }
      code.textContent = body.join("\n");
      pre.append(code);
      fragment.append(pre);
      continue;
    }

    if (!line.trim()) {
      flushParagraph();
      i += 1;
      continue;
    }

    if ((match = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line))) {
      flushParagraph();
      const heading = document.createElement(`h${match[1].length}`);
      renderInline(match[2], heading);
      fragment.append(heading);
      i += 1;
      continue;
    }

    if (/^ {0,3}([-*_])\s*(\1\s*){2,}$/.test(line)) {
      flushParagraph();
      fragment.append(document.createElement("hr"));
      i += 1;
      continue;
    }

    if (/^ {0,3}>/.test(line)) {
      flushParagraph();
      const quoted = [];
      while (i < lines.length && /^ {0,3}>/.test(lines[i])) {
        quoted.push(lines[i].replace(/^ {0,3}> ?/, ""));
        i += 1;
      }
      const blockquote = document.createElement("blockquote");
      blockquote.append(renderMarkdown(quoted.join("\n")));
      fragment.append(blockquote);
      continue;
    }

    const item = listItem(line);
    if (item) {
      flushParagraph();
      const list = document.createElement(item.ordered ? "ol" : "ul");
      if (item.ordered && item.start !== 1) list.start = item.start;
      let current = null;
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (next && next.ordered === item.ordered) {
          current = document.createElement("li");
          renderInline(next.text, current);
          list.append(current);
        } else if (current && /^\s+\S/.test(lines[i]) && !listItem(lines[i])) {
          // An indented line continues the item above.
          current.append(document.createElement("br"));
          renderInline(lines[i].trim(), current);
        } else if (current && /^\s+/.test(lines[i]) && listItem(lines[i].trim())) {
          // A nested item: shown in the list as an item of its own.
          const nested = listItem(lines[i].trim());
          current = document.createElement("li");
          renderInline(nested.text, current);
          list.append(current);
        } else break;
        i += 1;
      }
      fragment.append(list);
      continue;
    }

    paragraph.push(line);
    i += 1;
  }
  flushParagraph();
  return fragment;
}

function listItem(line) {
  let match = /^ {0,3}[-*+]\s+(.*)$/.exec(line);
  if (match) return { ordered: false, text: match[1] };
  match = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/.exec(line);
  if (match) return { ordered: true, start: Number(match[1]), text: match[2] };
  return null;
}

const isSpace = (c) => c === undefined || /\s/.test(c);
const isWordChar = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);

// Inline Markdown in `text` appended to `parent` as nodes. `links` false inside a link's text.
export function renderInline(text, parent, links = true) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];

    if (c === "\\" && ESCAPABLE.includes(text[i + 1] ?? "\n")) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }

    if (c === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const end = findRun(text, run, i + run.length);
      if (end !== -1) {
        flush();
        const code = document.createElement("code");
        let inner = text.slice(i + run.length, end);
        if (/^ .* $/.test(inner)) inner = inner.slice(1, -1);
        code.textContent = inner;
        parent.append(code);
        i = end + run.length;
      } else {
        buffer += run;
        i += run.length;
      }
      continue;
    }

    if ((c === "*" || c === "_") && text[i + 1] === c) {
      const end = closing(text, c + c, i);
      if (end !== -1) {
        flush();
        const strong = document.createElement("strong");
        renderInline(text.slice(i + 2, end), strong, links);
        parent.append(strong);
        i = end + 2;
        continue;
      }
    }

    if (c === "*" || c === "_") {
      const end = closing(text, c, i);
      if (end !== -1) {
        flush();
        const em = document.createElement("em");
        renderInline(text.slice(i + 1, end), em, links);
        parent.append(em);
        i = end + 1;
        continue;
      }
    }

    if (c === "[" && links) {
      const match = /^\[((?:[^\[\]\\]|\\.)*)\]\(\s*((?:[^()\s]|\([^()\s]*\))*)(?:\s+"[^"]*")?\s*\)/.exec(
        text.slice(i),
      );
      if (match) {
        const href = safeHref(match[2]);
        if (href) {
          flush();
          const a = document.createElement("a");
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          renderInline(match[1], a, false);
          parent.append(a);
        } else {
          buffer += match[0]; // not a safe link: the source, as text
        }
        i += match[0].length;
        continue;
      }
    }

    if (links && (c === "h" || c === "H") && !isWordChar(text[i - 1])) {
      const match = /^https?:\/\/[^\s<>"'`]+/i.exec(text.slice(i));
      if (match) {
        let url = match[0].replace(/[.,;:!?*_]+$/, "");
        // A closing parenthesis belongs to the URL only when it opened one.
        while (url.endsWith(")") && count(url, "(") < count(url, ")")) url = url.slice(0, -1);
        const href = safeHref(url);
        if (href) {
          flush();
          const a = document.createElement("a");
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          a.textContent = url;
          parent.append(a);
          i += url.length;
          continue;
        }
      }
    }

    buffer += c;
    i += 1;
  }
  flush();
}

function count(text, char) {
  return text.split(char).length - 1;
}

function findRun(text, run, from) {
  let at = text.indexOf(run, from);
  while (at !== -1) {
    const before = text[at - 1];
    const after = text[at + run.length];
    if (before !== "`" && after !== "`") return at;
    at = text.indexOf(run, at + 1);
  }
  return -1;
}

// Where the delimiter closing the one at `start` is, or -1. An opening delimiter is followed by
// a non-space, a closing one preceded by a non-space; "_" does not work inside words
// (snake_case stays as it is).
function closing(text, delimiter, start) {
  const open = start + delimiter.length;
  if (isSpace(text[open])) return -1;
  if (delimiter[0] === "_" && isWordChar(text[start - 1])) return -1;
  let at = text.indexOf(delimiter, open + 1);
  while (at !== -1) {
    const single = delimiter.length === 1;
    // "***both***": the strong closes on the last two stars, the emphasis inside on the first.
    while (!single && text[at + delimiter.length] === delimiter[0]) at += 1;
    const doubled = single && (text[at + 1] === delimiter || text[at - 1] === delimiter);
    if (
      !isSpace(text[at - 1]) &&
      !doubled &&
      !(delimiter[0] === "_" && isWordChar(text[at + delimiter.length]))
    ) {
      return at;
    }
    at = text.indexOf(delimiter, at + 1);
  }
  return -1;
}
