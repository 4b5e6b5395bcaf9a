"""Where a round's synthesis shards run: in the flow's own process, on a Ray cluster, or on a (GPU) work pool.

    from flows.runners import FanOut, RayOptions
    FanOut()                                                  # local: the flow's thread pool (the default)
    FanOut(backend="ray", ray=RayOptions(address="ray://head:10001", num_gpus_per_shard=1))
    FanOut(backend="deployment", deployment="synthesize-shard/synthesize-shard", concurrency=16)

The three backends run the same task body (`flows.synthesize_shard.synthesize_shard_placed`, a wrapper of
`tasks.synthesize.synthesize_shard_fn`), so a shard's output is the same bytes wherever it ran (tested against a
local run in tests/e2e/test_ray_fanout.py); only the placement record (node, host, pid) differs.

- `local`: Prefect's default thread-pool task runner in the round's process, `concurrency` shards at a time.
- `ray`: a `prefect_ray.RayTaskRunner` connected to `RayOptions.address` (a running cluster; None or "local"
  starts a temporary single-node instance with a small object store). Each shard is one Ray task that asks for
  `num_cpus_per_shard` / `num_gpus_per_shard` / custom `resources` through prefect-ray's `remote_options`, spread
  over the nodes (`scheduling_strategy="SPREAD"`). The job's runtime environment forwards the non-secret
  settings (RSTAR_*, PREFECT_*, HF offline flags) so remote workers use the same artifact store and MLflow server;
  credentials are not forwarded: cluster nodes get them from their own environment or instance role.
- `deployment`: one flow run of the `synthesize-shard` deployment per shard (`run_deployment`, as subflows of the
  round), so shards go to whatever workers poll that deployment's work pool, typically GPU nodes each running a
  vLLM sidecar (infra/gpu/). The parent reads each shard's result from Prefect's result storage, which must be
  shared by parent and children (a local path on one machine; an S3 result-storage block on a cluster).

Ray is an optional dependency (the `ray` extra: ray + prefect-ray); it is imported only when the ray backend runs.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ShardBackend = Literal["local", "ray", "deployment"]

# Environment forwarded to Ray workers: settings that say *where* things are, never credentials.
FORWARDED_PREFIXES: tuple[str, ...] = ("RSTAR_", "PREFECT_", "MLFLOW_TRACKING_URI")
FORWARDED_NAMES: tuple[str, ...] = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "DO_NOT_TRACK",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
)
SECRET_MARKERS: tuple[str, ...] = ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "ACCESS_KEY", "CREDENTIAL")


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayOptions(_Opts):
    """How synthesis shards run on Ray (prefect-ray's RayTaskRunner + per-shard `remote_options`)."""

    address: str | None = Field(
        default=None,
        description='Ray cluster: "ray://head:10001" (Ray client), "host:6379" (GCS) or "auto" (this node\'s '
        "cluster); None: $RAY_ADDRESS, else a temporary local instance",
    )
    num_cpus_per_shard: float = Field(default=1.0, ge=0, description="CPUs a shard reserves on its node")
    num_gpus_per_shard: float = Field(
        default=0.0, ge=0, description="GPUs a shard reserves (1 per shard with an in-process model; 0 with vLLM)"
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description='custom Ray resources per shard, e.g. {"vllm_policy": 1}'
    )
    scheduling_strategy: Literal["SPREAD", "DEFAULT"] = Field(
        default="SPREAD", description="SPREAD: shards over as many nodes as possible; DEFAULT: pack"
    )
    local_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a temporary local instance (None: Ray's default, all cores)"
    )
    local_object_store_mb: int = Field(
        default=200, ge=75, description="object store of a temporary local instance (shards exchange only URIs)"
    )
    forward_env: list[str] = Field(
        default_factory=list, description="further environment variables to forward to the Ray workers by name"
    )


class FanOut(_Opts):
    """Which backend runs a round's synthesis shards, and its options."""

    backend: ShardBackend = Field(default="local", description="local | ray | deployment (see flows/runners.py)")
    concurrency: int = Field(
        default=1, ge=1, description="shards in flight at once (local threads; deployment runs; Ray decides itself)"
    )
    ray: RayOptions = Field(default_factory=RayOptions)
    deployment: str = Field(
        default="synthesize-shard/synthesize-shard", description="FLOW/DEPLOYMENT that runs one shard"
    )
    deployment_poll_s: float = Field(default=5.0, gt=0, description="how often to poll a shard's flow run")


def forwarded_env(extra: list[str] | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a remote shard worker needs: RSTAR_*, PREFECT_*, offline flags; never anything secret."""
    environ = dict(os.environ if environ is None else environ)
    names = set(FORWARDED_NAMES) | set(extra or ())
    out = {}
    for key, value in environ.items():
        if not (key.startswith(FORWARDED_PREFIXES) or key in names):
            continue
        if key not in (extra or ()) and any(m in key.upper() for m in SECRET_MARKERS):
            continue
        out[key] = value
    return out


def ray_init_kwargs(opts: RayOptions) -> dict[str, Any]:
    """Keyword arguments for `ray.init` (through RayTaskRunner): runtime env, and a small local instance."""
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": forwarded_env(opts.forward_env)},
        "include_dashboard": False,
        "log_to_driver": True,
    }
    if ray_address(opts) is None:
        kwargs["object_store_memory"] = opts.local_object_store_mb * 1024 * 1024
        if opts.local_num_cpus:
            kwargs["num_cpus"] = opts.local_num_cpus
    else:
        kwargs.pop("include_dashboard")  # only valid when this call starts the instance
    return kwargs


def ray_address(opts: RayOptions) -> str | None:
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else address


def ray_task_runner(opts: RayOptions) -> Any:
    """A `prefect_ray.RayTaskRunner` for `opts` (imports ray; install the `ray` extra)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("the ray backend needs the `ray` extra: pip install -e '.[ray]'") from exc
    return RayTaskRunner(address=ray_address(opts), init_kwargs=ray_init_kwargs(opts))


def ray_remote_options(opts: RayOptions) -> dict[str, Any]:
    """What each shard asks Ray for (prefect_ray.context.remote_options)."""
    options: dict[str, Any] = {"num_cpus": opts.num_cpus_per_shard, "scheduling_strategy": opts.scheduling_strategy}
    if opts.num_gpus_per_shard:
        options["num_gpus"] = opts.num_gpus_per_shard
    if opts.resources:
        options["resources"] = dict(opts.resources)
    return options
