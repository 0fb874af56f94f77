// A 200-turn conversation more than 20 x C long in a named session (x-session-id), the client resending the whole history.
import t from 'tap';
import { makeStack } from './helpers/stack.js';
import { converse, loadEngine } from './helpers/long-chat.js';

const engine = await loadEngine();
t.teardown(() => engine.dispose());

t.test('200 turns in a named session', async (t) => {
  const s = makeStack(engine);
  t.teardown(() => s.scheduler.shutdown(1000));
  await converse(t, s, `long-named-${process.pid}`);
});
