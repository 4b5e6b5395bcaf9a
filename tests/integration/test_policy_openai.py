"""The `openai` policy backend against a local OpenAI-compatible stub server (tests/helpers/openai_stub.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rstar.models.policy_openai import OpenAIPolicy, OpenAIServerError, normalize_base_url, resolve_stop
from rstar.models.registry import load_policy
from rstar.types import SamplingSpec
from rstar.verify.steps import END_OF_CODE, END_OF_STEP, STOP_STRINGS
from tests.helpers.openai_stub import OpenAIStub

FAST: dict[str, Any] = {"backoff_s": 0.01, "max_backoff_s": 0.05}


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as s:
        yield s


def test_n_per_prompt_in_order_with_stop_cut(stub: OpenAIStub) -> None:
    with OpenAIPolicy(stub.url, **FAST) as policy:
        assert policy.model == "stub-model"  # model=None picks the server's only model
        assert policy.model_id == f"openai:{stub.url}#stub-model"
        spec = SamplingSpec(n=3, stop=STOP_STRINGS, max_tokens=64)
        out = policy.generate(["p0", "p1"], spec, seeds=[11, 12])
    assert [len(o) for o in out] == [3, 3]
    for c in (c for o in out for c in o):
        assert c.finish_reason == "stop" and c.stop_reason == END_OF_STEP
        assert END_OF_STEP not in c.text and "after the stop" not in c.text
        assert c.text.startswith("# Step: add") and c.num_tokens > 0
    # each prompt's choices come back in index order from its own request
    by_prompt = {r["prompt"]: r for r in stub.requests}
    assert set(by_prompt) == {"p0", "p1"}
    assert by_prompt["p0"]["n"] == 3 and by_prompt["p0"]["stop"] == list(STOP_STRINGS)
    assert by_prompt["p0"]["max_tokens"] == 64


def test_seed_passthrough_and_reproducibility(stub: OpenAIStub) -> None:
    with OpenAIPolicy(stub.url, **FAST) as policy:
        spec = SamplingSpec(n=2, stop=(END_OF_STEP,))
        a = policy.generate(["q", "q"], spec, seeds=[1, 2])
        b = policy.generate(["q"], spec, seeds=[2])
        c = policy.generate(["x", "y"], SamplingSpec(n=1, seed=40))
    seeds = {(r["prompt"], r["seed"]) for r in stub.requests}
    assert {("q", 1), ("q", 2), ("x", 40), ("y", 41)} <= seeds  # spec.seed + prompt index without seeds=
    assert a[1] == b[0]  # same prompt + seed -> same samples, whatever else is in the batch
    assert a[0] != a[1]
    assert len(c) == 2


def test_no_seed_sent_when_none_given(stub: OpenAIStub) -> None:
    with OpenAIPolicy(stub.url, **FAST) as policy:
        policy.generate(["q"], SamplingSpec(n=1))
    assert "seed" not in stub.requests[0]


def test_max_tokens_gives_length_finish(stub: OpenAIStub) -> None:
    with OpenAIPolicy(stub.url, **FAST) as policy:
        (out,) = policy.generate(["q"], SamplingSpec(n=2, max_tokens=3, stop=STOP_STRINGS), seeds=[5])
    for c in out:
        assert c.finish_reason == "length" and c.stop_reason is None
        assert c.num_tokens == 3 and len(c.text.split(" ")) == 3


def test_token_counts_sum_to_usage(stub: OpenAIStub) -> None:
    with OpenAIPolicy(stub.url, **FAST) as policy:
        (out,) = policy.generate(["q"], SamplingSpec(n=4, stop=STOP_STRINGS), seeds=[5])
    usage = stub.complete(stub.requests[0])["usage"]["completion_tokens"]
    assert sum(c.num_tokens for c in out) == usage


def test_retries_transient_503_then_succeeds() -> None:
    with OpenAIStub(fail_first=2) as s, OpenAIPolicy(s.url, max_retries=3, **FAST) as policy:
        (out,) = policy.generate(["q"], SamplingSpec(n=1, stop=STOP_STRINGS), seeds=[0])
        assert s.attempts == 3 and policy.retries == 2
    assert out[0].stop_reason == END_OF_STEP


def test_gives_up_after_max_retries() -> None:
    with OpenAIStub(fail_first=100) as s, OpenAIPolicy(s.url, max_retries=2, **FAST) as policy:
        with pytest.raises(OpenAIServerError, match=r"3 attempts.*503"):
            policy.generate(["q"], SamplingSpec(n=1))
        assert s.attempts == 3


def test_client_errors_are_not_retried() -> None:
    with OpenAIStub(fail_first=5, fail_status=400) as s, OpenAIPolicy(s.url, max_retries=3, **FAST) as policy:
        with pytest.raises(OpenAIServerError, match="HTTP 400"):
            policy.generate(["q"], SamplingSpec(n=1))
        assert s.attempts == 1


def test_wrong_model_names_the_available_ones() -> None:
    with OpenAIStub(models=("alpha", "beta")) as s:
        with pytest.raises(OpenAIServerError, match=r"'gamma' is not served by .*available: alpha, beta"):
            OpenAIPolicy(s.url, "gamma", **FAST)
        with pytest.raises(OpenAIServerError, match=r"serves 2 models \(alpha, beta\)"):
            OpenAIPolicy(s.url, **FAST)
        with OpenAIPolicy(s.url, "beta", **FAST) as ok:
            assert ok.model == "beta" and ok.available_models == ["alpha", "beta"]


def test_wrong_model_without_check_fails_clearly_on_generate(stub: OpenAIStub) -> None:
    policy = OpenAIPolicy(stub.url, "nope", check_model=False, **FAST)
    with policy, pytest.raises(OpenAIServerError, match="does not serve model 'nope'"):
        policy.generate(["q"], SamplingSpec(n=1))


def test_unreachable_server_names_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(OpenAIServerError, match=rf"no OpenAI-compatible server answers at {url}"):
        OpenAIPolicy(url, max_retries=1, **FAST)


def test_stop_fallback_for_servers_that_do_not_report_it() -> None:
    with OpenAIStub(report_stop_reason=False, include_stop=True) as s, OpenAIPolicy(s.url, **FAST) as policy:
        (out,) = policy.generate(["q"], SamplingSpec(n=2, stop=STOP_STRINGS), seeds=[3])
    assert all(c.stop_reason == END_OF_STEP and not c.text.endswith(END_OF_STEP) for c in out)
    with OpenAIStub(report_stop_reason=False) as s, OpenAIPolicy(s.url, **FAST) as policy:
        (one,) = policy.generate(["q"], SamplingSpec(n=1, stop=(END_OF_STEP,)), seeds=[3])
        (many,) = policy.generate(["q"], SamplingSpec(n=1, stop=STOP_STRINGS), seeds=[3])
    assert one[0].stop_reason == END_OF_STEP  # a single stop string: "stop" means it matched (or EOS)
    assert many[0].stop_reason is None  # several: the server did not say which


def test_resolve_stop_rules() -> None:
    stops = STOP_STRINGS
    assert resolve_stop("a", "stop", {"stop_reason": END_OF_CODE}, stops) == ("a", END_OF_CODE)
    assert resolve_stop("a" + END_OF_CODE, "stop", {"stop_reason": END_OF_CODE}, stops) == ("a", END_OF_CODE)
    assert resolve_stop("a", "stop", {"stop_reason": None}, stops) == ("a", None)  # vLLM: EOS
    assert resolve_stop("a", "stop", {"stop_reason": 151643}, stops) == ("a", None)  # vLLM: stop token id
    assert resolve_stop("a", "stop", {"matched_stop": END_OF_STEP}, stops) == ("a", END_OF_STEP)  # SGLang
    assert resolve_stop("a", "length", {}, stops) == ("a", None)


def test_base_url_normalization() -> None:
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    with pytest.raises(OpenAIServerError):
        normalize_base_url("h:8000")


def test_generate_from_inside_a_running_loop_and_threads(stub: OpenAIStub) -> None:
    policy = OpenAIPolicy(stub.url, **FAST)
    spec = SamplingSpec(n=1, stop=STOP_STRINGS)

    async def inside() -> int:  # a sync call from a coroutine must not deadlock or need a fresh loop
        return len(policy.generate(["a", "b"], spec, seeds=[1, 2]))

    assert asyncio.run(inside()) == 2
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = policy.generate([f"t{i}"], spec, seeds=[i])[0][0].text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    policy.close()


def test_registry_resolves_openai_specs(stub: OpenAIStub) -> None:
    policy = load_policy(f"openai:{stub.url}#stub-model", **FAST)
    assert isinstance(policy, OpenAIPolicy)
    with policy:
        assert policy.model == "stub-model"
        assert policy.generate(["q"], SamplingSpec(n=2), seeds=[0])[0][0].text
    bare = load_policy(f"openai:{stub.url}")
    assert isinstance(bare, OpenAIPolicy) and bare.model == "stub-model"
    bare.close()
