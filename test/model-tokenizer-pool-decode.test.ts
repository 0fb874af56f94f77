/**
 * The tokenizer pool decodes long id lists (/detokenize) on a worker thread,
 * to exactly the main thread's text, and short ones in place; a worker that
 * dies leaves its decode to the main thread.
 */
import t from 'tap';
import { GemmaTokenizer } from '../src/model/tokenizer.js';
import { TokenizerPool } from '../src/model/tokenizer-pool.js';

const tok = await GemmaTokenizer.fromDefault();
const text = Array.from({ length: 300 }, (_, i) => `line ${i}: naïve café 数据 🙂 <start_of_turn>model\n<eos>`).join('\n');
const ids = [tok.bosId, ...tok.encodeText(text), tok.endOfTurnId];

/** The pool's own tokenizer, made unable to decode: whatever decodes comes from a worker. */
function noLocalDecode(): GemmaTokenizer {
  return Object.create(tok, { decode: { value: () => { throw new Error('decoded on the main thread'); } } }) as GemmaTokenizer;
}

t.test('a worker decodes what the main thread decodes', async (t) => {
  const pool = new TokenizerPool(noLocalDecode(), { workers: 2, minChars: 16 });
  t.teardown(() => pool.close());
  for (const skipSpecialTokens of [false, true]) {
    t.equal(await pool.decode(ids, { skipSpecialTokens }), tok.decode(ids, { skipSpecialTokens }), `skipSpecialTokens: ${skipSpecialTokens}`);
  }
  t.equal(await pool.decode(ids), tok.decode(ids), 'special tokens skipped by default, as GemmaTokenizer.decode');
  // Byte-fallback pieces of one character, split across the list, are put back together.
  const emoji = tok.encodeText('🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂');
  t.equal(await pool.decode(emoji), '🙂'.repeat(16));
  const all = await Promise.all([ids, ids.slice(1), ids.slice(0, 100)].map((l) => pool.decode(l, { skipSpecialTokens: false })));
  t.same(all, [ids, ids.slice(1), ids.slice(0, 100)].map((l) => tok.decode(l, { skipSpecialTokens: false })), 'concurrent decodes each get their own text');
  t.same(await pool.encodeText(text), tok.encodeText(text), 'the worker still encodes');
});

t.test('short lists are decoded in place', async (t) => {
  const pool = new TokenizerPool(tok, { workers: 1, minChars: 1000 });
  t.teardown(() => pool.close());
  await pool.close();
  t.equal(await pool.decode([tok.bosId, 9259], { skipSpecialTokens: false }), tok.decode([tok.bosId, 9259], { skipSpecialTokens: false }), 'under minChars ids: no worker asked, even after close');
  const none = new TokenizerPool(noLocalDecode(), { workers: 0, minChars: 0 });
  await t.rejects(none.decode(ids), /main thread/, 'no workers: decoded in place');
});

t.test('a worker that dies while decoding leaves the list to the main thread', async (t) => {
  const pool = new TokenizerPool(tok, { workers: 1, minChars: 0 });
  t.teardown(() => pool.close());
  await pool.decode(ids.slice(0, 10));
  const big = Array.from({ length: 40 }, () => ids).flat();
  const held = pool.decode(big, { skipSpecialTokens: false });
  const worker = (pool as unknown as { workers: { worker: { terminate(): Promise<number> } }[] }).workers[0]!.worker;
  await worker.terminate();
  t.equal(await held, tok.decode(big, { skipSpecialTokens: false }), 'the held request gets the main thread\'s text');
  t.equal(await pool.decode(ids, { skipSpecialTokens: false }), tok.decode(ids, { skipSpecialTokens: false }), 'a new worker answers');
});
