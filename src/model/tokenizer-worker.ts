/**
 * The worker thread of ./tokenizer-pool.ts: loads the tokenizer its
 * `workerData` names and answers requests one at a time: encode a
 * conversation or plain text, or decode ids. The protocol is the pool's
 * (`WorkerRequest` in, `WorkerReply` out); ids travel as transferred
 * Int32Arrays.
 *
 * On Linux the thread lowers its own scheduling priority (`workerData.nice`):
 * tokenizing is background work, and on a machine whose cores the native
 * kernels' threads already fill, a worker at the same priority preempts one
 * of them and every parallel region of a decode step waits for it.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { GemmaTokenizer } from './tokenizer.js';
import type { WorkerData, WorkerReply, WorkerRequest } from './tokenizer-pool.js';

const port = parentPort!;
const data = workerData as WorkerData;

function send(reply: WorkerReply, transfer: ArrayBuffer[] = []): void {
  port.postMessage(reply, transfer);
}

/** This thread's id (Linux: /proc/thread-self is `<pid>/task/<tid>`); setpriority on it affects this thread only. */
function lowerPriority(nice: number): void {
  if (process.platform !== 'linux' || nice <= 0) return;
  try {
    const tid = Number(/task\/(\d+)$/.exec(readlinkSync('/proc/thread-self'))?.[1]);
    if (Number.isInteger(tid) && tid > 0) setPriority(tid, nice);
  } catch {
    // Best effort: without it the worker runs at the process's priority.
  }
}

lowerPriority(data.nice);

try {
  const tok = await GemmaTokenizer.fromSource(data.source);
  port.on('message', (req: WorkerRequest) => {
    try {
      if ('decode' in req) {
        send({ id: req.id, text: tok.decode(Array.from(req.decode), { skipSpecialTokens: req.skipSpecialTokens }) });
        return;
      }
      const ids = Int32Array.from('text' in req ? tok.encodeText(req.text) : tok.encodeChat(req.messages, req.opts));
      send({ id: req.id, ids }, [ids.buffer]);
    } catch (err) {
      const e = err as Error;
      send({ id: req.id, error: { name: e?.name ?? 'Error', message: e?.message ?? String(err) } });
    }
  });
  send({ ready: true });
} catch (err) {
  send({ ready: false, error: { name: (err as Error)?.name ?? 'Error', message: (err as Error)?.message ?? String(err) } });
}
