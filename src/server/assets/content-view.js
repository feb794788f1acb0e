// What a message carries besides text (media, a picked reply, a reaction,
// a location, contact cards, offered options; docs/protocol.md), in words
// and as DOM nodes: shared by the web page (/ui) and the dashboard, served
// by the hub at /assets/content-view.js (src/server/assets.rs). Every
// string is someone else's: it only ever becomes textContent, and the only
// URLs fetched or linked are this hub's media paths (and a map link built
// from two numbers).

const MEDIA_PREFIX = "/api/v1/sessions/";
export const str = (v) => (typeof v === "string" ? v : "");
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function humanSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024, i = 0;
  while (v >= 1023.95 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(1)} ${units[i]}`;
}

// This hub's media path for `url`, or null (another origin, a scheme, ..).
function hubMediaPath(url) {
  if (!str(url).startsWith(MEDIA_PREFIX)) return null;
  try {
    const u = new URL(url, location.origin);
    return u.origin === location.origin && u.pathname.startsWith(MEDIA_PREFIX) ? u.pathname + u.search : null;
  } catch (e) { return null; }
}

// The content in words, shown instead of the `message` summary (which says
// less); null when there is nothing beyond the text.
export function contentText(m) {
  const parts = [];
  if (isObject(m.media)) {
    const md = m.media;
    let t = md.voice === true ? "voice note" : str(md.kind) || "media";
    if (str(md.filename)) t += ` ${md.filename}`;
    if (Number.isSafeInteger(md.size) && md.size >= 0) t += ` (${humanSize(md.size)})`;
    if (str(md.caption)) t += ` "${md.caption}"`;
    parts.push(t);
  }
  if (isObject(m.reply)) {
    const r = m.reply;
    parts.push(`↩ picked "${str(r.title)}" (${str(r.id)})${str(r.description) ? " — " + r.description : ""}`);
  }
  if (isObject(m.reaction)) {
    const r = m.reaction;
    parts.push(str(r.emoji) ? `reacted ${r.emoji} to message ${str(r.message_id)}` : `removed the reaction to message ${str(r.message_id)}`);
  }
  if (isObject(m.location) && Number.isFinite(m.location.latitude) && Number.isFinite(m.location.longitude)) {
    const l = m.location;
    const place = [str(l.name), str(l.address)].filter(Boolean).join(", ");
    parts.push(`📍 ${l.latitude},${l.longitude}${place ? " " + place : ""}`);
  }
  if (Array.isArray(m.contacts) && m.contacts.length) {
    const cards = m.contacts.filter(isObject).map((c) => {
      const phones = Array.isArray(c.phones) ? c.phones.filter((p) => typeof p === "string") : [];
      return phones.length ? `${str(c.name)} (${phones.join(", ")})` : str(c.name);
    });
    parts.push(`shared contact${cards.length === 1 ? "" : "s"}: ${cards.join("; ")}`);
  }
  if (str(m.unsupported)) parts.push(`unsupported message type ${m.unsupported}`);
  return parts.length ? parts.join(" ") : null;
}

// The bytes of a hub media path, fetched with the token.
async function fetchMedia(path, token) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return r.blob();
}

// Points an <img> or <audio> at a hub media path. With a token the bytes
// are fetched with it (`src` cannot send a header) and shown from an
// object URL, revoked when the element leaves the page (revokeOnRemoval).
function loadMedia(node, path, token) {
  if (!token) { node.src = path; return; }
  fetchMedia(path, token).then((blob) => {
    if (!node.isConnected) return; // gone before its bytes came
    const url = URL.createObjectURL(blob);
    node.dataset.objectUrl = url;
    node.src = url;
  }).catch((err) => { node.replaceWith(textNode("span", `(media not loaded: ${err.message})`)); });
}

export function revokeOnRemoval(container) {
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.removedNodes) {
        if (n.nodeType !== Node.ELEMENT_NODE) continue;
        for (const e of [n, ...n.querySelectorAll("[data-object-url]")]) {
          if (e.dataset.objectUrl) URL.revokeObjectURL(e.dataset.objectUrl);
        }
      }
    }
  }).observe(container, { childList: true, subtree: true });
}

export function textNode(tag, text, cls) {
  const e = document.createElement(tag);
  e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// Other media: a link that downloads it (with a token: fetched, then
// handed over as an object URL, since a link cannot carry the header).
function mediaLink(path, media, token) {
  const name = str(media.filename);
  const a = textNode("a", name ? `download ${name}` : `open ${str(media.kind) || "media"}`, "media");
  a.href = path;
  a.download = name;
  if (token) {
    a.addEventListener("click", (e) => {
      e.preventDefault();
      fetchMedia(path, token).then((blob) => {
        const url = URL.createObjectURL(blob);
        const save = document.createElement("a");
        save.href = url;
        save.download = name;
        save.click();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      }).catch((err) => { a.textContent = `${a.textContent} (not loaded: ${err.message})`; });
    });
  }
  return a;
}

// Offered options, numbered across a list's sections.
function optionNodes(x) {
  if (!isObject(x)) return [];
  const list = (rows, start) => {
    const ol = document.createElement("ol");
    ol.className = "options";
    ol.start = start;
    for (const o of rows.filter(isObject)) ol.append(textNode("li", str(o.title) + (str(o.description) ? ` — ${o.description}` : "")));
    return ol;
  };
  if (x.type === "buttons" && Array.isArray(x.buttons)) return [list(x.buttons, 1)];
  if (x.type !== "list" || !Array.isArray(x.sections)) return [];
  const nodes = [textNode("div", `list "${str(x.button)}":`)];
  let n = 1;
  for (const s of x.sections.filter((s) => isObject(s) && Array.isArray(s.rows))) {
    if (str(s.title)) nodes.push(textNode("div", `${s.title}:`));
    nodes.push(list(s.rows, n));
    n += s.rows.length;
  }
  return nodes;
}

// The nodes under a message's line: an image or sticker inline, a voice
// note to play, a link to other media, a map link, the offered options.
export function contentNodes(m, token) {
  const nodes = [];
  const media = isObject(m.media) ? m.media : null;
  const path = media && hubMediaPath(media.url);
  if (path && (media.kind === "image" || media.kind === "sticker")) {
    const img = document.createElement("img");
    img.className = `media ${media.kind}`;
    img.alt = str(media.caption) || media.kind;
    loadMedia(img, path, token);
    nodes.push(img);
  } else if (path && media.kind === "audio" && media.voice === true) {
    const audio = document.createElement("audio");
    audio.className = "media voice";
    audio.controls = true;
    loadMedia(audio, path, token);
    nodes.push(audio);
  } else if (path) {
    nodes.push(mediaLink(path, media, token));
  }
  const l = m.location;
  if (isObject(l) && Number.isFinite(l.latitude) && Number.isFinite(l.longitude)) {
    const a = textNode("a", "map");
    a.href = `https://www.openstreetmap.org/?mlat=${l.latitude}&mlon=${l.longitude}#map=17/${l.latitude}/${l.longitude}`;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    nodes.push(a);
  }
  nodes.push(...optionNodes(m.interactive));
  if (!nodes.length) return [];
  const box = document.createElement("div");
  box.className = "content";
  box.append(...nodes);
  return [box];
}
