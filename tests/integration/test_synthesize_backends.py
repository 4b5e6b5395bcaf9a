"""Real MCTS end to end through each real policy backend, written to Parquet and validated against the schemas.

- `hf`: a tiny Qwen2 model overfit on two step-format solutions, run in-process on CPU, its code run in the sandbox.
- `openai`: the OpenAI-compatible stub server (tests/helpers/openai_stub.py) writing seeded step-format steps.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import polars as pl
import pytest

from rstar.config import SearchConfig
from rstar.data.schema import NODES_SCHEMA, PROBLEMS_SCHEMA, validate
from rstar.models.fakes import InProcessExecutor
from rstar.models.policy_openai import OpenAIPolicy
from rstar.search import load_synthesis, synthesize_to_dir
from rstar.types import Problem
from rstar.verify.steps import END_OF_CODE, END_OF_STEP, STOP_STRINGS, build_prompt
from tests.helpers.openai_stub import OpenAIStub

PROBLEMS = [
    Problem(id="p1", question="Tom has 3 apples and buys 4 more. How many apples does Tom have?", answer="7"),
    Problem(id="p2", question="Ann has 5 pencils and buys 6 more. How many pencils does Ann have?", answer="11"),
]


def solution(a: int, b: int, var: str) -> str:
    return (
        f"# Step 1: add what was bought to what there was\n{var} = {a} + {b}\n{END_OF_STEP}\n"
        f"# Now print the final answer\nprint({var})\n{END_OF_CODE}\n"
    )


def check_output(out: Path, policy_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both tables are valid under their schemas, read raw and through load_synthesis, and hang together."""
    raw_nodes = validate(pl.read_parquet(out / "nodes" / "*.parquet"), NODES_SCHEMA, name="nodes")
    raw_problems = validate(pl.read_parquet(out / "problems" / "*.parquet"), PROBLEMS_SCHEMA, name="problems")
    nodes, problems = load_synthesis(out)
    nodes, problems = validate(nodes, NODES_SCHEMA), validate(problems, PROBLEMS_SCHEMA)
    assert raw_nodes.height == nodes.height and raw_problems.height == problems.height == len(PROBLEMS)
    assert set(problems["problem_id"]) == {p.id for p in PROBLEMS}
    assert problems["error"].null_count() == problems.height
    assert set(problems["policy_id"]) == {policy_id} and set(nodes["policy_id"]) == {policy_id}
    assert (problems["tokens_generated"] > 0).all()
    per_problem = nodes.group_by("problem_id").agg(pl.col("tokens").sum(), pl.len().alias("n"))
    joined = problems.join(per_problem, on="problem_id")
    assert (joined["tokens"] <= joined["tokens_generated"]).all()  # dropped / duplicate candidates cost tokens too
    assert (joined["n"] == joined["nodes"]).all()
    return nodes, problems


@pytest.fixture(scope="module")
def overfit_policy(tmp_path_factory: pytest.TempPathFactory):  # -> HFPolicy
    pytest.importorskip("torch")
    from rstar.models.policy_hf import HFPolicy
    from tests.helpers.overfit import overfit_tiny

    texts = [
        build_prompt(PROBLEMS[0].question) + solution(3, 4, "x"),
        build_prompt(PROBLEMS[1].question) + solution(5, 6, "y"),
    ]
    path = overfit_tiny(tmp_path_factory.mktemp("overfit-mcts") / "m", texts, steps=150)
    return HFPolicy(path, model_id="tiny-overfit", num_threads=1)


@pytest.mark.slow
def test_mcts_through_hf_backend_to_parquet(overfit_policy, tmp_path: Path) -> None:
    sandbox_mod = pytest.importorskip("rstar.verify.sandbox")
    config = SearchConfig(
        rollouts=3, candidates=3, max_depth=4, max_step_tokens=48, temperature=0.7, max_active_trees=2, seed=1
    )
    with sandbox_mod.Sandbox(sandbox_mod.SandboxConfig(workers=1)) as sandbox:
        summary = synthesize_to_dir(PROBLEMS, tmp_path / "out", overfit_policy, sandbox, config)
    assert summary["status"] == "complete"
    nodes, problems = check_output(tmp_path / "out", "tiny-overfit")
    assert problems["solved"].all()  # the overfit model writes the right program for both problems
    answers = nodes.filter(pl.col("terminal_reason") == "answer")
    assert set(answers.filter(pl.col("correct"))["answer"]) == {"7", "11"}
    steps = nodes.filter(pl.col("depth") == 1)
    assert steps["step_text"].str.ends_with(END_OF_STEP + "\n").any()  # the stop string ended the step
    assert problems["rollouts"].is_between(1, 3).all()  # a tree with nothing left to expand stops early
    assert (
        overfit_policy.stats.calls > 0 and overfit_policy.stats.generated_tokens == problems["tokens_generated"].sum()
    )


def stub_responder(prompt: str, index: int, seed: int | None) -> str:
    """Step 1 adds the question's two numbers into s, t or u; step 2 prints it, and `t` trajectories print it wrong."""
    a, b = (int(x) for x in re.findall(r"\d+", prompt.split("<|assistant|>")[0])[:2])
    body = prompt.split("<code>\n", 1)[1]
    if END_OF_STEP not in body:
        var = "st"[index] if index < 2 else random.Random(f"{seed}|{index}").choice("stu")
        return f"# Step 1: add the numbers\n{var} = {a} + {b}\n{END_OF_STEP}\n# ignored: after the stop"
    var = re.findall(r"^([stu]) = ", body, flags=re.M)[-1]
    wrong = " + 1" if var == "t" else ""
    return f"# Now print the final answer\nprint({var}{wrong})\n{END_OF_CODE}\n<output>ignored"


def test_mcts_through_openai_backend_to_parquet(tmp_path: Path) -> None:
    config = SearchConfig(rollouts=4, candidates=3, max_depth=4, max_step_tokens=64, max_active_trees=2, seed=3)
    with OpenAIStub(models=("bootstrap-236b",), responder=stub_responder, fail_first=1) as stub:
        with OpenAIPolicy(stub.url, backoff_s=0.01) as policy:
            summary = synthesize_to_dir(PROBLEMS, tmp_path / "out", policy, InProcessExecutor(), config)
        requests = list(stub.requests)
    assert summary["status"] == "complete"
    policy_id = f"openai:{stub.url}#bootstrap-236b"
    nodes, problems = check_output(tmp_path / "out", policy_id)
    assert all(r["n"] == 3 and r["stop"] == list(STOP_STRINGS) and r["max_tokens"] == 64 for r in requests)
    seeds = [r["seed"] for r in requests]
    assert len(set(seeds)) == len(seeds)  # one seed per (problem, node): no two expansions share one
    answers = nodes.filter(pl.col("terminal_reason") == "answer")
    assert set(answers["correct"]) == {True, False}  # right and wrong terminals, so +1 and -1 were backed up
    assert problems["solved"].all()
    root_q = nodes.filter(pl.col("depth") == 0)["q"]
    assert ((root_q > -1) & (root_q < 1)).all()
    wrong = answers.filter(~pl.col("correct"))
    assert set(wrong["answer"]) == {"8", "12"}
    assert set(answers.filter(pl.col("correct"))["answer"]) == {"7", "11"}
