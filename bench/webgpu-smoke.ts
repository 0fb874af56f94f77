/**
 * The service on the GPU: starts `gemma-serve serve` as a child process
 * (BACKEND from the environment, default webgpu; MODEL_DIR as given), waits
 * for /health, sends one streamed chat completion with undici, reads the
 * memory gauges from /metrics, stops the service with SIGTERM, and prints one
 * JSON object with the timings.
 *
 *   MODEL_DIR=/tmp/m270 node dist/bench/webgpu-smoke.js
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';

const PORT = Number(process.env.SMOKE_PORT ?? 18081);
const base = `http://127.0.0.1:${PORT}`;
const cli = fileURLToPath(new URL('../src/cli.js', import.meta.url));

async function waitHealthy(deadlineMs: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    try {
      const res = await request(`${base}/health`);
      await res.body.text();
      if (res.statusCode === 200) return performance.now() - t0;
    } catch {
      // Not listening yet.
    }
    if (performance.now() - t0 > deadlineMs) throw new Error(`/health not 200 after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function main(): Promise<void> {
  const env = { ...process.env, BACKEND: process.env.BACKEND ?? 'webgpu', HOST: '127.0.0.1', PORT: String(PORT), REDIS_URL: '', LOG_LEVEL: 'info' };
  const child = spawn(process.execPath, [cli, 'serve'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let log = '';
  child.stdout.on('data', (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const readyMs = await waitHealthy(240_000);
    const models = (await (await request(`${base}/v1/models`)).body.json()) as { data: { id: string }[] };
    const t0 = performance.now();
    const res = await request(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: models.data[0].id, stream: true, stream_options: { include_usage: true }, max_tokens: 32, temperature: 0,
        messages: [{ role: 'user', content: 'Say hello in five words.' }],
      }),
    });
    type Chunk = { choices: { delta: { content?: string }; finish_reason: string | null }[]; usage?: { prompt_tokens: number; completion_tokens: number } };
    const frames: string[] = [];
    const chunks: Chunk[] = [];
    let ttftMs: number | undefined;
    let pending = '';
    for await (const data of res.body) {
      pending += (data as Buffer).toString();
      let end: number;
      while ((end = pending.indexOf('\n\n')) >= 0) {
        const frame = pending.slice(0, end);
        pending = pending.slice(end + 2);
        frames.push(frame);
        if (frame === 'data: [DONE]') continue;
        const c = JSON.parse(frame.replace(/^data: /, '')) as Chunk;
        chunks.push(c);
        if (ttftMs === undefined && c.choices[0]?.delta.content) ttftMs = performance.now() - t0;
      }
    }
    const totalMs = performance.now() - t0;
    const usage = chunks.at(-1)?.usage;
    const metrics = await (await request(`${base}/metrics`)).body.text();
    const gauge = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);
    const loaded = log.split('\n').find((l) => l.includes('"model loaded"'));
    const out = {
      device: process.env.DEVICE_NAME ?? 'unknown',
      date: new Date().toISOString(),
      backend: env.BACKEND,
      status: res.statusCode,
      ended_with_done: frames.at(-1) === 'data: [DONE]',
      ready_ms: Math.round(readyMs),
      ttft_ms: ttftMs === undefined ? undefined : Math.round(ttftMs),
      total_ms: Math.round(totalMs),
      usage,
      decode_tokens_per_s: usage && ttftMs !== undefined ? Math.round(((usage.completion_tokens - 1) * 1000 * 100) / (totalMs - ttftMs)) / 100 : undefined,
      text: chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''),
      gauges: {
        gpu_memory_in_use_bytes: gauge('gemma_serve_gpu_memory_in_use_bytes'),
        gpu_memory_allocated_bytes: gauge('gemma_serve_gpu_memory_allocated_bytes'),
        memory_weights_bytes: gauge('gemma_serve_memory_weights_bytes'),
        memory_kv_cache_bytes: gauge('gemma_serve_memory_kv_cache_bytes'),
      },
      model_loaded_log: loaded ? JSON.parse(loaded) : undefined,
    };
    child.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running 30 s after SIGTERM'), 30_000))]);
    console.log(JSON.stringify({ ...out, exit_after_sigterm: code }));
  } catch (err) {
    child.kill('SIGKILL');
    console.error(log.slice(-4000));
    throw err;
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
