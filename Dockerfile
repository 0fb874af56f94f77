# gemma-serve image. Two stages: `build` compiles TypeScript and keeps only
# production dependencies; the runtime stage runs as a non-root user.
#
#   docker build -t gemma-serve .                        # wasm/cpu backends (default)
#   docker build -t gemma-serve:gpu \
#     --build-arg WITH_WEBGPU=true .                     # + webgpu backend: Dawn on the NVIDIA Vulkan driver
#   docker build -t gemma-serve:cuda \
#     --build-arg RUNTIME_BASE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04 \
#     --build-arg WITH_GPU=true .                        # + @tensorflow/tfjs-node-gpu (CUDA 11.2, cuDNN 8.1)
#
# tfjs-node-gpu downloads libtensorflow in its install script, so that
# variant needs network access at build time; the default variant does not
# install it at all.
#
# The WITH_WEBGPU image runs on the GPU through the NVIDIA container toolkit,
# which mounts the driver's Vulkan ICD only with the `graphics` capability:
#
#   docker run --gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics -e BACKEND=webgpu gemma-serve:gpu
#
# (the image sets that capability list already; compose: `--profile gpu`).
# The image adds the Vulkan loader and the two system libraries that NVIDIA's
# Vulkan ICD (libGLX_nvidia.so.0) links against, libX11 and libXext; the
# toolkit mounts the driver's own libraries. Mesa is not needed. If
# the log says Dawn found no adapter, the toolkit did not mount the ICD file:
# bind-mount the host's, e.g. -v /usr/share/vulkan/icd.d/nvidia_icd.json:/etc/vulkan/icd.d/nvidia_icd.json:ro,
# or point VK_DRIVER_FILES at it.

ARG RUNTIME_BASE=node:20-bookworm-slim

FROM node:20-bookworm-slim AS build
ARG WITH_WEBGPU=false
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
# The native CPU kernels (native/): g++ here, libgomp1 at run time. Where
# either cannot be installed, the image runs tfjs's matmuls and the start-up
# log says why ("linear"); where g++ installs but the kernels fail to build,
# build-native.sh exits non-zero and so does the image build.
COPY native native
COPY scripts/build-native.sh scripts/build-native.sh
# Node-API's headers: node_modules/node-api-headers (a dependency, installed above).
RUN mkdir -p build \
 && { (apt-get update \
       && apt-get install -y --no-install-recommends g++ \
       && rm -rf /var/lib/apt/lists/*) \
      || echo "gemma-serve: g++ could not be installed; the image runs without the native kernels" >&2; } \
 && bash scripts/build-native.sh
# The WebGPU packages (optional dependencies) stay only in the WITH_WEBGPU
# image, with Dawn's build for this platform alone (the package ships five, ~130 MB).
RUN if [ "$WITH_WEBGPU" = "true" ]; then \
      find node_modules/webgpu/dist -mindepth 1 -maxdepth 1 ! -name "linux-$(node -p process.arch)" -exec rm -rf {} +; \
    else \
      rm -rf node_modules/webgpu node_modules/@webgpu node_modules/@tensorflow/tfjs-backend-webgpu; \
    fi

FROM ${RUNTIME_BASE} AS runtime
ARG WITH_GPU=false
ARG WITH_WEBGPU=false
# CUDA bases have no Node: bring the build stage's (same binary on node bases).
COPY --from=build /usr/local/bin/node /usr/local/bin/node
COPY --from=build /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
WORKDIR /app
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
COPY --from=build /app/build build
RUN if [ -f build/gemma_cpu.node ]; then \
      { (apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*) \
        || echo "gemma-serve: libgomp1 could not be installed; the image runs without the native kernels" >&2; }; \
    fi \
 && if [ "$WITH_GPU" = "true" ]; then \
      node /usr/local/lib/node_modules/npm/bin/npm-cli.js install --no-save --omit=dev --no-audit --no-fund @tensorflow/tfjs-node-gpu@4.22.0; \
    fi \
 && if [ "$WITH_WEBGPU" = "true" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libvulkan1 libx11-6 libxext6 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && (getent passwd node >/dev/null || useradd --uid 1000 --create-home --shell /bin/sh node) \
 && mkdir -p /models && chown node /models

# Read only by the NVIDIA container toolkit: compute for CUDA (tfjs-node-gpu),
# graphics for the Vulkan driver that the webgpu backend runs on.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
EXPOSE 8080
VOLUME ["/models"]
USER node
# Readiness (GET /ready): 503 while the model loads (a while on first start) and while draining.
# GET /health is liveness (200 while the process answers): point a Kubernetes livenessProbe there.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["node", "dist/src/http/healthcheck.js", "/ready"]
# SIGTERM: stop admitting, finish or cancel within SHUTDOWN_GRACE_MS, flush sessions, exit 0.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/cli.js", "serve"]
