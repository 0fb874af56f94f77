/** The OpenAI chat protocol: types, schemas, checks and conversion to internal requests. */
export * from './chat-types.js';
export { chatSchemas, ChatCompletionSchema, ChatCompletionChunkSchema, SESSION_NAME_PATTERN, type ProtocolLimits } from './chat-schemas.js';
export { COMMON_SCHEMAS, ErrorResponseSchema } from './common-schemas.js';
export { checkChatRequest, checkTemplateKwargs, type ChatLimits } from './check.js';
export { toSamplingParams, toChatTurns, messageText, type SamplingDefaults } from './convert.js';
export * from './errors.js';
