/** Schemas of the non-chat endpoints and of the error body every endpoint shares. */

export const ErrorResponseSchema = {
  $id: 'ErrorResponse',
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: {
        message: { type: 'string' },
        type: { type: 'string' },
        param: { type: ['string', 'null'] },
        code: { type: ['string', 'null'] },
      },
    },
  },
} as const;

export const ModelSchema = {
  $id: 'Model',
  type: 'object',
  required: ['id', 'object', 'created', 'owned_by'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['model'] },
    created: { type: 'integer' },
    owned_by: { type: 'string' },
  },
} as const;

export const ModelListSchema = {
  $id: 'ModelList',
  type: 'object',
  required: ['object', 'data'],
  properties: {
    object: { type: 'string', enum: ['list'] },
    data: { type: 'array', items: { $ref: 'Model#' } },
  },
} as const;

export const SessionSchema = {
  $id: 'Session',
  description: 'What the slot manager keeps for one conversation.',
  type: 'object',
  required: ['id', 'object', 'resident', 'slot', 'cached_tokens', 'kept_turns', 'evicted_tokens', 'created', 'last_used'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['session'] },
    resident: { type: 'boolean', description: 'True while the session holds a KV slot; otherwise only its metadata is stored.' },
    slot: { type: ['integer', 'null'] },
    cached_tokens: { type: 'integer', description: 'Tokens in the cache now (sink plus kept window).' },
    kept_turns: { type: 'integer' },
    evicted_tokens: { type: 'integer' },
    created: { type: 'integer', description: 'Unix seconds.' },
    last_used: { type: 'integer', description: 'Unix seconds.' },
  },
} as const;

export const SessionDeletedSchema = {
  $id: 'SessionDeleted',
  type: 'object',
  required: ['id', 'object', 'deleted'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['session.deleted'] },
    deleted: { type: 'boolean' },
  },
} as const;

export const HealthSchema = {
  $id: 'Health',
  type: 'object',
  required: ['status', 'model'],
  properties: {
    status: { type: 'string', enum: ['ok', 'loading', 'draining', 'failed'] },
    model: { type: 'string' },
  },
} as const;

export const COMMON_SCHEMAS = [ErrorResponseSchema, ModelSchema, ModelListSchema, SessionSchema, SessionDeletedSchema, HealthSchema] as const;
