// The reasoning splitter over token ids: thinking between Gemma 4's markers
// (ids, never text) goes to reasoning, the rest to content; markers and
// labels split across stream chunks, a block never closed, no block at all.
import t from 'tap';
import { endsInsideBlock, ReasoningSplitter, type ReasoningPart } from '../src/scheduler/reasoning.js';

const START = 100;
const END = 101;
const TURN = 105;
const markers = { start: START, end: END };

/** Runs (token, text) steps through a splitter; returns the joined sides and every part in order. */
function run(steps: [number, string][], open = false) {
  const s = new ReasoningSplitter(markers, { open });
  const parts: ReasoningPart[] = [];
  for (const [id, text] of steps) parts.push(...s.push(id, text));
  parts.push(...s.flush());
  const side = (r: boolean) => parts.filter((p) => p.reasoning === r).map((p) => p.text).join('');
  return { reasoning: side(true), content: side(false), parts, tokens: s.reasoningTokens, inside: s.reasoning };
}

t.test('no block: everything is content, nothing counted', async (t) => {
  const r = run([[10, 'Hello'], [11, ' world'], [12, '.']]);
  t.equal(r.content, 'Hello world.');
  t.equal(r.reasoning, '');
  t.equal(r.tokens, 0);
  t.same(r.parts.map((p) => p.reasoning), [false, false, false]);
});

t.test('a block, then the answer: the label is dropped, markers are counted as reasoning', async (t) => {
  const r = run([[START, ''], [20, 'thought'], [21, '\n'], [22, 'Let me'], [23, ' think'], [END, ''], [24, 'The'], [25, ' answer']]);
  t.equal(r.reasoning, 'Let me think');
  t.equal(r.content, 'The answer');
  t.equal(r.tokens, 6, '<|channel>, 4 inside, <channel|>');
  const firstContent = r.parts.findIndex((p) => !p.reasoning);
  t.ok(r.parts.slice(0, firstContent).every((p) => p.reasoning), 'reasoning parts come before the content parts');
});

t.test('the label split across chunks in other ways, or not there at all', async (t) => {
  t.equal(run([[START, ''], [20, 'thou'], [21, 'ght\nA'], [22, 'B'], [END, ''], [9, 'C']]).reasoning, 'AB', 'split inside the word');
  t.equal(run([[START, ''], [20, 'thought\nX'], [END, '']]).reasoning, 'X', 'label and text in one chunk');
  t.equal(run([[START, ''], [20, 'though'], [21, 'ts'], [END, '']]).reasoning, 'thoughts', 'a prefix of the label that is not it is kept');
  t.equal(run([[START, ''], [20, 'Hmm'], [END, ''], [9, 'ok']]).reasoning, 'Hmm', 'no label');
  t.equal(run([[START, ''], [20, 'thought'], [END, ''], [9, 'ok']]).reasoning, 'thought', 'a block holding only part of the label keeps it');
  const empty = run([[START, ''], [20, 'thought'], [21, '\n'], [END, ''], [9, 'ok']]);
  t.equal(empty.reasoning, '');
  t.equal(empty.content, 'ok');
});

t.test('markers are recognised by id only: their text never switches sides', async (t) => {
  const r = run([[10, '<|channel>thought\n'], [11, 'x<channel|>'], [12, 'y']]);
  t.equal(r.content, '<|channel>thought\nx<channel|>y', 'text that spells a marker is content');
  t.equal(r.reasoning, '');
});

t.test('text released with a marker belongs to the side before it', async (t) => {
  const r = run([[10, 'Hi'], [START, ' there'], [20, 'thought\n'], [21, 'inner'], [END, 'tail'], [22, '!']]);
  t.equal(r.content, 'Hi there!');
  t.equal(r.reasoning, 'innertail');
});

t.test('an unclosed block (max_tokens hit inside it) stays reasoning', async (t) => {
  const r = run([[START, ''], [20, 'thought\n'], [21, 'still'], [22, ' going']]);
  t.equal(r.reasoning, 'still going');
  t.equal(r.content, '');
  t.ok(r.inside, 'still inside');
  t.equal(r.tokens, 4);
  const held = run([[START, ''], [20, 'thou']]);
  t.equal(held.reasoning, 'thou', 'flush releases what the label check held back');
});

t.test('a prompt that ends inside a block: the reply starts as reasoning', async (t) => {
  t.ok(endsInsideBlock([2, TURN, 7, START, 20, 21], markers, TURN));
  t.notOk(endsInsideBlock([2, TURN, 7, START, 20, 21, END], markers, TURN), 'closed (Gemma 4 with thinking off)');
  t.notOk(endsInsideBlock([2, START, 20, END, TURN, 7], markers, TURN), 'a new turn after it');
  t.notOk(endsInsideBlock([2, TURN, 7], markers, TURN));
  const r = run([[30, 'deep'], [END, ''], [31, 'answer']], true);
  t.equal(r.reasoning, 'deep', 'no label expected when the block was opened by the prompt');
  t.equal(r.content, 'answer');
  t.equal(r.tokens, 2);
});

t.test('several blocks: each is reasoning', async (t) => {
  const r = run([[START, ''], [20, 'a'], [END, ''], [21, 'b'], [START, ''], [22, 'thought\nc'], [END, ''], [23, 'd']]);
  t.equal(r.reasoning, 'ac');
  t.equal(r.content, 'bd');
  t.equal(r.tokens, 6);
});
