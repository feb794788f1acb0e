// The SDK for browsers: one ES module (src/index.ts and what it imports),
// which the hub serves at /assets/mcp-hub-client.js to its own pages
// (src/server/assets.rs). The output is committed, so that the hub builds
// without Node; tests/web_client.rs rebuilds it into a temporary file and
// fails when the committed one differs.
//
//   node scripts/bundle.mjs [OUTFILE]   (default: src/server/assets/mcp-hub-client.js)
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const outfile = path.resolve(process.argv[2] ?? path.join(root, "../../src/server/assets/mcp-hub-client.js"));

await build({
  absWorkingDir: root,
  entryPoints: ["src/index.ts"],
  outfile,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
  banner: {
    js: "// @mcp-hub/client for browsers, built from clients/typescript/src by\n// clients/typescript/scripts/bundle.mjs (esbuild). Do not edit: rebuild.",
  },
});
