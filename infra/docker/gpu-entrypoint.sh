#!/usr/bin/env bash
# Entrypoint of the GPU worker image: optional vLLM sidecar for the policy, then the Prefect worker of the GPU pool.
#
#   RSTAR_VLLM_MODEL                  model to serve at start (path, hub id, hf:PATH or artifact URI); unset: none
#   RSTAR_VLLM_PORT                   sidecar port on 127.0.0.1 (default 8000)
#   RSTAR_VLLM_TENSOR_PARALLEL_SIZE   GPUs per replica (default 1)
#   RSTAR_GPU_POOL                    work pool to poll (default rstar-gpu)
#   RSTAR_WORKER_LIMIT                flow runs at once on this node (default 1: one shard owns the GPUs)
#
# On SIGINT/SIGTERM the worker is stopped with SIGINT (it ignores SIGTERM), then the sidecar.
set -euo pipefail

if [[ -n "${RSTAR_VLLM_MODEL:-}" ]]; then
    python -m infra.gpu.vllm_sidecar ensure --model "${RSTAR_VLLM_MODEL}"
fi

prefect worker start --pool "${RSTAR_GPU_POOL:-rstar-gpu}" --type process --install-policy never \
    --limit "${RSTAR_WORKER_LIMIT:-1}" &
worker=$!

stop() {
    kill -INT "${worker}" 2>/dev/null || true
    wait "${worker}" || true
    python -m infra.gpu.vllm_sidecar stop || true
}
trap stop INT TERM
wait "${worker}"
status=$?
python -m infra.gpu.vllm_sidecar stop || true
exit "${status}"
