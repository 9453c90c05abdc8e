// Marks a generated file as generated (and how to regenerate it), so no one edits it by hand.
import { readFileSync, writeFileSync } from "node:fs";

const file = process.argv[2];
const header =
  "// Generated from openapi.json (the server's /openapi.json) by `npm run generate`: do not edit.\n" +
  "// The server's test `tests/openapi.rs` fails when openapi.json is not the document it serves.\n";
const text = readFileSync(file, "utf8");
writeFileSync(file, text.startsWith(header) ? text : header + text);
