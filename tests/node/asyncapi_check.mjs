// Run by tests/asyncapi.rs: node asyncapi_check.mjs DOCUMENT.json FRAMES.json
//
// 1. Parses and validates DOCUMENT with the official AsyncAPI parser
//    (@asyncapi/parser: the AsyncAPI 3.0 JSON Schema plus its Spectral
//    rules); every diagnostic is printed to stderr, and an error-level one
//    (or no document) exits 1.
// 2. Validates each entry of FRAMES, `{"message": ID, "frame": {...}}`,
//    against the payload of `components.messages[ID]` of the parsed
//    document with Ajv (JSON Schema draft 07, the AsyncAPI schema format's
//    base), and prints `{"messages": N, "warnings": [...], "frames":
//    [{"message", "valid", "errors"}]}` on stdout.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';

const [docPath, framesPath] = process.argv.slice(2);
const text = readFileSync(docPath, 'utf8');
const frames = framesPath ? JSON.parse(readFileSync(framesPath, 'utf8')) : [];

const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await new Parser().parse(text);
for (const d of diagnostics) {
  console.error(`${severities[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
}
if (!document || diagnostics.some((d) => d.severity === 0)) {
  console.error('the AsyncAPI parser refused the document');
  process.exit(1);
}

const payloads = new Map();
for (const message of document.messages().all()) {
  payloads.set(message.id(), message.payload()?.json());
}

// schemars marks unsigned integers with formats such as `uint64`; they are
// bounded by `minimum` already.
const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
const results = frames.map(({ message, frame }) => {
  const schema = payloads.get(message);
  if (!schema) {
    return { message, valid: false, errors: [`no message ${message} in the document`] };
  }
  const validate = ajv.compile(schema);
  const valid = validate(frame);
  const errors = valid ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);
  return { message, valid, errors };
});

const warnings = diagnostics.filter((d) => d.severity === 1).map((d) => `${d.code}: ${d.message}`);
console.log(JSON.stringify({ messages: payloads.size, warnings, frames: results }));
