/**
 * Turns Fastify/ajv validation errors into one message that names the field
 * the way OpenAI does (`messages[0].role`), reading the offending value from
 * the request so the message can show it.
 */
import type { FastifySchemaValidationError } from 'fastify';

type SchemaErrorDataVar = 'body' | 'headers' | 'params' | 'querystring';
import { QUOTE_MAX_CHARS, quote } from '../errors.js';
import { SchemaValidationError } from './errors.js';

/** '/messages/0/role' -> 'messages[0].role'; digits index arrays only (logit_bias keys are digits too). */
export function pointerToParam(pointer: string, root: unknown): string {
  let out = '';
  let v: unknown = root;
  for (const seg of pointer.split('/').slice(1)) {
    const key = seg.replace(/~1/g, '/').replace(/~0/g, '~');
    out += Array.isArray(v) ? `[${key}]` : out === '' ? key : `.${key}`;
    v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[key] : undefined;
  }
  return out;
}

function valueAt(root: unknown, pointer: string): unknown {
  let v: unknown = root;
  for (const seg of pointer.split('/').slice(1)) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[seg.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return v;
}

function jsonType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a decimal';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

const TYPE_NAMES: Record<string, string> = {
  string: 'a string', number: 'a number', integer: 'an integer', boolean: 'a boolean',
  array: 'an array', object: 'an object', null: 'null',
};

function expectedTypes(t: unknown): string {
  const list = (Array.isArray(t) ? t : String(t).split(',')).map((x) => TYPE_NAMES[String(x)] ?? String(x));
  return list.length > 1 ? `${list.slice(0, -1).join(', ')} or ${list[list.length - 1]}` : list[0] ?? 'another type';
}

/** A field path, with the client's part cut short: keys of a request body are the client's text too. */
const join = (base: string, key: string): string => {
  const k = key.length <= QUOTE_MAX_CHARS ? key : `${key.slice(0, QUOTE_MAX_CHARS)}…`;
  return base === '' ? k : `${base}.${k}`;
};

/** The message and param for one ajv error, about `data` (the validated request part). */
export function describeValidationError(e: FastifySchemaValidationError, data: unknown, context: SchemaErrorDataVar): SchemaValidationError {
  const path = e.instancePath ?? '';
  const param = pointerToParam(path, data);
  const p = e.params as Record<string, unknown>;
  const value = valueAt(data, path);
  const shown = quote(value);
  const where = param === '' ? `request ${context}` : `'${param}'`;
  // propertyNames failures report the object's path and name the bad key separately.
  const badKey = (e as { propertyName?: string }).propertyName;
  if (badKey !== undefined || e.keyword === 'propertyNames') {
    const key = join(param, String(badKey ?? p.propertyName));
    return new SchemaValidationError(`Invalid key '${key}'${param === 'logit_bias' ? ': logit_bias keys are token ids (decimal integers)' : ''}.`, key);
  }
  switch (e.keyword) {
    case 'required': {
      const missing = join(param, String(p.missingProperty));
      return new SchemaValidationError(`Missing required parameter: '${missing}'.`, missing, 'missing_required_parameter');
    }
    case 'additionalProperties': {
      const extra = join(param, String(p.additionalProperty));
      return new SchemaValidationError(
        param === '' ? `Unrecognized request argument supplied: ${extra}` : `Unrecognized parameter '${extra}'.`,
        extra, 'unknown_parameter');
    }
    case 'type':
      return new SchemaValidationError(
        `Invalid type for ${where}: expected ${expectedTypes(p.type)}, but got ${jsonType(value)} instead.`,
        param || null, 'invalid_type');
    case 'enum': {
      const allowed = (p.allowedValues as unknown[]).map((x) => `'${String(x)}'`).join(', ');
      return new SchemaValidationError(`Invalid value for ${where}: ${shown}. Supported values are: ${allowed}.`, param || null);
    }
    case 'minimum': case 'maximum': case 'exclusiveMinimum': case 'exclusiveMaximum':
      return new SchemaValidationError(
        `Invalid ${where}: expected a value ${String(p.comparison)} ${String(p.limit)}, but got ${shown} instead.`, param || null);
    case 'minItems':
      if (Number(p.limit) === 1 && Array.isArray(value) && value.length === 0) {
        return new SchemaValidationError(`Invalid ${where}: empty array. Expected an array with minimum length 1, but got an empty array instead.`,
          param || null, 'empty_array');
      }
      return new SchemaValidationError(`Invalid ${where}: expected at least ${String(p.limit)} items.`, param || null);
    case 'maxItems':
      return new SchemaValidationError(`Invalid ${where}: expected at most ${String(p.limit)} items, but got ${(value as unknown[]).length}.`, param || null);
    case 'minLength':
      return new SchemaValidationError(`Invalid ${where}: expected a string of at least ${String(p.limit)} characters.`, param || null);
    case 'maxLength':
      return new SchemaValidationError(`Invalid ${where}: expected a string of at most ${String(p.limit)} characters.`, param || null);
    case 'maxProperties':
      return new SchemaValidationError(`Invalid ${where}: expected at most ${String(p.limit)} entries.`, param || null, 'limit_exceeded');
    case 'pattern':
      return new SchemaValidationError(`Invalid ${where}: ${shown} does not match ${String(p.pattern)}.`, param || null);
    default:
      return new SchemaValidationError(`Invalid ${where}: ${e.message ?? 'does not match the schema'}.`, param || null);
  }
}

/** The first meaningful error (ajv stops at the first failure; `if`/`anyOf` wrappers come after their cause). */
export function translateValidation(errors: FastifySchemaValidationError[], data: unknown, context: SchemaErrorDataVar): SchemaValidationError {
  const first = errors.find((e) => e.keyword !== 'anyOf' && e.keyword !== 'oneOf' && e.keyword !== 'if') ?? errors[0];
  if (first === undefined) return new SchemaValidationError(`Invalid request ${context}.`, null);
  return describeValidationError(first, data, context);
}
