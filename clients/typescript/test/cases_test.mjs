// The TypeScript SDK against the protocol cases the terminal client and the
// Python SDK run too (clients/cases/protocol-cases.json): every case goes
// through the SDK's own decisions (dist/protocol.js, which client.ts uses).
// Prints one JSON line {"cases": N, "failures": [...]}; exits 1 on a failure.
// Run by tests/sdk_typescript.rs after `npx tsc`.

import { readFileSync } from "node:fs";
import { afterClose, afterRegistration, answeredRequest, track } from "../dist/protocol.js";

const all = JSON.parse(readFileSync(new URL("../../cases/protocol-cases.json", import.meta.url), "utf8"));

const runs = {
  close: (c) => afterClose(c.code, c.can_renew_token),
  resume: (c) => afterRegistration(c.since, c.confirmed),
  track: (c) => track(c.known, c.frame),
  answers: (c) => answeredRequest(c.frame),
};

/** JSON with sorted keys, so that equal values compare equal. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

let count = 0;
const failures = [];
for (const [kind, run] of Object.entries(runs)) {
  const cases = all[kind] ?? [];
  if (cases.length === 0) failures.push(`no ${kind} cases`);
  for (const c of cases) {
    count += 1;
    const got = run(c);
    if (canonical(got) !== canonical(c.expect)) {
      failures.push(`${kind}: ${c.name}: expected ${canonical(c.expect)}, got ${canonical(got)}`);
    }
  }
}
console.log(JSON.stringify({ cases: count, failures }));
process.exit(failures.length === 0 ? 0 : 1);
