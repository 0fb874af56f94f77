import t from 'tap';
import { IncrementalDetokenizer, type DecodeFn } from '../src/engine/detok.js';
import { GemmaTokenizer } from '../src/model/tokenizer.js';

const tok = await GemmaTokenizer.fromDefault();
// Byte-fallback ids, looked up through the vocabulary rather than assumed.
const B = (b: number): number => {
  const hex = b.toString(16).toUpperCase().padStart(2, '0');
  for (let id = 0; id < 1000; id++) if (tok.tokenText(id) === `<0x${hex}>`) return id;
  throw new Error(`no byte token for ${hex}`);
};

/** Decode with a probe recording the longest window handed to the tokenizer. */
function probe(): { decode: DecodeFn; maxWindow: () => number; calls: () => number } {
  let max = 0;
  let calls = 0;
  return {
    decode: (ids) => {
      max = Math.max(max, ids.length);
      calls++;
      return tok.decode(ids, { skipSpecialTokens: true });
    },
    maxWindow: () => max,
    calls: () => calls,
  };
}

function stream(ids: number[], decode: DecodeFn): { deltas: string[]; text: string } {
  const d = new IncrementalDetokenizer(decode);
  const deltas = ids.map((id) => d.push(id));
  const tail = d.flush();
  if (tail) deltas.push(tail);
  return { deltas, text: deltas.join('') };
}

const texts = [
  'Hello world, plain ASCII with  double spaces and\nnewlines.',
  'Emoji: 😀 👍🏽 🧑‍🤝‍🧑 🇯🇵 and 🦄 end',
  '日本語のテキストと中文文本，还有한국어 텍스트。',
  'Rare characters fall back to bytes: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 𐍈 ꙮ ￼',
  ' leading space and trailing space ',
  'mixed 😀日本𝔘a😀',
];

t.test('streamed token by token, text reassembles exactly with no U+FFFD', async (t) => {
  for (const text of texts) {
    const ids = tok.encode(text, { addSpecialTokens: false });
    const p = probe();
    const r = stream(ids, p.decode);
    t.equal(r.text, text, `reassembles ${JSON.stringify(text)}`);
    t.equal(r.text, tok.decode(ids), 'equals a one-shot decode');
    t.notOk(r.deltas.some((d) => d.includes('\uFFFD')), 'no delta holds a replacement character');
    t.ok(p.maxWindow() <= 8, `decode windows stay short (max ${p.maxWindow()})`);
  }
});

t.test('byte-fallback characters are held until complete', async (t) => {
  const ids = tok.encode('a𝔘b', { addSpecialTokens: false });
  t.ok(ids.includes(B(0xf0)), '𝔘 is byte-encoded');
  const d = new IncrementalDetokenizer((x) => tok.decode(x));
  const deltas = ids.map((id) => d.push(id));
  t.same(deltas.filter((x) => x !== ''), ['a', '𝔘', 'b']);
  // A character cut off at the end comes out as U+FFFD only at flush.
  const cut = new IncrementalDetokenizer((x) => tok.decode(x));
  t.equal(cut.push(B(0xf0)), '');
  t.equal(cut.push(B(0x9f)), '');
  t.equal(cut.flush(), '\uFFFD');
  t.equal(cut.flush(), '');
});

t.test('invalid byte runs do not stall the stream', async (t) => {
  // Stray continuation bytes, then a valid 4-byte character, then text.
  const ids = [B(0x80), B(0x80), B(0x80), B(0xf0), B(0x9f), B(0x98), B(0x80), ...tok.encode(' ok', { addSpecialTokens: false })];
  const r = stream(ids, (x) => tok.decode(x));
  t.equal(r.text, tok.decode(ids));
  t.equal(r.text, '\uFFFD\uFFFD\uFFFD😀 ok');
  // A lead byte followed by plain text releases the replacement at once.
  const d = new IncrementalDetokenizer((x) => tok.decode(x));
  t.equal(d.push(B(0xe2)), '');
  t.equal(d.push(tok.encode('x', { addSpecialTokens: false })[0]!), '\uFFFDx');
  // A long run of garbage is released as it goes, not held forever.
  const g = new IncrementalDetokenizer((x) => tok.decode(x));
  const out = Array.from({ length: 20 }, () => g.push(B(0xbf)));
  t.ok(out.join('').length >= 16, 'released while streaming');
  t.equal(out.join('') + g.flush(), tok.decode(Array(20).fill(B(0xbf))));
});

t.test('special tokens are skipped; context tokens are never emitted', async (t) => {
  const ids = [...tok.encode('Hi', { addSpecialTokens: false }), tok.endOfTurnId];
  const r = stream(ids, (x) => tok.decode(x, { skipSpecialTokens: true }));
  t.equal(r.text, 'Hi');
  const prompt = tok.encode('<start_of_turn>model\n', { addSpecialTokens: false });
  const out = tok.encode(' world 😀', { addSpecialTokens: false });
  const d = new IncrementalDetokenizer((x) => tok.decode(x), prompt.slice(-3));
  t.equal(out.map((id) => d.push(id)).join('') + d.flush(), ' world 😀');
});

t.test('long outputs: work per token stays constant', async (t) => {
  const text = 'The quick brown fox 🦊 jumps over the lazy dog 🐶. 日本語も。 '.repeat(60);
  const ids = tok.encode(text, { addSpecialTokens: false });
  const p = probe();
  const r = stream(ids, p.decode);
  t.equal(r.text, text);
  t.ok(p.maxWindow() <= 8, `max window ${p.maxWindow()}`);
  t.ok(p.calls() <= 2 * ids.length + 2, `${p.calls()} decode calls for ${ids.length} tokens`);
});
