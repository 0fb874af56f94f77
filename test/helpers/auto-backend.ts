// Child process for test/webgpu-backend.test.ts: picks the backend the way the service does and prints what it chose.
import { initBackend } from '../../src/engine/backend.js';

const t0 = performance.now();
const chosen = await initBackend('auto');
process.stdout.write(JSON.stringify({ ...chosen, ms: performance.now() - t0 }) + '\n');
