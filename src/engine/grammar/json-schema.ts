/**
 * What a `json_schema` response format may hold: a valid JSON Schema (checked
 * with Ajv) using only the keywords the grammar engine enforces. A keyword it
 * would silently skip (`uniqueItems`, `not`, ...) is refused, so every output
 * that ends with `stop` validates against the schema as sent.
 */
import { Ajv } from 'ajv';
import { InvalidValueError } from '../../errors.js';

/** A response format or tool schema the grammar engine cannot take; `param` names the field at fault. */
export class GrammarSchemaError extends InvalidValueError {
  constructor(param: string, why: string) {
    super(`Invalid '${param}': ${why}.`, param, 'invalid_json_schema');
  }
}

/** Keywords the grammar engine enforces. */
const ENFORCED = new Set([
  'type', 'properties', 'required', 'additionalProperties', 'items', 'prefixItems', 'enum', 'const', 'anyOf', 'oneOf', 'allOf',
  '$ref', '$defs', 'definitions', 'minLength', 'maxLength', 'pattern', 'format', 'minimum', 'maximum', 'exclusiveMinimum',
  'exclusiveMaximum', 'minItems', 'maxItems', 'minProperties', 'patternProperties', 'propertyNames',
]);
/** Annotations: no effect on what validates. */
const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly', 'strict']);
/** `format` values the grammar engine has a rule for. */
const FORMATS = new Set(['date', 'time', 'date-time', 'email', 'uuid', 'ipv4', 'ipv6', 'hostname', 'uri']);
/** Keywords whose value is a map of names to schemas. */
const SCHEMA_MAPS = new Set(['properties', '$defs', 'definitions', 'patternProperties']);
/** Keywords whose value is a schema, or a list of them. */
const SCHEMA_VALUES = new Set(['items', 'additionalProperties', 'propertyNames', 'prefixItems', 'anyOf', 'oneOf', 'allOf']);

const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: false });

/** Throws GrammarSchemaError unless `schema` is a valid JSON Schema of enforced keywords only, its string bounds within `limits`. */
export function checkJsonSchema(schema: unknown, param: string, limits: { maxStringLength: number }): void {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) throw new GrammarSchemaError(param, 'a JSON Schema must be an object');
  walk(schema as Record<string, unknown>, param, limits.maxStringLength);
  try {
    ajv.compile(schema as object);
  } catch (err) {
    throw new GrammarSchemaError(param, `not a valid JSON Schema: ${(err as Error).message.slice(0, 200)}`);
  }
}

function walk(node: Record<string, unknown>, path: string, maxString: number): void {
  for (const [key, value] of Object.entries(node)) {
    const at = `${path}.${key}`;
    if (ANNOTATIONS.has(key)) continue;
    // A string bound compiles into one grammar rule per unit: ~60 ms each for Gemma's vocabulary, on the main thread.
    if ((key === 'minLength' || key === 'maxLength') && typeof value === 'number' && value > maxString) {
      throw new GrammarSchemaError(at, `${value} is larger than this server allows for a string length bound (${maxString}, set by GRAMMAR_MAX_STRING_LENGTH); drop the bound or lower it`);
    }
    // A counted repetition in a pattern ({n}, {m,n}) costs the same per unit.
    if (key === 'pattern' && typeof value === 'string') {
      const counts = [...value.matchAll(/\{(\d+)(?:,(\d*))?\}/g)].flatMap((m) => [Number(m[1]), Number(m[2] || 0)]);
      const largest = Math.max(0, ...counts);
      if (largest > maxString) throw new GrammarSchemaError(at, `a repetition count of ${largest} is larger than this server allows (${maxString}, set by GRAMMAR_MAX_STRING_LENGTH)`);
    }
    if (!ENFORCED.has(key)) throw new GrammarSchemaError(at, `the keyword '${key}' is not supported in structured outputs (supported: ${[...ENFORCED].join(', ')})`);
    if (key === 'format' && !FORMATS.has(String(value))) throw new GrammarSchemaError(at, `the format ${JSON.stringify(value)} is not supported (supported: ${[...FORMATS].join(', ')})`);
    if (SCHEMA_MAPS.has(key) && isObject(value)) {
      for (const [name, sub] of Object.entries(value)) if (isObject(sub)) walk(sub, `${at}.${name}`, maxString);
    } else if (SCHEMA_VALUES.has(key)) {
      if (Array.isArray(value)) value.forEach((sub, i) => isObject(sub) && walk(sub, `${at}[${i}]`, maxString));
      else if (isObject(value)) walk(value, at, maxString);
    }
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
