"""The deterministic fakes: spec strings, seeding, stop-string handling, scripted rules, executors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rstar.config import SearchConfig
from rstar.data.world import WorldConfig, generate_world
from rstar.models.fakes import (
    InProcessExecutor,
    ScriptedExecutor,
    make_fake_policy,
    make_fake_reward_model,
    prompt_depth,
    split_prompt,
    to_completion,
)
from rstar.models.registry import load_policy, load_reward_model
from rstar.search import synthesize
from rstar.types import CodeExecutor, PolicyLM, Problem, RewardModel, SamplingSpec
from rstar.verify.steps import STOP_STRINGS, build_prompt

SPEC = SamplingSpec(n=6, stop=STOP_STRINGS, max_tokens=64, seed=0)
PROMPT = build_prompt("Tom has 12 apples and buys 30 more. How many apples now?")


def test_to_completion_cuts_at_the_first_stop_string() -> None:
    c = to_completion("x = 1\n<end_of_step>\ny = 2<end_of_code>", SPEC)
    assert (c.text, c.stop_reason, c.finish_reason) == ("x = 1\n", "<end_of_step>", "stop")
    eos = to_completion("print(3)", SPEC)
    assert (eos.stop_reason, eos.finish_reason) == (None, "stop")
    length = to_completion({"text": "# thinking", "finish_reason": "length"}, SPEC)
    assert length.finish_reason == "length"
    long = to_completion(" ".join(f"w{i}" for i in range(100)) + "<end_of_step>", SPEC)
    assert (long.finish_reason, long.num_tokens, long.stop_reason) == ("length", 64, None)
    assert long.text.endswith("w63")


def test_split_prompt_and_depth() -> None:
    steps = "a = 1\n<end_of_step>\nb = 2\n<end_of_step>\n"
    q, s = split_prompt(PROMPT + steps)
    assert q.startswith("Tom has 12 apples") and s == steps
    assert prompt_depth(PROMPT + steps) == 2 and prompt_depth(PROMPT) == 0


@pytest.mark.parametrize("spec", ["random-int?max=20&seed=3", "oracle", "arith?p_error=0.2&seed=1"])
def test_fake_policies_are_deterministic_per_prompt_and_seed(spec: str) -> None:
    pol = make_fake_policy(spec)
    assert isinstance(pol, PolicyLM) and pol.model_id == f"fake:{spec}"
    other = PROMPT.replace("12", "15")
    together = pol.generate([PROMPT, other], SPEC, seeds=[5, 6])
    alone = pol.generate([other], SPEC, seeds=[6])
    assert together[1] == alone[0]  # independent of batch-mates
    assert pol.generate([PROMPT], SPEC, seeds=[5])[0] == together[0]  # repeatable
    many = [tuple(c.text for c in pol.generate([PROMPT], SPEC, seeds=[s])[0]) for s in range(6)]
    assert len(set(many)) > 1  # seeds matter
    assert all(len(x) == SPEC.n for x in many)


def test_the_spec_seed_changes_the_samples() -> None:
    a = make_fake_policy("random-int?max=1000&seed=1").generate([PROMPT], SPEC, seeds=[5])
    b = make_fake_policy("random-int?max=1000&seed=2").generate([PROMPT], SPEC, seeds=[5])
    assert a != b


def test_bad_fake_specs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fake policy"):
        make_fake_policy("nonsense")
    with pytest.raises(ValueError, match="unknown parameters"):
        make_fake_policy("random-int?maxx=3")
    with pytest.raises(ValueError, match="max="):
        make_fake_policy("random-int?max=three")
    with pytest.raises(ValueError, match="not found"):
        make_fake_policy(f"scripted:{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="unknown fake reward model"):
        make_fake_reward_model("nonsense")


def test_oracle_arithmetic_policy_writes_runnable_steps_over_the_question_numbers() -> None:
    pol = make_fake_policy("oracle?p_error=0&p_unparsable=0")
    outs = pol.generate([PROMPT], SamplingSpec(n=8, stop=STOP_STRINGS), seeds=[0])[0]
    texts = [c.text for c in outs]
    assert all(c.stop_reason == "<end_of_step>" for c in outs)
    assert any("12 + 30" in t or "30 + 12" in t for t in texts)  # 8 distinct operations: all of them at the root
    ran = InProcessExecutor().run_batch(texts)
    assert all(r.ok for r in ran), [r.error_message for r in ran]


def test_oracle_policy_finds_answers_to_easy_world_problems() -> None:
    world = generate_world(WorldConfig(seed=0, train=24, heldout=0, seed_sft=0, levels=(1,), level_weights=(1.0,)))
    ps = [p.to_problem("train") for p in world.train]
    res = synthesize(ps, make_fake_policy("oracle"), InProcessExecutor(), SearchConfig(rollouts=8))
    assert res.problems["solved"].mean() > 0.6  # type: ignore[operator]
    assert (res.problems["terminals"] > res.problems["correct_rollouts"]).any()  # and wrong ones too


def test_oracle_with_answers_file_prints_the_gold(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"question": "What is six times seven?", "answer": "42"}) + "\n")
    pol = make_fake_policy(f"oracle?answers={path}&p_correct=1")
    steps = "v1 = 6 * 7\n<end_of_step>\n"
    out = pol.generate([build_prompt("What is six times seven?") + steps], SPEC, seeds=[1])[0]
    assert all(c.text.strip().endswith("print('42')") for c in out)


def test_scripted_policy_rules(tmp_path: Path) -> None:
    script = {
        "pick": "first",
        "rules": [
            {
                "depth": 0,
                "question_contains": "apples",
                "completions": ["a = 12\n<end_of_step>", "b = 30\n<end_of_step>"],
            },
            {"depth": 1, "contains": "a = 12", "completions": ["print(a + 30)\n<end_of_code>"]},
        ],
        "default": [{"text": "# no idea", "finish_reason": "length"}],
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    pol = load_policy(f"fake:scripted:{path}")
    spec = SamplingSpec(n=3, stop=STOP_STRINGS)
    root, after_a, after_b = pol.generate(
        [PROMPT, PROMPT + "a = 12\n<end_of_step>\n", PROMPT + "b = 30\n<end_of_step>\n"], spec
    )
    assert [c.text for c in root] == ["a = 12\n", "b = 30\n", "a = 12\n"]  # cycled to n
    assert [c.text for c in after_a] == ["print(a + 30)\n"] * 3
    assert all(c.finish_reason == "length" for c in after_b)
    res = synthesize(
        [Problem(id="s", question=PROMPT.split("\n")[1], answer="42")],
        pol,
        InProcessExecutor(),
        SearchConfig(rollouts=2, candidates=2),
    )
    assert res.problems["solved"][0] is True
    assert res.nodes.filter(pl.col("correct"))["node_id"].to_list() == ["0.0.0"]


def test_fake_reward_models(tmp_path: Path) -> None:
    const = load_reward_model("fake:constant?value=0.25")
    assert isinstance(const, RewardModel) and const.score(["a", "b"]) == [0.25, 0.25]
    h = make_fake_reward_model("hash?seed=1&scale=0.5")
    s = h.score(["x", "y", "x"])
    assert s[0] == s[2] != s[1] and all(-0.5 < v < 0.5 for v in s)
    path = tmp_path / "ppm.json"
    path.write_text(json.dumps({"rules": [{"contains": "good", "score": 0.9}, {"contains": "bad", "score": -0.9}]}))
    sc = make_fake_reward_model(f"scripted:{path}")
    assert sc.score(["good then bad", "bad then good", "neither"]) == [-0.9, 0.9, 0.0]
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question": "Q1?", "answer": "5"}) + "\n")
    oracle = make_fake_reward_model(f"oracle?answers={answers}")
    right = build_prompt("Q1?") + "<answer>\nThe answer is \\boxed{5}\n<end_of_answer>\n"
    wrong = build_prompt("Q1?") + "<answer>\nThe answer is \\boxed{6}\n<end_of_answer>\n"
    mid = build_prompt("Q1?") + "x = 5\n<end_of_step>\n"
    r, w, m = oracle.score([right, wrong, mid])
    assert r == 0.9 and w == -0.9 and abs(m) <= 0.2


def test_in_process_executor() -> None:
    ex = InProcessExecutor(max_output_chars=50)
    assert isinstance(ex, CodeExecutor)
    ok, err, syntax, loud, leak = ex.run_batch(
        ["x = 2\nprint(x * 3)", "print(1)\n1 / 0", "def (", "print('a' * 100)", "print(x)"]
    )
    assert (ok.ok, ok.stdout, ok.error) == (True, "6\n", None)
    assert (err.ok, err.stdout, err.error) == (False, "1\n", "ZeroDivisionError")
    assert (syntax.ok, syntax.error) == (False, "SyntaxError")
    assert (loud.ok, loud.error, loud.output_truncated, len(loud.stdout)) == (False, "OutputLimit", True, 50)
    assert (leak.ok, leak.error) == (False, "NameError")  # a fresh namespace per program


def test_scripted_executor() -> None:
    ex = ScriptedExecutor.failing_on("BOOM", stdout="1\n")
    a, b = ex.run_batch(["x = 1", "BOOM"])
    assert (a.ok, a.stdout) == (True, "1\n") and (b.ok, b.error) == (False, "ScriptedError")
    assert (ex.calls, ex.programs) == (1, 2)
