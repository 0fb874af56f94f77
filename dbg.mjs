import { Engine } from './dist/src/engine/engine.js';
import { MemorySessionStore, SlotManager, computeReuse } from './dist/src/cache/index.js';
import { BatchScheduler } from './dist/src/scheduler/scheduler.js';
import { SessionTurns } from './dist/src/scheduler/session-turns.js';
import { DEFAULT_SAMPLING } from './dist/src/engine/types.js';
const engine = await Engine.load({ modelDir: 'test/fixtures/hf-reference/gemma3-tiny', backend: 'wasm', slots: 4, cacheCapacity: 256 });
const slots = new SlotManager({ slots: 4, store: new MemorySessionStore(), model: engine.modelId });
const turns = new SessionTurns(engine, slots, { mode: 'shift' });
const sch = new BatchScheduler(engine, turns, { maxBatch: 4, maxQueue: 4, prefillChunk: 64 });
async function chat(messages) {
const st = sch.submit({ requestId: 'a', messages, params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 8 }, n: 1, signal: new AbortController().signal });
let text = ''; for await (const e of st) { if (e.type==='token') text += e.text; if (e.type==='usage') console.log(e.usage); }
return { text, sid: st.sessionId };
}
const m1 = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hi there' }];
const r1 = await chat(m1);
console.log(JSON.stringify(r1));
const meta = slots.metaOf(r1.sid);
console.log('meta', meta && { sink: meta.sinkIds.length, kept: meta.keptIds.length, ids: [...meta.sinkIds, ...meta.keptIds].slice(-14) });
const m2 = [...m1, { role: 'assistant', content: r1.text }, { role: 'user', content: 'And again?' }];
const ids2 = engine.tokenizer.encodeChat(m2, { addGenerationPrompt: true });
console.log('ids2', ids2.slice(10, 30));
console.log('reuse', meta && computeReuse(meta, ids2));
console.log('match', await slots.matchPrefix(ids2));
await sch.shutdown(100);
