"""Syntax and consistency checks of the platform files that cannot run here (no Docker, no GPU, no cluster).

- prefect.yaml: validates against Prefect's own model of the file; every deployment's entrypoint imports and is
  the flow it claims; parameters are enforced; pools and schedules come from the `definitions:` anchors; the
  repeated-round schedule ships paused and its parameters fit the flow's schema.
- infra/deploy/gpu-work-pool.json: accepted by Prefect's server-side work-pool validation, a superset of the
  process worker's default template, and every placeholder names a declared variable.
- infra/deploy/compose.yaml: parses; every reference (build files, depends_on, volumes) resolves; ports bind to
  loopback; every credential is a required variable, never a literal; workers stop with SIGINT.
- infra/docker/Dockerfile.*: every COPY source exists; base images are pinned; the final user is not root.
- shell scripts: `bash -n` parses them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
DOCKER = ROOT / "infra" / "docker"
EXPECTED_DEPLOYMENTS = {"evolution-round", "self-evolution", "evaluate", "synthesize-shard"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------------------------------------------ prefect.yaml


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    data = load_yaml(ROOT / "prefect.yaml")
    assert isinstance(data, dict)
    return data


def test_prefect_yaml_validates_against_prefects_model(prefect_yaml: dict[str, Any]) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert {d.name for d in model.deployments} == EXPECTED_DEPLOYMENTS
    assert prefect_yaml["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $RSTAR_PROJECT_DIR }}"}}
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPLOYMENTS))
def test_each_entrypoint_imports_and_is_the_flow_it_names(prefect_yaml: dict[str, Any], name: str) -> None:
    from prefect import Flow

    (dep,) = [d for d in prefect_yaml["deployments"] if d["name"] == name]
    path, func = dep["entrypoint"].split(":")
    assert (ROOT / path).is_file(), path
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, func)
    assert isinstance(flow, Flow)
    assert flow.name == name  # deployment "<flow>/<name>" reads as the flow's own name
    assert dep["enforce_parameter_schema"] is True


def test_pools_and_schedules_come_from_the_definitions_anchors(prefect_yaml: dict[str, Any]) -> None:
    pools = prefect_yaml["definitions"]["work_pools"]
    by_name = {d["name"]: d for d in prefect_yaml["deployments"]}
    for name in ("evolution-round", "self-evolution", "evaluate"):
        assert by_name[name]["work_pool"] == pools["cpu_pool"]
    assert by_name["synthesize-shard"]["work_pool"] == pools["gpu_pool"]
    assert pools["cpu_pool"]["name"] == "{{ $RSTAR_CPU_POOL }}"
    assert pools["gpu_pool"]["name"] == "{{ $RSTAR_GPU_POOL }}"
    nightly = prefect_yaml["definitions"]["schedules"]["nightly_round"]
    assert by_name["evolution-round"]["schedules"] == [nightly]
    text = (ROOT / "prefect.yaml").read_text()
    assert "&cpu_pool" in text and "*cpu_pool" in text and "*nightly_round" in text  # anchors, not copies


def test_the_repeated_round_schedule_is_a_paused_cron_whose_parameters_fit_the_flow(
    prefect_yaml: dict[str, Any],
) -> None:
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    from flows.params import RoundParams

    nightly = prefect_yaml["definitions"]["schedules"]["nightly_round"]
    RawScheduleConfig.model_validate(nightly)
    built = _schedule_config_to_deployment_schedule(nightly)
    assert built["active"] is False
    assert built["schedule"].cron == "0 2 * * *"
    params = dict(nightly["parameters"]["params"])
    assert set(params) >= {"problems", "policy"}
    RoundParams.model_validate({**params, "problems": "train.jsonl", "policy": "fake:oracle"})


# --------------------------------------------------------------------------------------------- GPU work-pool template


def test_gpu_work_pool_template_is_a_valid_process_pool_template() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = json.loads((DEPLOY / "gpu-work-pool.json").read_text())
    WorkPoolCreate(name="rstar-gpu", type="process", base_job_template=template)  # the server's own validation
    default = ProcessWorker.get_default_base_job_template()
    assert set(default["job_configuration"]) <= set(template["job_configuration"])
    declared = set(template["variables"]["properties"])
    assert set(default["variables"]["properties"]) <= declared
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    env = template["job_configuration"]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "{{ cuda_visible_devices }}"
    assert {"RSTAR_VLLM_PORT", "RSTAR_VLLM_TENSOR_PARALLEL_SIZE"} <= set(env)


# ------------------------------------------------------------------------------------------------------ compose file


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(data, dict)
    return data


def test_compose_has_the_production_services_and_every_reference_resolves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"prefect-db", "prefect-server", "mlflow-db", "mlflow", "minio", "minio-init", "worker-cpu"}
    assert expected | {"worker-gpu", "deploy"} <= set(services)
    assert services["prefect-db"]["image"].startswith("postgres:")
    assert services["mlflow-db"]["image"].startswith("postgres:")
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if not source.startswith(("/", ".", "$")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        image = svc.get("image", "")
        assert not image.endswith(":latest") or build or image.startswith("rstar-evolve-"), f"{name}: {image}"
    for worker in ("worker-cpu", "worker-gpu"):
        assert services[worker]["stop_signal"] == "SIGINT"  # a Prefect worker ignores SIGTERM
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


def test_compose_binds_loopback_and_takes_every_secret_from_the_environment(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for svc in compose["services"].values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    for secret in ("PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert f"${{{secret}:?" in text, f"{secret} must be required from the environment"
    for key, value in re.findall(r"(\w*(?:PASSWORD|SECRET\w*))\s*:\s*(\S+)", text):
        assert value.startswith(("${", '"$', "$")), f"{key} has a literal value"
    example = (DEPLOY / "stack.env.example").read_text()
    assert all(f"{s}=" in example for s in ("PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "MINIO_ROOT_PASSWORD"))


# ------------------------------------------------------------------------------------------------------- Dockerfiles


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in logical]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_copies_files_that_exist_pins_its_base_and_drops_root(name: str) -> None:
    steps = instructions(DOCKER / name)
    known = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "ARG", "LABEL", "EXPOSE"}
    assert {op for op, _ in steps} <= known
    (base,) = [arg for op, arg in steps if op == "FROM"]
    assert ":" in base and not base.endswith(":latest")
    for op, arg in steps:
        if op == "COPY":
            *sources, _dest = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} (build context: repository root)"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [arg for op, arg in steps if op in ("ENTRYPOINT", "CMD")]
    assert entry and all(json.loads(e) for e in entry)  # exec form, so signals reach the process


@pytest.mark.parametrize("script", ["infra/docker/gpu-entrypoint.sh", ".ci/install-browser.sh"])
def test_shell_scripts_parse_and_are_executable(script: str) -> None:
    path = ROOT / script
    assert path.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_the_ray_extra_is_importable_when_installed() -> None:
    if importlib.util.find_spec("prefect_ray") is None:
        pytest.skip("the `ray` extra is not installed")
    from flows.runners import RayOptions, ray_init_kwargs, ray_remote_options, ray_task_runner

    runner = ray_task_runner(RayOptions(address="127.0.0.1:6379"))
    assert runner.address == "127.0.0.1:6379"
    assert "object_store_memory" not in ray_init_kwargs(RayOptions(address="127.0.0.1:6379"))
    assert ray_init_kwargs(RayOptions())["object_store_memory"] == 200 * 1024 * 1024
    opts = ray_remote_options(RayOptions(num_gpus_per_shard=1, resources={"vllm": 1}))
    assert opts == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {"vllm": 1}, "scheduling_strategy": "SPREAD"}
    assert sys.modules.get("ray") is not None


# ------------------------------------------------------------------------------------------- pure helpers of the stack


def test_env_file_round_trips_quoting_and_unset_lines(tmp_path: Path) -> None:
    from infra.stack import apply_env, read_env_file, render_env_file

    env = {"A": "plain", "B": "with space and 'quote'", "C": "x=y;$(rm -rf /)", "GONE": None}
    path = tmp_path / "env"
    path.write_text(render_env_file(env, header="line one\nline two"))
    assert read_env_file(path) == env
    sourced = subprocess.run(
        ["bash", "-c", f'source {path} && printf "%s|%s|%s|%s" "$A" "$B" "$C" "${{GONE-unset}}"'],
        env={"GONE": "was set", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sourced.stdout == "plain|with space and 'quote'|x=y;$(rm -rf /)|unset"
    assert apply_env({"GONE": "1", "K": "v"}, read_env_file(path)) == {
        "K": "v",
        "A": "plain",
        "B": env["B"],
        "C": env["C"],
    }


def test_ray_workers_get_locations_but_never_credentials() -> None:
    from flows.runners import forwarded_env

    environ = {
        "RSTAR_HOME": "/h",
        "RSTAR_ARTIFACT_URL": "s3://b/p",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_API_KEY": "pnu_secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
        "HOME": "/root",
        "RSTAR_S3_SECRET": "x",
    }
    out = forwarded_env(environ=environ)
    assert out == {
        "RSTAR_HOME": "/h",
        "RSTAR_ARTIFACT_URL": "s3://b/p",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
    assert forwarded_env(["AWS_ACCESS_KEY_ID"], environ=environ)["AWS_ACCESS_KEY_ID"] == "id"  # only by name


def test_stack_config_uses_an_external_bucket_when_the_settings_name_one(tmp_path: Path) -> None:
    from infra.settings import Settings
    from infra.stack import Stack, StackConfig, StackError

    ext = StackConfig.from_settings(
        Settings(home=tmp_path, artifact_url="s3://prod-bucket/evolve", s3_endpoint_url="http://minio:9000")
    )
    assert ext.s3 == "external" and ext.services() == ("mlflow", "prefect", "worker")
    assert Stack(ext).artifact_url() == "s3://prod-bucket/evolve"
    local = StackConfig.from_settings(Settings(home=tmp_path), s3="off", worker=False)
    assert local.services() == ("mlflow", "prefect") and Stack(local).artifact_url().startswith("file://")
    with pytest.raises(StackError, match="RSTAR_ARTIFACT_URL"):
        Stack(StackConfig(root=tmp_path / "stack", home=tmp_path, s3="external")).artifact_url()
