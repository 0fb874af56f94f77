/**
 * Errors of the Gemma tokenizer, in their own module so that ./tokenizer.ts
 * and ./text-encoding.ts can both raise them with no import cycle at run
 * time. ./tokenizer.ts re-exports them.
 */
import { GemmaServeError } from '../errors.js';

/** Tokenizer files are missing or malformed. */
export class TokenizerFileError extends GemmaServeError {
  readonly file: string;
  constructor(message: string, file: string) {
    super(message, { status: 500, code: 'tokenizer_file_error' });
    this.file = file;
  }
}

/** The chat template rejected the conversation (e.g. roles that do not alternate). */
export class ChatTemplateError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 400, param: 'messages', code: 'chat_template_error' });
  }
}

/** A token id outside the vocabulary. */
export class TokenIdError extends GemmaServeError {
  constructor(id: number) {
    super(`token id ${id} is outside the vocabulary`, { status: 400, code: 'invalid_token_id' });
  }
}
