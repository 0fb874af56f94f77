import t from 'tap';
import { describeToken, LOGPROB_FLOOR, tokenLogprob, type TokenPieces } from '../src/engine/sampling.js';
import type { TopK } from '../src/engine/types.js';

const enc = new TextEncoder();
// A tiny vocabulary: ids 0..2 text, 3..4 byte-fallback pieces of "é" (0xC3 0xA9), 5 special.
const vocab: Record<number, { text: string; bytes: Uint8Array }> = {
  0: { text: '▁Hello', bytes: enc.encode(' Hello') },
  1: { text: 'é', bytes: enc.encode('é') },
  2: { text: '😀', bytes: enc.encode('😀') },
  3: { text: '<0xC3>', bytes: Uint8Array.of(0xc3) },
  4: { text: '<0xA9>', bytes: Uint8Array.of(0xa9) },
  5: { text: '<end_of_turn>', bytes: new Uint8Array(0) },
};
const tok: TokenPieces = {
  tokenText: (id) => vocab[id]!.text,
  tokenBytes: (id) => vocab[id]!.bytes,
};

const top: TopK = {
  ids: Int32Array.from([0, 2, 3, 1, 5]),
  logits: Float32Array.from([3, 2, 1, 0, -Infinity]),
  logsumexp: 3.5,
  scaledLogsumexp: 3.5,
};

t.test('logprob is logit minus logsumexp, alternatives are the first candidates', async (t) => {
  const lp = tokenLogprob(top, 1, 3, tok);
  t.equal(lp.token, '😀');
  t.equal(lp.logprob, 2 - 3.5);
  t.same(lp.bytes, [0xf0, 0x9f, 0x98, 0x80]);
  t.same(lp.top.map((x) => x.token), [' Hello', '😀', 'bytes:\\xc3']);
  t.same(lp.top.map((x) => x.logprob), [3 - 3.5, 2 - 3.5, 1 - 3.5]);
  t.same(lp.top[2]!.bytes, [0xc3]);
  t.same(tokenLogprob(top, 0, 0, tok).top, [], 'no alternatives when top_logprobs is 0');
  t.equal(tokenLogprob(top, 0, 50, tok).top.length, 5, 'capped at the candidates available');
  t.throws(() => tokenLogprob(top, 5, 0, tok), RangeError);
});

t.test('tokens: partial UTF-8 as bytes:, impossible tokens floored, special tokens by name', async (t) => {
  t.same(describeToken(tok, 4, -1), { token: 'bytes:\\xa9', logprob: -1, bytes: [0xa9] });
  const eot = tokenLogprob(top, 4, 0, tok);
  t.equal(eot.token, '<end_of_turn>');
  t.equal(eot.logprob, LOGPROB_FLOOR, '-inf is reported as -9999');
  t.equal(describeToken(tok, 1, Number.NaN).logprob, LOGPROB_FLOOR);
  t.ok(JSON.stringify(eot).length > 0);
});
