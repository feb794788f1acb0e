// Runs the script of web/index.html in Node against a real hub, with a
// minimal stand-in for the DOM: every line the page appends to #log is
// printed as "LOG <text>", and each stdin line is typed into the input box
// and submitted. Used by tests/web_client.rs where no browser is installed.
// Needs Node's WebSocket (node >= 22, or node 20/21 with
// --experimental-websocket).
"use strict";
const fs = require("fs");
const readline = require("readline");
const vm = require("vm");

const [page, port] = process.argv.slice(2);
const html = fs.readFileSync(page, "utf8");
const script = html.slice(html.indexOf("<script>") + "<script>".length, html.lastIndexOf("</script>"));

// An element: children kept (the log drops its oldest lines), the rest
// accepted and ignored. Text set with textContent is what "LOG" prints.
function node(fields) {
  return {
    textContent: "", className: "", dataset: {}, children: [], parent: null, ...fields,
    get childElementCount() { return this.children.length; },
    get firstElementChild() { return this.children[0]; },
    appendChild(child) { this.append(child); },
    append(...children) {
      for (const c of children) { c.parent = this; this.children.push(c); }
    },
    replaceChildren(...children) { this.children = []; this.append(...children); },
    remove() { if (this.parent) this.parent.children = this.parent.children.filter((c) => c !== this); },
    replaceWith() { this.remove(); },
    addEventListener() {},
    setAttribute() {},
    querySelectorAll() { return []; },
  };
}
const elements = new Map();
const initial = { session: "default", name: "web" };
function element(id) {
  if (!elements.has(id)) {
    const e = node({
      id, value: initial[id] || "", disabled: false, scrollTop: 0, scrollHeight: 0,
      click() { if (this.onclick) this.onclick(); },
    });
    if (id === "log") {
      e.appendChild = function (child) { this.append(child); console.log(`LOG ${child.textContent}`); };
    }
    elements.set(id, e);
  }
  return elements.get(id);
}
globalThis.document = {
  getElementById: element,
  createElement: (tagName) => node({ tagName }),
};
globalThis.location = { protocol: "http:", host: `127.0.0.1:${port}`, origin: `http://127.0.0.1:${port}` };
// Media are never removed here: nothing to revoke.
globalThis.MutationObserver = class { observe() {} };
// The page keeps its token in sessionStorage (a hub without auth needs none).
const stored = new Map();
globalThis.sessionStorage = {
  getItem: (k) => (stored.has(k) ? stored.get(k) : null),
  setItem: (k, v) => stored.set(k, String(v)),
};
globalThis.window = { prompt: () => null };
vm.runInThisContext(script, { filename: "web/index.html" });

readline.createInterface({ input: process.stdin }).on("line", (text) => {
  element("input").value = text;
  element("form").onsubmit({ preventDefault() {} });
});
