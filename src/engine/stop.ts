/**
 * Stop strings over streamed text. Text is fed in deltas as it is decoded; the
 * matcher releases at once everything that cannot be the start of a stop
 * string, holds back only the suffix that still could be, and on a match
 * releases the text before the stop string and withholds the rest forever.
 *
 * One Knuth-Morris-Pratt automaton per stop string tracks the longest prefix
 * of it that ends the text seen so far, so each character costs O(number of
 * stop strings) and a stop string may span any number of deltas. The first
 * stop string to complete wins (ties: the one that started earliest).
 */

export interface StopFeed {
  /** Text that may be emitted now. */
  text: string;
  /** True once a stop string has been seen; everything after `text` is withheld. */
  stopped: boolean;
  /** The stop string that matched, when `stopped`. */
  stop?: string;
}

class PrefixAutomaton {
  /** failure[i]: length of the longest proper border of needle[0..i]. */
  private readonly failure: Int32Array;
  /** Length of the longest prefix of `needle` that is a suffix of the text fed so far. */
  state = 0;

  constructor(readonly needle: string) {
    const f = new Int32Array(needle.length);
    for (let i = 1, k = 0; i < needle.length; i++) {
      while (k > 0 && needle[i] !== needle[k]) k = f[k - 1]!;
      if (needle[i] === needle[k]) k++;
      f[i] = k;
    }
    this.failure = f;
  }

  /** Feed one UTF-16 code unit; true when the whole needle now ends the text. */
  feed(ch: string): boolean {
    let k = this.state;
    if (k === this.needle.length) k = this.failure[k - 1]!;
    while (k > 0 && ch !== this.needle[k]) k = this.failure[k - 1]!;
    if (ch === this.needle[k]) k++;
    this.state = k;
    return k === this.needle.length;
  }
}

export class StopMatcher {
  private readonly automata: PrefixAutomaton[];
  /** Fed but not yet released: always a suffix that could begin a stop string. */
  private held = '';
  private hit: string | undefined;

  /** Empty strings are ignored (validation rejects them before this point). */
  constructor(stops: readonly string[]) {
    this.automata = [...new Set(stops)].filter((s) => s.length > 0).map((s) => new PrefixAutomaton(s));
  }

  /** True once a stop string has matched. */
  get stopped(): boolean {
    return this.hit !== undefined;
  }

  /** Feed the next text delta. After a stop, further input is discarded. */
  push(delta: string): StopFeed {
    if (this.hit !== undefined) return { text: '', stopped: true, stop: this.hit };
    if (this.automata.length === 0) return { text: delta, stopped: false };
    const buf = this.held + delta;
    for (let j = this.held.length; j < buf.length; j++) {
      const ch = buf[j]!;
      let match: string | undefined;
      for (const a of this.automata) {
        if (a.feed(ch) && (match === undefined || a.needle.length > match.length)) match = a.needle;
      }
      if (match !== undefined) {
        this.hit = match;
        this.held = '';
        return { text: buf.slice(0, j + 1 - match.length), stopped: true, stop: match };
      }
    }
    let hold = 0;
    for (const a of this.automata) hold = Math.max(hold, a.state);
    this.held = buf.slice(buf.length - hold);
    return { text: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** End of generation without a stop: release what was held back. */
  flush(): string {
    const rest = this.hit === undefined ? this.held : '';
    this.held = '';
    return rest;
  }
}
