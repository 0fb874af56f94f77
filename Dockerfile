# gemma-serve image. Two stages: `build` compiles TypeScript and keeps only
# production dependencies; the runtime stage runs as a non-root user.
#
#   docker build -t gemma-serve .                        # wasm/cpu backends (default)
#   docker build -t gemma-serve:gpu \
#     --build-arg RUNTIME_BASE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04 \
#     --build-arg WITH_GPU=true .                        # + @tensorflow/tfjs-node-gpu (CUDA 11.2, cuDNN 8.1)
#
# tfjs-node-gpu downloads libtensorflow in its install script, so the GPU
# variant needs network access at build time; the default variant does not
# install it at all.

ARG RUNTIME_BASE=node:20-bookworm-slim

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: `prepare` needs the sources (copied next) and
# tfjs-node-gpu's download is only wanted in the GPU variant.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY config config
COPY routes routes
COPY src src
COPY bench bench
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm -rf node_modules/@tensorflow/tfjs-node-gpu

FROM ${RUNTIME_BASE} AS runtime
ARG WITH_GPU=false
# CUDA bases have no Node: bring the build stage's (same binary on node bases).
COPY --from=build /usr/local/bin/node /usr/local/bin/node
COPY --from=build /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
WORKDIR /app
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
RUN if [ "$WITH_GPU" = "true" ]; then \
      node /usr/local/lib/node_modules/npm/bin/npm-cli.js install --no-save --omit=dev --no-audit --no-fund @tensorflow/tfjs-node-gpu@4.22.0; \
    fi \
 && (getent passwd node >/dev/null || useradd --uid 1000 --create-home --shell /bin/sh node) \
 && mkdir -p /models && chown node /models

ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
VOLUME ["/models"]
USER node
# Model loading takes a while on first start; /health answers 503 until it is done.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["node", "dist/src/http/healthcheck.js"]
# SIGTERM: stop admitting, finish or cancel within SHUTDOWN_GRACE_MS, flush sessions, exit 0.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/cli.js", "serve"]
