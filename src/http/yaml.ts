/**
 * A small deterministic YAML writer for JSON-shaped data, so openapi.yaml can
 * be generated and compared byte for byte without a YAML dependency. Strings
 * that could read as anything else are written as JSON strings (valid YAML).
 */
type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const PLAIN = /^[A-Za-z_/$][A-Za-z0-9_ ./$#{}()-]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|y|n|~)$/i;

function scalar(v: null | boolean | number | string): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean' || typeof v === 'number') return String(v);
  return PLAIN.test(v) && !RESERVED.test(v) && !v.endsWith(' ') && !v.includes(' #') && !v.includes(': ') ? v : JSON.stringify(v);
}

const isScalar = (v: Json): v is null | boolean | number | string => v === null || typeof v !== 'object';
const isEmpty = (v: Json): boolean => (Array.isArray(v) ? v.length === 0 : v !== null && typeof v === 'object' && Object.keys(v).length === 0);
const inline = (v: Json): string => (isScalar(v) ? scalar(v) : Array.isArray(v) ? '[]' : '{}');

function lines(v: Json, indent: string): string[] {
  const out: string[] = [];
  if (Array.isArray(v)) {
    for (const item of v) {
      if (isScalar(item) || isEmpty(item)) out.push(`${indent}- ${inline(item)}`);
      else {
        const inner = lines(item, `${indent}  `);
        out.push(`${indent}- ${inner[0]!.slice(indent.length + 2)}`, ...inner.slice(1));
      }
    }
  } else if (v !== null && typeof v === 'object') {
    for (const [k, item] of Object.entries(v)) {
      if (isScalar(item) || isEmpty(item)) out.push(`${indent}${scalar(k)}: ${inline(item)}`);
      else out.push(`${indent}${scalar(k)}:`, ...lines(item, `${indent}  `));
    }
  }
  return out;
}

export function toYaml(doc: unknown): string {
  return `${lines(JSON.parse(JSON.stringify(doc)) as Json, '').join('\n')}\n`;
}
