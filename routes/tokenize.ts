/**
 * POST /tokenize and POST /detokenize (vLLM's routes, at the root as vLLM
 * serves them): what the model sees of a prompt or a conversation, counted
 * the way /v1/chat/completions counts `usage.prompt_tokens`.
 */
import type { FastifyPluginAsync } from 'fastify';
import { InvalidValueError, quote } from '../src/errors.js';
import { ModelNotFoundError } from '../src/http/errors.js';
import { readyTokens } from '../src/http/service.js';
import type { ChatCompletionRequest } from '../src/protocol/chat-types.js';
import { checkChatRequest } from '../src/protocol/check.js';
import { toChatTurns } from '../src/protocol/convert.js';
import { MissingParameterError, ParameterConflictError } from '../src/protocol/errors.js';
import type { DetokenizeRequest, TokenizeRequest } from '../src/protocol/tokenize-schemas.js';
import { errorResponses } from './schema-helpers.js';

export const tokenizeRoute: FastifyPluginAsync = async (app) => {
  const { config, service } = app.gemma;
  const checkModel = (model: string | undefined) => {
    if (model !== undefined && model !== config.model.id) throw new ModelNotFoundError(model, config.model.id);
  };

  app.post<{ Body: TokenizeRequest }>('/tokenize', {
    schema: {
      summary: 'Tokenize a prompt, or a conversation as the chat template renders it (vLLM).',
      body: { $ref: 'TokenizeRequest#' },
      response: { 200: { description: 'The token ids.', $ref: 'TokenizeResponse#' }, ...errorResponses(400, 401, 404, 413, 415, 429, 503) },
    },
  }, async (req) => {
    const b = req.body;
    if (b.prompt === undefined && b.messages === undefined) throw new MissingParameterError('prompt');
    if (b.prompt !== undefined && b.messages !== undefined) throw new ParameterConflictError('messages', "Send either 'prompt' or 'messages', not both.");
    for (const name of ['add_generation_prompt', 'chat_template_kwargs'] as const) {
      if (b.prompt !== undefined && b[name] !== undefined) throw new ParameterConflictError(name, `'${name}' applies to 'messages' only.`);
    }
    checkModel(b.model);
    const tokens = readyTokens(service);
    let ids: number[];
    if (b.prompt !== undefined) {
      ids = await tokens.encodeText(b.prompt);
      if (b.add_special_tokens ?? true) ids = [tokens.bosId, ...ids];
    } else {
      // The same checks and rendering as a chat request with these messages.
      const chat = { model: config.model.id, messages: b.messages, ...(b.chat_template_kwargs ? { chat_template_kwargs: b.chat_template_kwargs } : {}) } as unknown as ChatCompletionRequest;
      checkChatRequest(chat, {
        maxTokensLimit: config.sampling.maxTokensLimit,
        maxN: config.scheduler.maxBatchSize,
        topKCap: config.sampling.topKCap,
        vocabSize: tokens.vocabSize,
        messageChars: config.limits.messageChars,
        chatTemplateKwargsBytes: config.limits.chatTemplateKwargsBytes,
      });
      ids = await tokens.encodeChat(toChatTurns(chat.messages), { addGenerationPrompt: b.add_generation_prompt ?? true, templateKwargs: b.chat_template_kwargs });
      if (b.add_special_tokens === true) ids = [tokens.bosId, ...ids];
    }
    return {
      count: ids.length,
      max_model_len: tokens.maxModelLen,
      tokens: ids,
      ...(b.return_token_strs ? { token_strs: ids.map((id) => tokens.tokenText(id)) } : {}),
    };
  });

  app.post<{ Body: DetokenizeRequest }>('/detokenize', {
    schema: {
      summary: 'Turn token ids back into text (vLLM).',
      body: { $ref: 'DetokenizeRequest#' },
      response: { 200: { description: 'The text.', $ref: 'DetokenizeResponse#' }, ...errorResponses(400, 401, 404, 413, 415, 429, 503) },
    },
  }, async (req) => {
    checkModel(req.body.model);
    const tokens = readyTokens(service);
    const bad = req.body.tokens.findIndex((id) => id >= tokens.vocabSize);
    if (bad >= 0) {
      throw new InvalidValueError(`Invalid 'tokens[${bad}]': ${quote(req.body.tokens[bad])} is not a token id of this model (0 to ${tokens.vocabSize - 1}).`, 'tokens');
    }
    return { prompt: await tokens.decode(req.body.tokens) };
  });
};
