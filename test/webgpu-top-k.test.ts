// The webgpu decode step's reduction (WGSL programs) against the same reduction computed in plain JS.
import t from 'tap';
import { initBackend, releaseBackend } from '../src/engine/backend.js';
import { reduceFused } from '../src/engine/webgpu/reduce.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { checkReduction } from './helpers/top-k-reference.js';

t.test('fused top-k on webgpu equals the reduction in JS', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  await initBackend('webgpu');
  t.teardown(() => releaseBackend());
  await checkReduction(t, (logits, rows) => reduceFused(logits, rows), 1e-3);
});
