/** GET and DELETE /v1/sessions/:id: inspect or drop one conversation's cache and stored metadata. */
import type { FastifyPluginAsync } from 'fastify';
import { SessionNotFoundError } from '../src/http/errors.js';
import { readyScheduler } from '../src/http/service.js';
import { SESSION_NAME_PATTERN } from '../src/protocol/chat-schemas.js';
import type { SessionInfo } from '../src/scheduler/types.js';
import { errorResponses } from './schema-helpers.js';

const params = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: SESSION_NAME_PATTERN, description: 'The session name (x-session-id, prompt_cache_key, or the one a response returned).' } },
} as const;

const toSeconds = (ms: number): number => Math.floor(ms / 1000);

function toJson(s: SessionInfo) {
  return {
    id: s.id,
    object: 'session' as const,
    resident: s.resident,
    slot: s.slot,
    cached_tokens: s.cachedTokens,
    kept_turns: s.keptTurns,
    evicted_tokens: s.evictedTokens,
    created: toSeconds(s.createdAt),
    last_used: toSeconds(s.lastUsedAt),
  };
}

export const sessionsRoute: FastifyPluginAsync = async (app) => {
  const { service } = app.gemma;

  app.get<{ Params: { id: string } }>('/sessions/:id', {
    schema: {
      summary: "A session's cache state.",
      params,
      response: { 200: { description: 'The session.', $ref: 'Session#' }, ...errorResponses(400, 401, 404, 503) },
    },
  }, async (req) => {
    // Looked up in the caller's namespace only: another key's session is a plain 404.
    const info = await readyScheduler(service).session(req.params.id, req.namespace);
    if (info === undefined) throw new SessionNotFoundError(req.params.id);
    return toJson(info);
  });

  app.delete<{ Params: { id: string } }>('/sessions/:id', {
    schema: {
      summary: "Drop a session's cache slot and stored metadata.",
      params,
      response: { 200: { description: 'Deleted.', $ref: 'SessionDeleted#' }, ...errorResponses(400, 401, 404, 503) },
    },
  }, async (req) => {
    const deleted = await readyScheduler(service).deleteSession(req.params.id, req.namespace);
    if (!deleted) throw new SessionNotFoundError(req.params.id);
    return { id: req.params.id, object: 'session.deleted', deleted: true };
  });
};
