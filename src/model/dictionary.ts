/**
 * Words of a dictionary found in text as @huggingface/tokenizers'
 * DictionarySplitter finds them: leftmost, then longest, not overlapping.
 * The tokenizer uses it to find added tokens (control or text) in a string.
 */
export class Dictionary {
  private readonly root: TrieNode = { next: new Map(), end: undefined };
  /** Marks the UTF-16 units a word starts with, to skip the rest fast. */
  private readonly first = new Uint8Array(65536);

  constructor(words: Iterable<string>) {
    for (const w of words) {
      if (w.length === 0) continue;
      let node = this.root;
      for (let i = 0; i < w.length; i++) {
        const c = w.charCodeAt(i);
        let n = node.next.get(c);
        if (!n) node.next.set(c, (n = { next: new Map(), end: undefined }));
        node = n;
      }
      node.end = w;
      this.first[w.charCodeAt(0)] = 1;
    }
  }

  /** Whether some word starts with this UTF-16 unit. */
  mayStart(code: number): boolean {
    return this.first[code] === 1;
  }

  /** The longest word starting at `i`. */
  longestAt(text: string, i: number): string | undefined {
    let node: TrieNode | undefined = this.root;
    let match: string | undefined;
    for (let j = i; j < text.length; j++) {
      node = node.next.get(text.charCodeAt(j));
      if (!node) break;
      if (node.end !== undefined) match = node.end;
    }
    return match;
  }

  /** Calls `found(pos, word)` for each word, left to right. */
  scan(text: string, found: (pos: number, word: string) => void): void {
    const n = text.length;
    const first = this.first;
    for (let i = 0; i < n; ) {
      if (first[text.charCodeAt(i)] === 0) {
        i++;
        continue;
      }
      const w = this.longestAt(text, i);
      if (w === undefined) {
        i++;
        continue;
      }
      found(i, w);
      i += w.length;
    }
  }

  /** The text cut into words and the runs between them (no empty strings). */
  split(text: string): string[] {
    const out: string[] = [];
    let start = 0;
    this.scan(text, (pos, w) => {
      if (pos > start) out.push(text.slice(start, pos));
      out.push(w);
      start = pos + w.length;
    });
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

/** A trie node: UTF-16 unit -> child; `end` is the word that ends here, if any. */
interface TrieNode {
  next: Map<number, TrieNode>;
  end: string | undefined;
}
