"""The vLLM sidecar launcher (infra/gpu/vllm_sidecar.py) against a stand-in `vllm` executable.

vLLM needs a GPU and its own environment, neither of which CI has, so the venv here holds a small Python script named
`bin/vllm` that accepts `vllm serve MODEL --served-model-name NAME --host H --port P ...`, records its arguments,
and answers `/health` and `/v1/models` like vLLM's OpenAI server. That exercises everything the launcher owns:
the command line (prefix caching on, tensor parallel size), start-up health checks, `ensure` keeping or replacing
the served model, a server that dies while loading, and `stop` leaving no process behind.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.gpu.vllm_sidecar import SidecarConfig, SidecarError, VllmSidecar, model_id, serve_argv
from infra.stack import free_port, group_alive

pytestmark = [pytest.mark.e2e]

FAKE_VLLM = r'''#!{python}
"""Stand-in for `vllm serve`: records argv, serves /health and /v1/models; FAKE_VLLM_FAIL=1 exits while loading."""
import http.server, json, os, sys, time
args = sys.argv[1:]
assert args[0] == "serve", args
model = args[1]
opts = dict(zip(args[2::2], args[3::2]))
with open(os.environ["FAKE_VLLM_LOG"], "a") as fh:
    fh.write(json.dumps({{"pid": os.getpid(), "argv": args}}) + "\n")
if os.environ.get("FAKE_VLLM_FAIL") == "1":
    print("CUDA out of memory while loading", model, flush=True)
    sys.exit(3)
time.sleep(0.5)  # "loading"
name = opts["--served-model-name"]

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({{"object": "list", "data": [{{"id": name, "object": "model", "root": model}}]}}).encode()
        else:
            self.send_response(404); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

http.server.HTTPServer((opts["--host"], int(opts["--port"])), H).serve_forever()
'''


@pytest.fixture
def sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VllmSidecar]:
    venv = tmp_path / "vllm-venv"
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin" / "vllm"
    exe.write_text(FAKE_VLLM.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    (venv / ".rstar-vllm").write_text("vllm==0.33.0\n")
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "calls.jsonl"))
    config = SidecarConfig(home=tmp_path / "home", venv=venv, port=free_port(), tensor_parallel_size=2,
                           start_timeout_s=60, stop_timeout_s=10)  # fmt: skip
    s = VllmSidecar(config)
    yield s
    s.stop()


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_serve_command_has_prefix_caching_and_the_tensor_parallel_size(tmp_path: Path) -> None:
    cfg = SidecarConfig(home=tmp_path, port=8123, tensor_parallel_size=4, max_model_len=4096, extra_args=("--x",))
    argv = serve_argv(cfg, "/models/policy", "policy-abc")
    assert argv[:3] == [str(tmp_path / "vllm-venv" / "bin" / "vllm"), "serve", "/models/policy"]
    assert "--enable-prefix-caching" in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # loopback by default: only this node's worker
    assert argv[argv.index("--max-model-len") + 1] == "4096" and argv[-1] == "--x"


def test_model_ids_follow_artifact_digests_and_differ_per_model() -> None:
    assert model_id("s3://b/evolve/rounds/2/policy/69aa63fd8b3adfd1") == "69aa63fd8b3adfd1"
    assert model_id("hf:/models/a") != model_id("hf:/models/b")
    assert model_id("/models/a") == model_id("/models/a")


def test_setup_is_a_no_op_when_the_pinned_vllm_is_installed(sidecar: VllmSidecar) -> None:
    assert sidecar.setup() == sidecar.config.venv_dir / "bin" / "vllm"  # would pip install otherwise


def test_start_ensure_and_stop(sidecar: VllmSidecar, tmp_path: Path) -> None:
    spec = sidecar.start("/models/round-1")
    name = f"policy-{model_id('/models/round-1')}"
    assert spec == f"openai:http://127.0.0.1:{sidecar.config.port}/v1#{name}"
    assert sidecar.health(name) == (True, f"serving ['{name}']")
    first = sidecar.state()
    assert first is not None and first["served_name"] == name
    (call,) = calls(tmp_path)
    assert call["argv"][1] == "/models/round-1" and "--enable-prefix-caching" in call["argv"]

    assert sidecar.ensure("/models/round-1") == spec  # same model: left alone
    kept = sidecar.state()
    assert kept is not None and kept["pid"] == first["pid"]
    assert len(calls(tmp_path)) == 1

    spec2 = sidecar.ensure("hf:/models/round-2")  # another model: restarted with it
    second = sidecar.state()
    assert second is not None and second["pid"] != first["pid"]
    assert spec2.endswith(f"#policy-{model_id('hf:/models/round-2')}")
    assert calls(tmp_path)[-1]["argv"][1] == "/models/round-2"
    assert not group_alive(int(first["pid"]))

    assert sidecar.stop() is True
    assert not group_alive(int(second["pid"]))
    assert sidecar.state() is None and sidecar.stop() is False


def test_a_server_that_dies_while_loading_raises_with_its_log(
    sidecar: VllmSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(SidecarError, match=r"(?s)exited with 3 .*CUDA out of memory"):
        sidecar.start("/models/too-big")
    assert sidecar.state() is None


def test_start_without_the_vllm_environment_says_to_run_setup(tmp_path: Path) -> None:
    s = VllmSidecar(SidecarConfig(home=tmp_path, port=free_port()))
    with pytest.raises(SidecarError, match=re.escape("run `python -m infra.gpu.vllm_sidecar setup` first")):
        s.start("/models/x")
    assert not os.path.exists(tmp_path / "gpu" / f"vllm-{s.config.port}.json")
