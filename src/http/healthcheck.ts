/**
 * The container HEALTHCHECK: exits 0 when GET /ready answers 200 (readiness,
 * as compose's `service_healthy` means it: the model is loaded and the service
 * is not draining). `healthcheck.js /health` probes liveness instead. Reads the
 * same HOST/PORT the service listens on; a wildcard host is probed on loopback.
 */
import { request } from 'undici';

const host = process.env.HOST === undefined || ['', '0.0.0.0', '::'].includes(process.env.HOST) ? '127.0.0.1' : process.env.HOST;
const port = process.env.PORT === undefined || process.env.PORT === '' ? '8080' : process.env.PORT;
const hostPart = host.includes(':') ? `[${host}]` : host;
const path = process.argv[2] === '/health' ? '/health' : '/ready';

try {
  const res = await request(`http://${hostPart}:${port}${path}`, { headersTimeout: 2500, bodyTimeout: 2500 });
  const body = await res.body.text();
  if (res.statusCode !== 200) {
    process.stderr.write(`${path}: ${res.statusCode} ${body}\n`);
    process.exit(1);
  }
  process.exit(0);
} catch (err) {
  process.stderr.write(`${path}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
