/**
 * Splits a reply into reasoning and content by token id, the way vLLM's and
 * llama.cpp's servers return `reasoning_content`: what the model writes
 * between its thinking markers (Gemma 4: `<|channel>` ... `<channel|>`,
 * control tokens that user text can never produce) is reasoning, the rest is
 * content. Markers are recognised by id only, never by matching text. The
 * channel's label (`thought\n`, right after `<|channel>`) is not reasoning and
 * is dropped, as vLLM's gemma4 parser does. A block the model never closes
 * (the reply hit max_tokens) stays reasoning to the end.
 *
 * The splitter sees each generated token with the text the sampler released
 * for it; text is attributed to the side the reply is on at that token.
 */

/** Ids of a thinking block's markers. */
export interface ThinkingMarkers {
  start: number;
  end: number;
}

/** A piece of released text and which side of the reply it belongs to. */
export interface ReasoningPart {
  reasoning: boolean;
  text: string;
}

/** Gemma 4's channel label: `<|channel>thought\n...`. */
export const THOUGHT_LABEL = 'thought\n';

export class ReasoningSplitter {
  /** Whether the reply is inside a thinking block now. */
  private inBlock: boolean;
  /** The block's label, while the text so far could still be it. */
  private label: string | undefined;
  private held = '';
  private readonly labelText: string;
  /** Tokens of thinking blocks so far, markers included. */
  reasoningTokens = 0;

  /**
   * `open`: the prompt ends inside a thinking block (see `endsInsideBlock`),
   * so the reply starts as reasoning.
   */
  constructor(
    private readonly markers: ThinkingMarkers,
    opts: { open?: boolean; label?: string } = {},
  ) {
    this.inBlock = opts.open ?? false;
    this.labelText = opts.label ?? THOUGHT_LABEL;
  }

  /** Whether the reply is inside a thinking block now. */
  get reasoning(): boolean {
    return this.inBlock;
  }

  /** One generated token and the text released with it: the parts to send, in order (empty ones left out). */
  push(token: number, text: string): ReasoningPart[] {
    const out: ReasoningPart[] = [];
    if (token === this.markers.start) {
      // Text released with a marker was written before it.
      this.emit(out, text);
      this.closeLabel(out);
      this.inBlock = true;
      this.label = this.labelText;
      this.held = '';
      this.reasoningTokens++;
      return out;
    }
    if (token === this.markers.end) {
      this.emit(out, text);
      this.closeLabel(out);
      if (this.inBlock) this.reasoningTokens++;
      this.inBlock = false;
      return out;
    }
    if (this.inBlock) this.reasoningTokens++;
    this.emit(out, text);
    return out;
  }

  /** At the end of the reply: text still held back while the label was undecided. */
  flush(): ReasoningPart[] {
    const out: ReasoningPart[] = [];
    this.closeLabel(out);
    return out;
  }

  private emit(out: ReasoningPart[], text: string): void {
    if (!this.inBlock) {
      if (text !== '') out.push({ reasoning: false, text });
      return;
    }
    if (this.label !== undefined) {
      this.held += text;
      if (this.held.startsWith(this.label)) {
        text = this.held.slice(this.label.length);
      } else if (this.label.startsWith(this.held)) {
        return; // could still be the label
      } else {
        text = this.held;
      }
      this.label = undefined;
      this.held = '';
    }
    if (text !== '') out.push({ reasoning: true, text });
  }

  /** The block ends (or the reply does) while the label is undecided: what was held is reasoning. */
  private closeLabel(out: ReasoningPart[]): void {
    if (this.label === undefined) return;
    const held = this.held;
    this.label = undefined;
    this.held = '';
    if (held !== '') out.push({ reasoning: true, text: held });
  }
}

/**
 * Whether a prompt leaves the model inside a thinking block: its last start
 * marker comes after its last end marker and after the last turn start.
 */
export function endsInsideBlock(promptIds: ArrayLike<number>, markers: ThinkingMarkers, startOfTurn: number): boolean {
  for (let i = promptIds.length - 1; i >= 0; i--) {
    const id = promptIds[i];
    if (id === markers.start) return true;
    if (id === markers.end || id === startOfTurn) return false;
  }
  return false;
}
