#!/usr/bin/env bash
# Compose smoke test (npm run test:compose): build the image, bring the stack
# up with host networking, stream one chat completion, read /metrics, check
# the session metadata reached the Redis container and the container's
# HEALTHCHECK passes, stop the service (SIGTERM must exit 0), bring
# everything down.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT=gemma-serve-smoke
FILES=(-f docker-compose.yml -f docker-compose.host.yml)
APP_URL=http://127.0.0.1:18080
REDIS_PORT=16379
STANDIN=../shared/docker/stand-in-images.sh

log() { printf 'compose-smoke: [%ss] %s\n' "$SECONDS" "$*" >&2; }

# Machines without a registry get stand-in base images (and a running dockerd) from ../shared.
if ! docker image inspect node:20-bookworm-slim redis:7 >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  if [ -f "$STANDIN" ]; then
    log "preparing stand-in base images ($STANDIN)"
    bash "$STANDIN"
  fi
fi

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    log "failed; last service logs:"
    compose logs --tail=80 >&2 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  # Superseded image layers pile up quickly on the vfs storage driver (a full copy each).
  docker image prune -f >/dev/null 2>&1 || true
  exit "$status"
}
trap cleanup EXIT

log "building image"
docker build --network host -t gemma-serve:latest .

log "starting the stack"
compose up -d

SESSION="smoke-$$-$(date +%s)"
log "streaming a chat completion (session $SESSION)"
node test/compose/smoke-client.mjs "$APP_URL" "$SESSION"

log "checking Redis for the session's metadata (no API keys: stored in the open namespace)"
keys=""
for _ in $(seq 1 20); do
  keys=$(compose exec -T redis redis-cli -p "$REDIS_PORT" --scan --pattern 'gemma-serve:session:*' | tr -d '\r')
  if printf '%s\n' "$keys" | grep -qx "gemma-serve:session:open/$SESSION"; then break; fi
  sleep 0.5
done
printf '%s\n' "$keys" | grep -qx "gemma-serve:session:open/$SESSION" || { log "no gemma-serve:session:open/$SESSION in Redis (found: ${keys:-nothing})"; exit 1; }

APP=$(compose ps -q gemma-serve)
log "waiting for the container's HEALTHCHECK to pass"
health=""
for _ in $(seq 1 60); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$APP")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || { log "health status is '$health'"; docker inspect --format '{{json .State.Health}}' "$APP" >&2; exit 1; }

log "checking that the image runs the native CPU kernels"
loaded=$(compose logs gemma-serve 2>/dev/null | grep '"model loaded"' | tail -1)
printf '%s\n' "$loaded" | grep -q '"linear":"native kernels' || { log "the container does not run the native kernels: ${loaded:-no 'model loaded' line}"; exit 1; }

log "stopping the service (SIGTERM)"
compose stop gemma-serve >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$APP")
[ "$code" = 0 ] || { log "the service exited $code after SIGTERM"; exit 1; }

log "ok"
