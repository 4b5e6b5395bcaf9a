"""GPU worker support: the vLLM sidecar launcher (`python -m infra.gpu.vllm_sidecar`), see docs/operations.md."""
