/** Named 400s of the chat protocol; each message says what to change. */
import { InvalidValueError, quote } from '../errors.js';

/** The messages array is empty. */
export class EmptyMessagesError extends InvalidValueError {
  constructor() {
    super("Invalid 'messages': empty array. Expected an array with at least one message.", 'messages', 'empty_array');
  }
}

/** A message role outside system/developer/user/assistant/tool. */
export class UnknownRoleError extends InvalidValueError {
  constructor(param: string, role: unknown, allowed: readonly string[]) {
    super(`Invalid value for '${param}': ${quote(role)}. Supported values are: ${allowed.map((r) => `'${r}'`).join(', ')}.`, param);
  }
}

/** A content part that is not text (image, audio, file) or is malformed. */
export class UnsupportedContentError extends InvalidValueError {
  constructor(param: string, what: string) {
    super(`Invalid '${param}': ${what}. Send text parts ({"type": "text", "text": "..."}) or a string.`, param, 'unsupported_content');
  }
}

/** A request feature this text-only server does not implement (tools, audio, JSON mode...). */
export class UnsupportedFeatureError extends InvalidValueError {
  constructor(param: string, what: string) {
    super(`'${param}' is not supported: ${what}. Remove it from the request.`, param, 'unsupported_parameter');
  }
}

/** A value within the API's range but beyond what this server is configured for. */
export class LimitExceededError extends InvalidValueError {
  constructor(param: string, value: number, limit: number, setting: string) {
    super(`Invalid '${param}': ${value} is larger than this server allows (${limit}, set by ${setting}). Use at most ${limit}.`, param, 'limit_exceeded');
  }
}

/** Two parameters that contradict each other, or one that needs another. */
export class ParameterConflictError extends InvalidValueError {
  constructor(param: string, message: string) {
    super(message, param, 'invalid_parameter_combination');
  }
}

/** A required field is absent (for callers that bypass schema validation). */
export class MissingParameterError extends InvalidValueError {
  constructor(param: string) {
    super(`Missing required parameter: '${param}'.`, param, 'missing_required_parameter');
  }
}

/** chat_template_kwargs that cannot be passed to a template: not plain JSON, nested too deep, or too large. */
export class TemplateKwargsError extends InvalidValueError {
  constructor(why: string) {
    super(`Invalid 'chat_template_kwargs': ${why}. Send an object of plain JSON values (strings, numbers, booleans, null, arrays, objects).`,
      'chat_template_kwargs', 'invalid_chat_template_kwargs');
  }
}
