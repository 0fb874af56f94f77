import t from 'tap';
import { createRng, Xoshiro128, type Rng } from '../src/engine/rng.js';
import { candidateWeights, isGreedy, pickToken, requiredK } from '../src/engine/sampling.js';
import { NoCandidatesError } from '../src/engine/sampling-errors.js';
import { DEFAULT_SAMPLING, type SamplingParams, type TopK } from '../src/engine/types.js';

/** A TopK row whose candidates have the given full-vocabulary probabilities (descending). */
function topFromProbs(probs: number[], temperature = 1): TopK {
  const logits = Float32Array.from(probs.map(Math.log));
  const ids = Int32Array.from(probs.map((_, i) => 100 + i));
  // The rest of the vocabulary holds 1 - sum(probs); model it as one more token.
  const rest = Math.max(0, 1 - probs.reduce((a, b) => a + b, 0));
  const all = rest > 0 ? [...logits, Math.log(rest)] : [...logits];
  const lse = (xs: number[]) => {
    const m = Math.max(...xs);
    return m + Math.log(xs.reduce((a, x) => a + Math.exp(x - m), 0));
  };
  return { ids, logits, logsumexp: lse(all), scaledLogsumexp: lse(all.map((x) => x / temperature)) };
}

function params(p: Partial<SamplingParams>): SamplingParams {
  return { ...DEFAULT_SAMPLING, ...p };
}

function counts(top: TopK, p: SamplingParams, n: number, seed: number): number[] {
  const rng = createRng(seed);
  const c = new Array<number>(top.ids.length).fill(0);
  for (let i = 0; i < n; i++) c[pickToken(top, p, rng)]!++;
  return c;
}

class CountingRng implements Rng {
  readonly seed = 0;
  draws = 0;
  next(): number {
    this.draws++;
    return 0.999;
  }
}

t.test('rng: same seed, same stream; streams are independent', async (t) => {
  const a = createRng(42);
  const b = createRng(42);
  const sa = Array.from({ length: 100 }, () => a.next());
  // Interleave another generator: b's stream must not change.
  const other = createRng(7);
  const sb = Array.from({ length: 100 }, () => (other.next(), b.next()));
  t.same(sa, sb);
  t.ok(sa.every((x) => x >= 0 && x < 1));
  t.not(createRng(43).next(), sa[0]);
  t.not(createRng(42 + 2 ** 32).next(), sa[0], 'high bits of the seed matter');
  t.equal(createRng(-5).next(), createRng(-5).next(), 'negative seeds work');
  t.equal(a.seed, 42);
  const r = createRng();
  t.ok(Number.isSafeInteger(r.seed), 'a random seed is reported');
  t.equal(createRng(r.seed).next(), r.next(), 'the reported seed replays the stream');
  t.throws(() => new Xoshiro128(Number.NaN), RangeError);
  const g = createRng(1);
  let sum = 0;
  for (let i = 0; i < 100000; i++) sum += g.next();
  t.ok(Math.abs(sum / 100000 - 0.5) < 0.01, 'roughly uniform');
});

t.test('fixed seeds reproduce the same picks', async (t) => {
  const top = topFromProbs([0.3, 0.25, 0.2, 0.15, 0.1]);
  const p = params({ temperature: 0.9, topP: 0.95, seed: 1234 });
  const run = () => {
    const rng = createRng(p.seed);
    return Array.from({ length: 200 }, () => pickToken(top, p, rng));
  };
  const first = run();
  t.same(run(), first);
  t.ok(new Set(first).size > 1, 'it does sample');
  const rng = createRng(99);
  t.not(Array.from({ length: 200 }, () => pickToken(top, p, rng)).join(), first.join());
});

t.test('greedy: temperature 0 and top_k 1 take index 0 and draw nothing', async (t) => {
  const top = topFromProbs([0.4, 0.35, 0.25]);
  for (const p of [params({ temperature: 0 }), params({ temperature: 1.5, topK: 1 })]) {
    t.ok(isGreedy(p));
    const rng = new CountingRng();
    for (let i = 0; i < 50; i++) t.equal(pickToken(top, p, rng), 0);
    t.equal(rng.draws, 0);
  }
  // top_k = 1 gives exactly what temperature 0 gives, for any seed.
  const a = counts(top, params({ temperature: 1, topK: 1 }), 500, 3);
  const b = counts(top, params({ temperature: 0 }), 500, 3);
  t.same(a, b);
  t.same(a, [500, 0, 0]);
  t.throws(() => pickToken({ ids: new Int32Array(0), logits: new Float32Array(0), logsumexp: 0, scaledLogsumexp: 0 }, params({}), new CountingRng()), NoCandidatesError);
});

t.test('a tiny top_p is greedy', async (t) => {
  const top = topFromProbs([0.4, 0.35, 0.25]);
  t.same(counts(top, params({ temperature: 1, topP: 1e-9 }), 1000, 5), [1000, 0, 0]);
  t.same(counts(top, params({ temperature: 2, topP: 0.01 }), 1000, 5), [1000, 0, 0]);
});

t.test('top_p keeps the smallest prefix whose exact probability mass reaches it', async (t) => {
  const top = topFromProbs([0.5, 0.3, 0.15, 0.05]);
  t.equal(candidateWeights(top, params({ topP: 0.5 })).length, 1);
  t.equal(candidateWeights(top, params({ topP: 0.8 })).length, 2);
  t.equal(candidateWeights(top, params({ topP: 0.81 })).length, 3);
  t.equal(candidateWeights(top, params({ topP: 0.99 })).length, 4);
  // The candidates are only part of the vocabulary: mass is measured against
  // the full distribution (scaledLogsumexp), not renormalized over the K.
  const partial = topFromProbs([0.4, 0.2, 0.1]);
  t.equal(candidateWeights(partial, params({ topP: 0.55 })).length, 2);
  t.equal(candidateWeights(partial, params({ topP: 0.65 })).length, 3);
  t.equal(candidateWeights(partial, params({ topP: 0.9 })).length, 3, 'never more than the K candidates');
  // With top_k on, top_p acts on the top-k renormalized distribution (HF/vLLM order).
  t.equal(candidateWeights(partial, params({ topK: 2, topP: 0.6 })).length, 1, '0.4/0.6 = 0.67 >= 0.6');
  t.equal(candidateWeights(partial, params({ topK: 2, topP: 0.7 })).length, 2);
  // Exact probabilities at the request's temperature: at T=0.5, p ~ p^2 over the vocabulary.
  const hot = topFromProbs([0.5, 0.3, 0.15, 0.05], 0.5);
  // p^2 normalized: 0.25, 0.09, 0.0225, 0.0025 over 0.365 -> 0.685, 0.247, 0.062, 0.007
  t.equal(candidateWeights(hot, params({ temperature: 0.5, topP: 0.68 })).length, 1);
  t.equal(candidateWeights(hot, params({ temperature: 0.5, topP: 0.9 })).length, 2);
  const c = counts(top, params({ topP: 0.8 }), 4000, 11);
  t.same(c.slice(2), [0, 0], 'nothing outside the nucleus is drawn');
});

t.test('min_p drops candidates below min_p times the top probability', async (t) => {
  const top = topFromProbs([0.5, 0.3, 0.1, 0.06, 0.04]);
  t.equal(candidateWeights(top, params({ minP: 0.2 })).length, 3, '0.1 >= 0.2 * 0.5 stays');
  t.equal(candidateWeights(top, params({ minP: 0.21 })).length, 2);
  t.equal(candidateWeights(top, params({ minP: 0.05 })).length, 5);
  t.equal(candidateWeights(top, params({ minP: 1 })).length, 1);
  const c = counts(top, params({ minP: 0.5 }), 5000, 17);
  t.same(c.slice(2), [0, 0, 0]);
  t.ok(Math.abs(c[0]! / 5000 - 0.625) < 0.03, 'renormalized over what is left (0.5/0.8)');
});

t.test('top_k restricts to the first k candidates', async (t) => {
  const top = topFromProbs([0.4, 0.3, 0.2, 0.1]);
  const c = counts(top, params({ topK: 2 }), 8000, 23);
  t.same(c.slice(2), [0, 0]);
  t.ok(Math.abs(c[0]! / 8000 - 0.4 / 0.7) < 0.025);
  t.equal(candidateWeights(top, params({ topK: 10 })).length, 4, 'k above K is all candidates');
  t.equal(candidateWeights(top, params({ topK: -1 })).length, 4, '-1 is off');
});

t.test('temperature reshapes the distribution as p^(1/T)', async (t) => {
  const probs = [0.6, 0.3, 0.1];
  const top = topFromProbs(probs);
  const n = 20000;
  for (const temp of [1, 0.5, 2]) {
    const w = probs.map((p) => p ** (1 / temp));
    const z = w.reduce((a, b) => a + b, 0);
    const expected = w.map((x) => x / z);
    const c = counts(top, params({ temperature: temp }), n, 1000 + temp * 10);
    c.forEach((k, i) => {
      // sd <= sqrt(0.25 / n) = 0.0035; allow ~4 sd
      t.ok(Math.abs(k / n - expected[i]!) < 0.015, `T=${temp} candidate ${i}: ${k / n} vs ${expected[i]}`);
    });
  }
  // Lower temperature concentrates mass on the best candidate.
  const cold = counts(top, params({ temperature: 0.5 }), n, 9)[0]!;
  const warm = counts(top, params({ temperature: 2 }), n, 9)[0]!;
  t.ok(cold > warm);
});

t.test('masked and NaN candidates are never drawn', async (t) => {
  const top: TopK = {
    ids: Int32Array.from([5, 6, 7, 8]),
    logits: Float32Array.from([0, -1, Number.NaN, -Infinity]),
    logsumexp: 0.4,
    scaledLogsumexp: 0.4,
  };
  const c = counts(top, params({}), 3000, 31);
  t.same(c.slice(2), [0, 0]);
  const allMasked: TopK = { ...top, logits: Float32Array.from([-Infinity, -Infinity, -Infinity, -Infinity]) };
  t.equal(pickToken(allMasked, params({}), createRng(1)), 0);
});

t.test('requiredK', async (t) => {
  const cap = 64;
  t.equal(requiredK(params({ temperature: 0 }), cap), 1);
  t.equal(requiredK(params({ temperature: 0, logprobs: true, topLogprobs: 5 }), cap), 5);
  t.equal(requiredK(params({ topK: 1, topLogprobs: 3, logprobs: true }), cap), 3);
  t.equal(requiredK(params({ topK: 10 }), cap), 10);
  t.equal(requiredK(params({ topK: 10, topLogprobs: 20, logprobs: true }), cap), 20);
  t.equal(requiredK(params({ topK: 0 }), cap), cap);
  t.equal(requiredK(params({ topK: -1, topP: 0.9 }), cap), cap);
  t.equal(requiredK(params({ topK: 100 }), cap), cap, 'never above the cap');
});
