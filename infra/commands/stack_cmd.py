"""`rstar stack up|down|status` (the local platform) and `rstar deploy` (register the Prefect deployments).

    rstar stack up                          # Prefect server + UI :4200, worker, MLflow :5000, S3 (moto) :9000
    rstar stack up --prefect-port 0         # any free port for Prefect (0 works for every port flag)
    rstar stack up --s3 off                 # artifacts on the local filesystem instead of an S3 endpoint
    rstar stack status                      # URLs, PIDs, health; exit code 0 only when everything is healthy
    rstar stack down                        # worker first (SIGINT), then the servers; nothing left behind
    source .rstar/stack/env                 # point a shell at the stack (PREFECT_API_URL, RSTAR_*, moto's keys)
    rstar deploy                            # = prefect --no-prompt deploy --all, with the stack's environment
    rstar deploy --name evolution-round     # only some deployments
    rstar deploy --create-pools             # against a production server: create missing work pools first

Everything is under `$RSTAR_HOME/stack/` (default ./.rstar/stack): logs, PID files, state, the env file. See
infra/stack.py for how the services are started and stopped, and docs/operations.md for the whole platform.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CPU_POOL_VAR = "RSTAR_CPU_POOL"
GPU_POOL_VAR = "RSTAR_GPU_POOL"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stack",
        help="start / stop / inspect the local platform (Prefect server + worker, MLflow, S3 endpoint)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="stack_action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start what is not running, wait until healthy, write the env file")
    up.add_argument("--prefect-port", type=int, default=None, help="Prefect API + UI port (default 4200; 0: any)")
    up.add_argument("--mlflow-port", type=int, default=None, help="MLflow tracking server port (default 5000; 0: any)")
    up.add_argument("--s3-port", type=int, default=None, help="moto S3 endpoint port (default 9000; 0: any)")
    up.add_argument(
        "--s3",
        choices=("moto", "external", "off"),
        default=None,
        help="moto: start a local S3 endpoint (default); external: use RSTAR_ARTIFACT_URL=s3://... and "
        "RSTAR_S3_ENDPOINT_URL (MinIO, AWS) with this shell's AWS_* credentials; off: local files",
    )
    up.add_argument("--bucket", default=None, help="bucket of the moto endpoint (default rstar-artifacts)")
    up.add_argument("--pool", default=None, help="work pool of the local worker (default rstar-process)")
    up.add_argument("--no-worker", action="store_true", help="start the servers only")
    up.add_argument("--worker-limit", type=int, default=None, help="flow runs the worker runs at once (default: any)")
    up.add_argument(
        "--scheduler-loop-seconds",
        type=float,
        default=None,
        help="how often Prefect's scheduler creates runs from schedules (default 60)",
    )
    up.add_argument("--timeout", type=float, default=None, help="seconds to wait for health (default 240)")
    up.set_defaults(func=run)
    for name, text in (("down", "stop every service of the stack"), ("status", "print URLs, PIDs and health")):
        sp = sub.add_parser(name, help=text)
        sp.set_defaults(func=run)

    d = subparsers.add_parser(
        "deploy",
        help="register the deployments of prefect.yaml against the running Prefect server",
        description="Runs `prefect --no-prompt deploy --all` (or --name ...) with the local stack's environment "
        "(.rstar/stack/env) or, without a stack, the PREFECT_API_URL of this shell.",
    )
    d.add_argument("--name", action="append", default=[], help="deploy only this deployment (repeatable)")
    d.add_argument("--prefect-file", type=Path, default=None, help="default: prefect.yaml of the project")
    d.add_argument("--env-file", type=Path, default=None, help="default: $RSTAR_HOME/stack/env when it exists")
    d.add_argument(
        "--create-pools",
        action="store_true",
        help=f"create missing work pools (${CPU_POOL_VAR}: process type; ${GPU_POOL_VAR}: "
        "infra/deploy/gpu-work-pool.json) before deploying",
    )
    d.set_defaults(func=run_deploy)


def run(args: argparse.Namespace) -> int:
    from infra.stack import StackError, default_stack

    action = args.stack_action
    try:
        if action == "up":
            stack = default_stack(
                prefect_port=args.prefect_port,
                mlflow_port=args.mlflow_port,
                s3_port=args.s3_port,
                s3=args.s3,
                bucket=args.bucket,
                work_pool=args.pool,
                worker=False if args.no_worker else None,
                worker_limit=args.worker_limit,
                scheduler_loop_seconds=args.scheduler_loop_seconds,
                start_timeout_s=args.timeout,
            )
            print(f"rstar stack up: {stack.config.root}", file=sys.stderr)
            report = stack.up()
            print(report.render())
            return 0
        stack = default_stack()
        if action == "down":
            stopped = stack.down()
            print(f"rstar stack down: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")
            return 0
        statuses = stack.status()
        print(f"rstar stack ({stack.config.root})")
        for s in statuses:
            print(s.line())
        if stack.config.env_file.exists():
            print(f"\n  source {stack.config.env_file}")
        healthy = bool(statuses) and all(s.healthy for s in statuses)
        if not any(s.running for s in statuses):
            print("not running: start it with `rstar stack up`")
        return 0 if healthy else 1
    except StackError as exc:
        print(f"rstar stack {action}: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------------------------------------ deploy


def deploy_env(env_file: Path | None) -> tuple[dict[str, str], Path | None]:
    """The environment `prefect deploy` runs with: this shell's, the stack's env file on top, pool defaults."""
    from infra.settings import PROJECT_ROOT, get_settings
    from infra.stack import DEFAULT_POOL, ENV_FILE, apply_env, read_env_file

    path = env_file or get_settings().home / "stack" / ENV_FILE
    env = dict(os.environ)
    used: Path | None = None
    if path.exists():
        env = apply_env(env, read_env_file(path))
        used = path
    elif env_file is not None:
        raise FileNotFoundError(f"env file {env_file} does not exist")
    env.setdefault("RSTAR_PROJECT_DIR", str(PROJECT_ROOT))
    env.setdefault(CPU_POOL_VAR, DEFAULT_POOL)
    env.setdefault(GPU_POOL_VAR, env[CPU_POOL_VAR])
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env, used


def ensure_pools(api_url: str, env: dict[str, str], *, create: bool) -> list[str]:
    """Check that the work pools the deployments name exist; create missing ones when `create`. Returns problems."""
    import json

    from infra.settings import PROJECT_ROOT
    from infra.stack import http_get, http_post_json

    problems = []
    for var in (CPU_POOL_VAR, GPU_POOL_VAR):
        name = env[var]
        status, _ = http_get(f"{api_url}/work_pools/{name}")
        if status == 200:
            continue
        if status != 404:
            problems.append(f"work pool {name!r}: the API answered {status or 'nothing'}")
            continue
        if not create:
            problems.append(
                f"work pool {name!r} (${var}) does not exist: start a worker for it (`rstar stack up` does for "
                f"the local pool), or pass --create-pools"
            )
            continue
        if var == GPU_POOL_VAR and env[GPU_POOL_VAR] != env[CPU_POOL_VAR]:
            template = json.loads((PROJECT_ROOT / "infra" / "deploy" / "gpu-work-pool.json").read_text())
        else:
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
        body: dict[str, Any] = {"name": name, "type": "process", "base_job_template": template}
        status, _ = http_post_json(f"{api_url}/work_pools/", body)
        if status not in (200, 201):
            problems.append(f"creating work pool {name!r} failed: HTTP {status or 'no answer'}")
        else:
            print(f"rstar deploy: created work pool {name!r}", file=sys.stderr)
    return problems


def run_deploy(args: argparse.Namespace) -> int:
    from infra.settings import PROJECT_ROOT
    from infra.stack import http_get

    try:
        env, used = deploy_env(args.env_file)
    except (OSError, ValueError) as exc:
        print(f"rstar deploy: {exc}", file=sys.stderr)
        return 2
    api = env.get("PREFECT_API_URL")
    if not api:
        print(
            "rstar deploy: no Prefect server: start the local stack (`rstar stack up`) or set PREFECT_API_URL",
            file=sys.stderr,
        )
        return 2
    api = api.rstrip("/")
    status, _ = http_get(f"{api}/health")
    if status != 200:
        print(
            f"rstar deploy: the Prefect API at {api} does not answer ({status or 'no connection'}); "
            "is the stack up (`rstar stack status`)?",
            file=sys.stderr,
        )
        return 1
    problems = ensure_pools(api, env, create=args.create_pools)
    if problems:
        for p in problems:
            print(f"rstar deploy: {p}", file=sys.stderr)
        return 1
    prefect_file = (args.prefect_file or PROJECT_ROOT / "prefect.yaml").absolute()
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    cmd += [x for n in args.name for x in ("--name", n)] or ["--all"]
    where = f"env file {used}" if used else "this shell's environment"
    print(f"rstar deploy: {api} ({where}); pools {env[CPU_POOL_VAR]} / {env[GPU_POOL_VAR]}", file=sys.stderr)
    for var in ("RSTAR_NIGHTLY_PROBLEMS", "RSTAR_NIGHTLY_POLICY"):
        if not env.get(var):
            print(
                f"rstar deploy: note: {var} is not set, so the paused `nightly-round` schedule gets an empty value; "
                "set it (or edit the schedule in the UI) before activating the schedule",
                file=sys.stderr,
            )
    proc = subprocess.run(cmd, cwd=env["RSTAR_PROJECT_DIR"], env=env, check=False)
    if proc.returncode == 0:
        ui = api[: -len("/api")] if api.endswith("/api") else api
        print(f"rstar deploy: done; open {ui}/deployments to run them from the UI")
    return proc.returncode
