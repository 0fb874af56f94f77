/**
 * The only body type the API takes is JSON (Fastify's text/plain parser is
 * removed, so other types get 415). Before parsing, the text is scanned for
 * its nesting depth: a body nested 20,000 deep parses, but every recursive
 * step after it (validation, error messages) would overflow the stack.
 */
import fp from 'fastify-plugin';
import { JsonTooDeepError } from './errors.js';

/** True when `text` nests arrays/objects more than `limit` deep (brackets inside strings do not count). */
export function jsonDeeperThan(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return false;
}

export const jsonBodyPlugin = fp<{ maxDepth: number }>(async (app, opts) => {
  const parse = app.getDefaultJsonParser('error', 'error');
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (jsonDeeperThan(body as string, opts.maxDepth)) {
      done(new JsonTooDeepError(opts.maxDepth), undefined);
      return;
    }
    parse(req, body as string, done);
  });
}, { name: 'gemma-json-body' });
