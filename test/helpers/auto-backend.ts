// Child process for test/webgpu-backend.test.ts: picks the backend the way the service does (the choice is
// argv[2], `auto` by default) and prints what it chose, or the error.
import { initBackend, releaseBackend, type BackendChoice } from '../../src/engine/backend.js';

const t0 = performance.now();
try {
  const chosen = await initBackend((process.argv[2] ?? 'auto') as BackendChoice);
  process.stdout.write(JSON.stringify({ ...chosen, ms: performance.now() - t0 }) + '\n');
} catch (err) {
  process.stdout.write(JSON.stringify({ error: (err as Error).message, name: (err as Error).name }) + '\n');
}
releaseBackend();
