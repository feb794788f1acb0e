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

const elements = new Map();
const initial = { session: "default", name: "web" };
function element(id) {
  if (!elements.has(id)) {
    elements.set(id, {
      id, value: initial[id] || "", textContent: "", disabled: false, className: "",
      scrollTop: 0, scrollHeight: 0, children: [],
      appendChild(child) { this.children.push(child); if (id === "log") console.log(`LOG ${child.textContent}`); },
      replaceChildren(...children) { this.children = children; },
      click() { if (this.onclick) this.onclick(); },
    });
  }
  return elements.get(id);
}
globalThis.document = {
  getElementById: element,
  createElement: () => ({ textContent: "", className: "" }),
};
globalThis.location = { protocol: "http:", host: `127.0.0.1:${port}` };
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
