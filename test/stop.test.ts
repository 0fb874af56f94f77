import t from 'tap';
import { StopMatcher } from '../src/engine/stop.js';
import { createRng } from '../src/engine/rng.js';

function feed(stops: string[], deltas: string[]): { out: string[]; stopped: boolean; stop?: string; flushed: string } {
  const m = new StopMatcher(stops);
  const out: string[] = [];
  let stopped = false;
  let stop: string | undefined;
  for (const d of deltas) {
    const r = m.push(d);
    out.push(r.text);
    if (r.stopped) {
      stopped = true;
      stop = r.stop;
    }
  }
  return { out, stopped, stop, flushed: m.flush() };
}

t.test('no stop strings: text passes straight through', async (t) => {
  const r = feed([], ['a', 'b<', 'c']);
  t.same(r.out, ['a', 'b<', 'c']);
  t.equal(r.flushed, '');
});

t.test('a stop inside one delta: text before it is emitted, the rest withheld', async (t) => {
  const r = feed(['STOP'], ['hello STOP world', 'more']);
  t.same(r.out, ['hello ', '']);
  t.ok(r.stopped);
  t.equal(r.stop, 'STOP');
  t.equal(r.flushed, '');
});

t.test('a stop split across deltas stops and is never emitted', async (t) => {
  const r = feed(['<|end|>'], ['Hi <', '|e', 'nd', '|> trailing']);
  t.same(r.out, ['Hi ', '', '', '']);
  t.ok(r.stopped);
  t.equal(r.out.join(''), 'Hi ');
  // One character at a time.
  const chars = [...'abc<|end|>xyz'];
  const r2 = feed(['<|end|>'], chars);
  t.equal(r2.out.join(''), 'abc');
  t.ok(r2.stopped);
});

t.test('held text is released as soon as it cannot be a stop', async (t) => {
  const r = feed(['<|end|>'], ['ab<', '|x', 'yz']);
  t.same(r.out, ['ab', '<|x', 'yz']);
  t.notOk(r.stopped);
  // Only the suffix that could still start a stop is held.
  const m = new StopMatcher(['\n\n']);
  t.same(m.push('line\n'), { text: 'line', stopped: false });
  t.same(m.push('next'), { text: '\nnext', stopped: false });
  t.same(m.push('\n'), { text: '', stopped: false });
  t.equal(m.flush(), '\n', 'flush releases the held remainder at the end');
  t.equal(m.flush(), '');
});

t.test('overlapping partial matches (KMP fallback)', async (t) => {
  const r = feed(['aab'], ['a', 'a', 'a', 'b', 'c']);
  t.equal(r.out.join(''), 'a');
  t.ok(r.stopped);
  const r2 = feed(['abab'], ['ab', 'ab', 'ab']);
  t.equal(r2.out.join(''), '');
  t.ok(r2.stopped);
  const r3 = feed(['abac'], ['aba', 'bac']);
  t.equal(r3.out.join(''), 'ab');
});

t.test('several stops: the first to complete wins; after a stop nothing more is emitted', async (t) => {
  const r = feed(['world', 'lo w'], ['hello', ' world']);
  t.equal(r.out.join(''), 'hel');
  t.equal(r.stop, 'lo w');
  const r2 = feed(['bc', 'abcd'], ['abcd']);
  t.equal(r2.stop, 'bc', 'the one ending first stops the stream');
  t.equal(r2.out.join(''), 'a');
  const r3 = feed(['cd', 'bcd'], ['abcde']);
  t.equal(r3.stop, 'bcd', 'same end: the longer (earlier starting) one');
  t.equal(r3.out.join(''), 'a');
  const m = new StopMatcher(['x']);
  m.push('axb');
  t.same(m.push('more'), { text: '', stopped: true, stop: 'x' });
  t.ok(m.stopped);
});

t.test('unicode stop strings across deltas', async (t) => {
  const r = feed(['😀!'], ['日本', '😀', '!', 'rest']);
  t.equal(r.out.join(''), '日本');
  t.ok(r.stopped);
});

t.test('randomized: matches a naive reference and holds back no more than needed', async (t) => {
  const rng = createRng(2024);
  const pick = (s: string) => s[Math.floor(rng.next() * s.length)]!;
  const word = (n: number) => Array.from({ length: n }, () => pick('ab')).join('');
  for (let trial = 0; trial < 500; trial++) {
    const stops = Array.from({ length: 1 + Math.floor(rng.next() * 3) }, () => word(2 + Math.floor(rng.next() * 4)));
    const text = word(Math.floor(rng.next() * 30));
    // Reference: the earliest position where some stop completes.
    let end = Infinity;
    let len = 0;
    for (const s of stops) {
      const i = text.indexOf(s);
      if (i >= 0 && (i + s.length < end || (i + s.length === end && s.length > len))) {
        end = i + s.length;
        len = s.length;
      }
    }
    const expected = end === Infinity ? text : text.slice(0, end - len);
    const m = new StopMatcher(stops);
    let emitted = '';
    let pos = 0;
    let stopped = false;
    while (pos < text.length && !stopped) {
      const n = 1 + Math.floor(rng.next() * 4);
      const r = m.push(text.slice(pos, pos + n));
      pos += n;
      emitted += r.text;
      stopped = r.stopped;
      if (!stopped) {
        // Promptness: exactly the longest suffix that is a proper prefix of a stop is held.
        const seen = text.slice(0, Math.min(pos, text.length));
        let hold = 0;
        for (const s of stops) for (let k = Math.min(s.length - 1, seen.length); k > hold; k--) if (seen.endsWith(s.slice(0, k))) hold = k;
        if (emitted !== seen.slice(0, seen.length - hold)) {
          t.fail(`held too much or too little: ${JSON.stringify({ stops, seen, emitted })}`);
          return;
        }
      }
    }
    if (!stopped) emitted += m.flush();
    if (emitted !== expected) {
      t.fail(`mismatch ${JSON.stringify({ stops, text, emitted, expected })}`);
      return;
    }
  }
  t.pass('500 random cases agree');
});
