/**
 * The real service as a child process (`gemma-serve serve` from dist/), for
 * scripts that drive it over HTTP from outside (`npm run fuzz`,
 * `npm run bench:responsiveness`): a free loopback port, the 'ready' log
 * line's URL, a tail of its output, how it exited, and a bounded stop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';

export interface ServiceChild {
  proc: ChildProcess;
  url: string;
  port: number;
  /** The last lines of stdout and stderr. */
  logTail: () => string[];
  /** Log records at error level (50) or above, as logged (each cut to 1,500 characters). */
  errorLines: string[];
  /** The inspector's WebSocket URL, when the child was started with --inspect. */
  inspectorUrl?: string;
  /** Set once the process exited; `expected` when it was after stop(). */
  exit?: { code: number | null; signal: NodeJS.Signals | null; expected: boolean };
  exited: Promise<void>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
  stop: (graceMs?: number) => Promise<{ graceful: boolean }>;
}

const TAIL_LINES = 60;

/** Starts the service with `env` on top of this process's environment; rejects if it exits or is not ready in time. */
export async function startServiceChild(env: Record<string, string | undefined>, startTimeoutMs = 300_000, nodeArgs: string[] = []): Promise<ServiceChild> {
  const cli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const proc = spawn(process.execPath, [...nodeArgs, cli, 'serve'], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail: string[] = [];
  const keep = (line: string) => {
    tail.push(line.length > 1500 ? `${line.slice(0, 1500)}…` : line);
    if (tail.length > TAIL_LINES) tail.splice(0, tail.length - TAIL_LINES);
  };
  let resolveExit!: () => void;
  let stopping = false;
  const child: Partial<ServiceChild> & { proc: ChildProcess; errorLines: string[] } = {
    proc,
    errorLines: [],
    exited: new Promise<void>((r) => (resolveExit = r)),
    logTail: () => [...tail],
  };
  proc.once('exit', (code, signal) => {
    child.exit = { code, signal, expected: stopping };
    resolveExit();
  });
  let errPartial = '';
  proc.stderr!.on('data', (b: Buffer) => {
    errPartial += b.toString();
    const lines = errPartial.split('\n');
    errPartial = lines.pop() ?? '';
    for (const l of lines.filter((x) => x !== '')) {
      keep(l);
      const ws = /Debugger listening on (ws:\/\/\S+)/.exec(l);
      if (ws) child.inspectorUrl = ws[1];
    }
  });
  const url = await new Promise<string>((resolve, reject) => {
    let partial = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`the service was not ready after ${startTimeoutMs / 1000} s:\n${tail.join('\n')}`));
    }, startTimeoutMs);
    proc.stdout!.on('data', (b: Buffer) => {
      partial += b.toString();
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (line === '') continue;
        keep(line);
        let rec: { level?: number; msg?: string; url?: string };
        try {
          rec = JSON.parse(line) as typeof rec;
        } catch {
          continue;
        }
        if ((rec.level ?? 0) >= 50 && child.errorLines.length < 50) child.errorLines.push(line.slice(0, 1500));
        if (rec.msg === 'ready' && typeof rec.url === 'string') {
          clearTimeout(timer);
          resolve(rec.url);
        }
      }
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the service exited (code ${code}, signal ${signal}) before it was ready:\n${tail.join('\n')}`));
    });
  });
  child.url = url;
  child.port = Number(new URL(url).port);
  child.stop = async (graceMs = 20_000) => {
    if (child.exit) return { graceful: false };
    stopping = true;
    proc.kill('SIGTERM');
    const inTime = await Promise.race([child.exited!.then(() => true), sleep(graceMs).then(() => false)]);
    if (!inTime) {
      proc.kill('SIGKILL');
      await Promise.race([child.exited!, sleep(5000)]);
    }
    return { graceful: inTime };
  };
  return child as ServiceChild;
}

/** The child's resident set in bytes (Linux /proc), or null where unreadable. */
export function rssBytes(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Whether Redis answers PING on host:port within a second. */
export function redisAnswers(host = '127.0.0.1', port = 6379): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (b) => done(b.toString().startsWith('+PONG')));
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The p-th percentile (nearest rank) of `xs`, or null when empty. */
export function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** Milliseconds to one decimal. */
export const ms1 = (x: number | null | undefined): number | null => (x === null || x === undefined ? null : Math.round(x * 10) / 10);

/**
 * A full garbage collection in a child started with `--inspect=127.0.0.1:0`
 * (the inspector's HeapProfiler.collectGarbage), so that memory read after it
 * is what is live, not what the next collection would free. Resolves false
 * when there is no inspector or it does not answer within 10 s.
 */
export async function collectGarbage(child: ServiceChild): Promise<boolean> {
  if (child.inspectorUrl === undefined) return false;
  const { WebSocket } = await import('undici');
  return new Promise<boolean>((resolve) => {
    const ws = new WebSocket(child.inspectorUrl!);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      try {
        ws.close();
      } catch {
        // already closed
      }
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 10_000);
    ws.addEventListener('open', () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' })));
    ws.addEventListener('message', (ev) => {
      if (JSON.parse(String(ev.data)).id === 1) done(true);
    });
    ws.addEventListener('error', () => done(false));
  });
}
