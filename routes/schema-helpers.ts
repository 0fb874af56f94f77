/** Response-schema pieces every route repeats. */

const DESCRIPTIONS: Record<number, string> = {
  400: 'Invalid request: the message names the field.',
  401: 'Missing or wrong API key (only when API_KEYS is set).',
  404: 'Unknown model, session or URL.',
  413: 'Request body larger than BODY_LIMIT_BYTES.',
  415: 'Body is not application/json.',
  429: 'Queue full or a rate limit reached (RATE_LIMIT_RPM, RATE_LIMIT_TPM); retry after the Retry-After header.',
  503: 'Model loading, load failed, shutting down, or (chat completions) overloaded past SHED_QUEUE_DEPTH; retry after the Retry-After header.',
};

/** `{status: {description, $ref ErrorResponse}}` for each status given. */
export function errorResponses(...statuses: number[]): Record<number, { description: string; $ref: string }> {
  const out: Record<number, { description: string; $ref: string }> = {};
  for (const s of statuses) out[s] = { description: DESCRIPTIONS[s] ?? 'Error.', $ref: 'ErrorResponse#' };
  return out;
}
