/**
 * Incremental 64-bit hash of token id sequences.
 *
 * Sessions are matched and verified by hashes of token prefixes (the evicted
 * middle of a conversation is only known by its hash), so the hash must be
 * extendable token by token from a saved state. Two independent 32-bit lanes
 * (FNV-1a over the 4 bytes of each id, and the MurmurHash3 block step) give 64
 * bits without BigInt. Not cryptographic: collisions are only a concern between
 * honest token sequences, and prefix lengths are always compared too.
 */

/** A hash state/digest: 16 lowercase hex digits. */
export type TokenHash = string;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const MURMUR_SEED = 0x9747b28c;

export class TokenHasher {
  private h1: number;
  private h2: number;

  /** Starts from the empty sequence, or continues from a digest. */
  constructor(from?: TokenHash) {
    if (from === undefined) {
      this.h1 = FNV_OFFSET;
      this.h2 = MURMUR_SEED;
    } else {
      if (!/^[0-9a-f]{16}$/.test(from)) throw new TypeError(`not a token hash: ${JSON.stringify(from)}`);
      this.h1 = parseInt(from.slice(0, 8), 16) | 0;
      this.h2 = parseInt(from.slice(8), 16) | 0;
    }
  }

  push(id: number): this {
    let h1 = this.h1;
    h1 = Math.imul(h1 ^ (id & 0xff), FNV_PRIME);
    h1 = Math.imul(h1 ^ ((id >>> 8) & 0xff), FNV_PRIME);
    h1 = Math.imul(h1 ^ ((id >>> 16) & 0xff), FNV_PRIME);
    h1 = Math.imul(h1 ^ (id >>> 24), FNV_PRIME);
    this.h1 = h1;

    let k = Math.imul(id, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    let h2 = this.h2 ^ k;
    h2 = (h2 << 13) | (h2 >>> 19);
    this.h2 = (Math.imul(h2, 5) + 0xe6546b64) | 0;
    return this;
  }

  pushAll(ids: ArrayLike<number>, from = 0, to = ids.length): this {
    for (let i = from; i < to; i++) this.push(ids[i]!);
    return this;
  }

  digest(): TokenHash {
    return (this.h1 >>> 0).toString(16).padStart(8, '0') + (this.h2 >>> 0).toString(16).padStart(8, '0');
  }
}

/** Hash of `ids[from:to]`, optionally continuing from a previous digest. */
export function hashTokens(ids: ArrayLike<number>, from = 0, to = ids.length, state?: TokenHash): TokenHash {
  return new TokenHasher(state).pushAll(ids, from, to).digest();
}

/** Key naming a token prefix by its length and hash, e.g. `812-0a1b...`. */
export function prefixKey(length: number, hash: TokenHash): string {
  return `${length}-${hash}`;
}
