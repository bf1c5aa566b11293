// Validates documents against a JSON Schema (draft 2020-12) with Ajv, a widely used
// validator independent of the Rust code that generated the schema.
//
// stdin: {"schema": {...}, "documents": [{"name": "...", "document": {...}}, ...]}
// stdout: [{"name": "...", "valid": true|false, "errors": [{"path": "a.b.c", "message": "..."}]}]
// Each error's path is in the host's form (`grants[0].src`), with the missing or unexpected
// property appended, so the tests compare it with what `portcullis validate` names.
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const input = JSON.parse(await new Promise((resolve, reject) => {
  let text = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => { text += chunk; });
  process.stdin.on("end", () => resolve(text));
  process.stdin.on("error", reject);
}));

const ajv = new Ajv2020({ allErrors: true, strict: true, discriminator: true });
addFormats(ajv);
// The integer formats schemars writes for Rust's integer types (uint16, int64, ...),
// checked as the ranges they name (64-bit bounds as far as a JavaScript number holds).
for (const bits of [8, 16, 32, 64]) {
  const max = 2 ** bits;
  ajv.addFormat(`uint${bits}`, { type: "number", validate: (n) => Number.isInteger(n) && n >= 0 && n < max });
  ajv.addFormat(`int${bits}`, { type: "number", validate: (n) => Number.isInteger(n) && n >= -(max / 2) && n < max / 2 });
}
ajv.addFormat("uint", { type: "number", validate: (n) => Number.isInteger(n) && n >= 0 });
ajv.addFormat("int", { type: "number", validate: (n) => Number.isInteger(n) });
const validate = ajv.compile(input.schema);

// The host's path form: `a.b`, `list[0]`, and `["key.with/odd chars"]`.
const plain = /^[A-Za-z0-9_-]+$/;
const join = (at, key, parentIsArray) => {
  if (parentIsArray) return `${at}[${key}]`;
  if (plain.test(key)) return at ? `${at}.${key}` : key;
  return `${at}[${JSON.stringify(key)}]`;
};
const hostPath = (document, pointer, extra) => {
  let node = document;
  let at = "";
  for (const raw of pointer.split("/").slice(1)) {
    const key = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    at = join(at, key, Array.isArray(node));
    node = node?.[key];
  }
  return extra === undefined ? at : join(at, String(extra), false);
};

const results = input.documents.map(({ name, document }) => {
  const valid = validate(document);
  const errors = (validate.errors ?? []).map((e) => {
    const extra = e.params?.missingProperty ?? e.params?.additionalProperty ?? e.params?.propertyName;
    return { path: hostPath(document, e.instancePath, extra), message: e.message };
  });
  return { name, valid, errors };
});
process.stdout.write(JSON.stringify(results));
