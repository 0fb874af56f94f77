/**
 * Incremental detokenization: token ids in, text deltas out, never splitting a
 * character.
 *
 * Decoding tokens one at a time is wrong in two ways: byte-fallback tokens
 * (Gemma's `<0xF0><0x9F><0x98><0x80>`) decode to U+FFFD until the character is
 * complete, and SentencePiece decoders may treat a window's first token
 * specially (leading-space handling). So, as in HF text-generation-inference
 * and vLLM's `detokenize_incrementally`, each step decodes a short window that
 * starts at `prefixOffset` (the tokens of the previous release, for context)
 * and emits what it adds beyond the text of `[prefixOffset, readOffset)`.
 * The window stays a few tokens long, so each step is O(1).
 */

/** ids -> text, e.g. `(ids) => tokenizer.decode(ids, { skipSpecialTokens: true })`. */
export type DecodeFn = (ids: number[]) => string;

const REPLACEMENT = '\uFFFD';
/**
 * A UTF-8 character is at most 4 bytes, i.e. 4 byte-fallback tokens. Once more
 * tokens than that are pending and the text still ends in U+FFFD, the oldest
 * of them cannot belong to a character that may yet complete.
 */
const MAX_PENDING = 4;

export class IncrementalDetokenizer {
  /** Token ids from `prefixOffset` on; older ones are dropped. */
  private window: number[] = [];
  /** Index in `window` of the first token whose text has not been released. */
  private readOffset = 0;
  /** Decoded text of `window[0, readOffset)`. */
  private prefixText = '';

  /**
   * @param decode ids -> text.
   * @param context ids that precede the output (e.g. the last few prompt
   *   tokens); they give the first tokens' decoding its context and are never
   *   emitted.
   */
  constructor(
    private readonly decode: DecodeFn,
    context: readonly number[] = [],
  ) {
    this.window = [...context];
    this.readOffset = this.window.length;
    this.prefixText = this.window.length > 0 ? decode(this.window) : '';
  }

  /** Add one generated token; returns the text it completes (often '', never a partial character). */
  push(id: number): string {
    this.window.push(id);
    const text = this.decode(this.window);
    const pending = this.window.length - this.readOffset;
    if (text.endsWith(REPLACEMENT)) {
      if (pending < MAX_PENDING) return '';
      // Release all but the last MAX_PENDING - 1 tokens, which may still start a character.
      return this.release(this.window.length - (MAX_PENDING - 1));
    }
    return this.release(this.window.length, text);
  }

  /** End of output: release whatever is still held (an incomplete character shows as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.window.length) return '';
    return this.release(this.window.length);
  }

  /** Emit the text of `window[readOffset, end)` and move the window forward. */
  private release(end: number, decoded?: string): string {
    const text = decoded ?? this.decode(this.window.slice(0, end));
    const delta = text.slice(this.prefixText.length);
    // The released tokens become the next window's context.
    this.window = this.window.slice(this.readOffset);
    this.readOffset = end - this.readOffset;
    this.prefixText = this.decode(this.window.slice(0, this.readOffset));
    return delta;
  }
}
