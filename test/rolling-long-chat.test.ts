// A 200-turn conversation more than 20 x C long, the client resending the whole history unnamed (matched by prefix each turn).
import t from 'tap';
import { makeStack } from './helpers/stack.js';
import { converse, loadEngine } from './helpers/long-chat.js';

const engine = await loadEngine();
t.teardown(() => engine.dispose());

t.test('200 turns, client resends the whole history (matched by prefix)', async (t) => {
  const s = makeStack(engine);
  t.teardown(() => s.scheduler.shutdown(1000));
  await converse(t, s, undefined);
});
