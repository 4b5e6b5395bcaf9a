"""Golden trees: a scripted policy and fixed seed reproduce exactly the tree computed by hand in each mode.

The script (keyed by the last code line of the trajectory so far; 3 candidates per expansion):

    root          a = 1 | b = 2 | a = 1 (duplicate)
    a = 1         print(a + 3) -> 4 | c = a * 2 | print(a + 5) (second answer: dropped)
    b = 2         x = 1 / 0 (code error: dropped) | print(b) -> 2 | d = b + 2
    c = a * 2     e = c + 1 | f = c - 1 | e = c + 1 (duplicate)
    e = c + 1     print(e + 1) -> 4 (x3, duplicates)
    f = c - 1     print(f) -> 1
    d = b + 2     print(d) -> 4 | g = d - 4 | print(d) (duplicate)
    x = 1 / 0     print(b + 2) -> 4            (only reached under code_errors="keep")

Gold is "4". The traces in each test are worked out by hand from docs/search.md; the code must match them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pytest

from rstar.config import SearchConfig
from rstar.models.fakes import FunctionPolicy, FunctionRewardModel, InProcessExecutor, RawCompletion, split_prompt
from rstar.search import synthesize
from rstar.search.driver import SynthesisResult
from rstar.search.tree import Tree
from rstar.types import Problem

SCRIPT: dict[str, list[str]] = {
    "": ["# Step 1\na = 1\n<end_of_step>", "# Step 1\nb = 2\n<end_of_step>", "# Step 1\na = 1\n<end_of_step>"],
    "a = 1": ["print(a + 3)\n<end_of_code>", "c = a * 2\n<end_of_step>", "print(a + 5)\n<end_of_code>"],
    "b = 2": ["x = 1 / 0\n<end_of_step>", "print(b)\n<end_of_code>", "d = b + 2\n<end_of_step>"],
    "c = a * 2": ["e = c + 1\n<end_of_step>", "f = c - 1\n<end_of_step>", "e = c + 1\n<end_of_step>"],
    "e = c + 1": ["print(e + 1)\n<end_of_code>"] * 3,
    "f = c - 1": ["print(f)\n<end_of_code>"],
    "d = b + 2": ["print(d)\n<end_of_code>", "g = d - 4\n<end_of_step>", "print(d)\n<end_of_code>"],
    "x = 1 / 0": ["print(b + 2)\n<end_of_code>"],
}

# PPM values by the newest code line of the prefix (answers included, though only "eval" uses theirs).
PPM: dict[str, float] = {
    "a = 1": -0.5,
    "b = 2": 0.6,
    "c = a * 2": 0.2,
    "d = b + 2": 0.3,
    "e = c + 1": 0.1,
    "f = c - 1": 0.4,
    "g = d - 4": -0.3,
    "print(a + 3)": 0.8,
    "print(b)": -0.7,
    "print(d)": 0.5,
    "print(e + 1)": 0.6,
    "print(f)": -0.2,
}


def last_code_line(prompt: str) -> str:
    _, steps = split_prompt(prompt)
    lines = [
        ln.strip()
        for ln in steps.split("<output>")[0].splitlines()
        if ln.strip() and not ln.startswith(("#", "<")) and not ln.strip().startswith("<")
    ]
    return lines[-1] if lines else ""


def script_fn(prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
    items = SCRIPT[last_code_line(prompt)]
    return [items[i % len(items)] for i in range(n)]


def ppm_fn(prefix: str) -> float:
    # The newest step's last code line, before any system-written output block.
    return PPM[last_code_line(prefix)]


PROBLEM = Problem(id="golden", question="A scripted question.", answer="4")


def run(config: SearchConfig, problem: Problem = PROBLEM, ppm: bool = False) -> tuple[SynthesisResult, Tree]:
    rm = FunctionRewardModel(ppm_fn) if ppm else None
    result = synthesize(
        [problem], FunctionPolicy(script_fn), InProcessExecutor(), config, reward_model=rm, grader=lambda g, p: g == p
    )
    assert result.results[0].error is None, result.results[0].error
    return result, result.results[0].tree


def table(tree: Tree) -> dict[str, tuple[int, float | None, int]]:
    """{node id: (visits, Q rounded, creation order)}."""
    return {n.node_id: (n.visits, None if n.q is None else round(n.q, 6), n.expansion_order) for n in tree.nodes}


def expanded(tree: Tree) -> list[str]:
    return [tree.nodes[i].node_id for i in tree.expansions]


def test_terminal_mode_golden_tree() -> None:
    cfg = SearchConfig(mode="terminal", rollouts=4, candidates=3, c_uct=2.0, seed=0)
    result, tree = run(cfg)
    # R1: expand root; descend into 0.0 (unvisited first), expand: answer 4 (+1, backed up) ends R1.
    # R2: 0.1 is unvisited -> expand: answer 2 (-1). R3: UCT at root (N=2): 0.0 = 1 + 2*sqrt(ln2) = 2.665 beats
    # 0.1 = 0.665; expand 0.0.1, continue into 0.0.1.0, expand: answer 4 (+1); 0.0.1.0 is exhausted.
    # R4: root (N=3): 0.0 = 1 + 2*sqrt(ln3/2) = 2.482 > 0.1 = 1.096; 0.0.1 -> 0.0.1.1, expand: answer 1 (-1).
    assert expanded(tree) == ["0", "0.0", "0.1", "0.0.1", "0.0.1.0", "0.0.1.1"]
    assert table(tree) == {
        "0": (4, 0.0, 0),
        "0.0": (3, round(1 / 3, 6), 1),
        "0.1": (1, -1.0, 2),
        "0.0.0": (1, 1.0, 3),
        "0.0.1": (2, 0.0, 4),
        "0.1.0": (1, -1.0, 5),
        "0.1.1": (0, None, 6),
        "0.0.1.0": (1, 1.0, 7),
        "0.0.1.1": (1, -1.0, 8),
        "0.0.1.0.0": (1, 1.0, 9),
        "0.0.1.1.0": (1, -1.0, 10),
    }
    nodes = tree.by_id()
    answers = {nid: (n.answer, n.correct, n.reward) for nid, n in nodes.items() if n.terminal_reason == "answer"}
    assert answers == {
        "0.0.0": ("4", True, 1.0),
        "0.1.0": ("2", False, -1.0),
        "0.0.1.0.0": ("4", True, 1.0),
        "0.0.1.1.0": ("1", False, -1.0),
    }
    # Exhaustion: 0.0's subtree is fully explored, 0.1 still has 0.1.1 to offer.
    assert nodes["0.0"].exhausted and not nodes["0.1"].exhausted and not nodes["0"].exhausted
    row = result.problems.row(0, named=True)
    assert (row["rollouts"], row["terminals"], row["correct_rollouts"], row["solved"], row["nodes"]) == (
        4,
        4,
        2,
        True,
        11,
    )
    # The final code step's text carries the system-written output block: the trajectory text is the SFT target.
    assert nodes["0.0.0"].step_text == (
        "print(a + 3)\n<end_of_code>\n<output>\n4\n<end_of_output>\n<answer>\nThe answer is \\boxed{4}\n"
        "<end_of_answer>\n"
    )
    assert nodes["0.0.0"].output == "4\n" and nodes["0.0.0"].exec_ok is True
    assert nodes["0"].step_text == "" and nodes["0"].exec_ok is None


def test_code_error_duplicate_and_extra_answer_candidates_are_dropped() -> None:
    cfg = SearchConfig(mode="terminal", rollouts=4, candidates=3)
    result, tree = run(cfg)
    texts = [n.step_text for n in tree.nodes]
    assert not any("1 / 0" in t for t in texts)  # code error dropped
    assert not any("print(a + 5)" in t for t in texts)  # second answer candidate of 0.0 dropped
    assert sum("a = 1" in t for t in texts) == 1  # duplicate of the first root candidate dropped
    c = result.stats.counters
    assert (c.code_errors, c.extra_answers) == (1, 1)
    # duplicates: root 1, under c = a*2 1, under e = c+1 2, under f = c-1 2 (its script has one line) -> 6
    assert c.duplicates == 6
    # Every node's accumulated program ran; the root's children have one-line programs.
    assert all(n.exec_ok for n in tree.nodes[1:])


def test_back_propagation_of_plus_and_minus_one() -> None:
    _, tree = run(SearchConfig(rollouts=2, candidates=3))
    # After R1 (+1 through 0.0.0 -> 0.0 -> root) and R2 (-1 through 0.1.0 -> 0.1 -> root):
    n = tree.by_id()
    assert (n["0"].visits, n["0"].value_sum) == (2, 0.0)
    assert (n["0.0"].visits, n["0.0"].value_sum) == (1, 1.0)
    assert (n["0.1"].visits, n["0.1"].value_sum) == (1, -1.0)
    # Siblings off the path are untouched.
    assert (n["0.0.1"].visits, n["0.0.1"].value_sum) == (0, 0.0)
    assert (n["0.1.1"].visits, n["0.1.1"].value_sum) == (0, 0.0)
    # Visits of a node = visits that went through it: the root saw both rollouts.
    assert n["0"].visits == n["0.0"].visits + n["0.1"].visits


def test_unvisited_zero_option_reproduces_the_reference_choice() -> None:
    _, tree = run(SearchConfig(rollouts=2, candidates=3, unvisited="zero"))
    # R2 at the root (N=1, ln 1 = 0): 0.0 scores Q = 1 > 0 for the unvisited 0.1, so it goes deeper into 0.0 instead.
    assert expanded(tree) == ["0", "0.0", "0.0.1", "0.0.1.0"]
    assert tree.by_id()["0.1"].visits == 0


def test_ppm_mode_golden_tree() -> None:
    cfg = SearchConfig(mode="ppm", rollouts=3, candidates=3, c_uct=2.0)
    result, tree = run(cfg, ppm=True)
    # R1: root -> 0.0 (PPM -0.5, one visit), 0.1 (0.6). The root has no visit yet: select by Q -> 0.1, expand:
    #     answer 2 (-1, backed up: 0.1 = (2, -0.4), root (1, -1)) and 0.1.1 (0.3).
    # R2: root N=1 -> Q only: 0.1 (-0.2) > 0.0 (-0.5); 0.1.1 -> expand: answer 4 (+1), 0.1.1.1 (-0.3).
    # R3: root N=2: 0.0 = -0.5 + 2*sqrt(ln 2) = 1.1651 beats 0.1 = 0.2 + 2*sqrt(ln 2 / 3) = 1.1613; expand 0.0: +1.
    assert -0.5 + 2 * math.sqrt(math.log(2)) > 0.2 + 2 * math.sqrt(math.log(2) / 3)
    assert expanded(tree) == ["0", "0.1", "0.1.1", "0.0"]
    assert table(tree) == {
        "0": (3, round(1 / 3, 6), 0),
        "0.0": (2, 0.25, 1),
        "0.1": (3, 0.2, 2),
        "0.1.0": (1, -1.0, 3),
        "0.1.1": (2, 0.65, 4),
        "0.1.1.0": (1, 1.0, 5),
        "0.1.1.1": (1, -0.3, 6),
        "0.0.0": (1, 1.0, 7),
        "0.0.1": (1, 0.2, 8),
    }
    n = tree.by_id()
    assert n["0"].ppm_score is None
    assert {k: n[k].ppm_score for k in ("0.0", "0.1", "0.1.1", "0.1.0")} == {
        "0.0": -0.5,
        "0.1": 0.6,
        "0.1.1": 0.3,
        "0.1.0": -0.7,  # answers are scored too (recorded), but their value comes from the gold answer
    }
    assert n["0.1.0"].reward == -1.0 and n["0.0.0"].reward == 1.0
    assert result.problems["ppm_id"][0] == "fake:function-ppm"
    assert result.nodes["ppm_id"].unique().to_list() == ["fake:function-ppm"]


def test_eval_mode_golden_tree_scores_terminals_with_the_ppm() -> None:
    cfg = SearchConfig(mode="eval", rollouts=3, candidates=3, c_uct=2.0)
    problem = Problem(id="golden-eval", question="A scripted question.", answer="")
    result, tree = run(cfg, problem=problem, ppm=True)
    # R1: root -> 0.1 (Q 0.6 > -0.5), answer 2 scored -0.7 by the PPM and backed up; R2: 0.1 (Q -0.05) -> 0.1.1,
    # answer 4 scored 0.5; R3: root N=2: 0.0 = 1.1651 > 0.1 = 0.4/3 + 2*sqrt(ln 2 / 3) = 1.0946 -> answer 4, 0.8.
    assert expanded(tree) == ["0", "0.1", "0.1.1", "0.0"]
    assert table(tree) == {
        "0": (3, 0.2, 0),
        "0.0": (2, 0.15, 1),
        "0.1": (3, round(0.4 / 3, 6), 2),
        "0.1.0": (1, -0.7, 3),
        "0.1.1": (2, 0.4, 4),
        "0.1.1.0": (1, 0.5, 5),
        "0.1.1.1": (1, -0.3, 6),
        "0.0.0": (1, 0.8, 7),
        "0.0.1": (1, 0.2, 8),
    }
    n = tree.by_id()
    assert [n[k].reward for k in ("0.1.0", "0.1.1.0", "0.0.0")] == [-0.7, 0.5, 0.8]
    assert all(node.correct is None for node in tree.nodes)  # no gold: nothing graded
    assert result.problems["solved"][0] is False


def test_eval_mode_with_gold_grades_but_does_not_use_gold_for_values() -> None:
    _, tree = run(SearchConfig(mode="eval", rollouts=3, candidates=3), ppm=True)
    n = tree.by_id()
    assert (n["0.1.0"].correct, n["0.1.0"].reward) == (False, -0.7)
    assert (n["0.0.0"].correct, n["0.0.0"].reward) == (True, 0.8)


def test_keep_code_errors_as_terminal_minus_one_not_backed_up() -> None:
    cfg = SearchConfig(rollouts=2, candidates=3, code_errors="keep", error_threshold=1)
    result, tree = run(cfg)
    n = tree.by_id()
    err = n["0.1.0"]
    assert (err.is_terminal, err.terminal_reason, err.exec_ok) == (True, "code_error", False)
    assert (err.visits, err.value_sum, err.reward) == (1, -1.0, -1.0)
    assert "ZeroDivisionError" in err.output
    # Not backed up: 0.1 holds only the -1 of its answer child (now 0.1.1), no extra visit.
    assert (n["0.1"].visits, n["0.1"].value_sum) == (1, -1.0)
    assert n["0.1.1"].answer == "2"
    assert result.stats.counters.code_errors == 1


def test_keep_code_errors_below_the_threshold_continues_without_the_failing_code() -> None:
    # R1, R2 as in the terminal golden tree (R2 also keeps the failing 0.1.0); R3, R4 explore 0.0 until it is
    # exhausted; R5 must then go to 0.1 and into its unvisited, non-terminal error node 0.1.0.
    cfg = SearchConfig(rollouts=5, candidates=3, code_errors="keep", error_threshold=2)
    ex = InProcessExecutor()
    seen: list[str] = []
    inner = ex.run_batch

    def spy(codes: Sequence[str]) -> list:
        seen.extend(codes)
        return inner(codes)

    ex.run_batch = spy  # type: ignore[method-assign]
    result = synthesize([PROBLEM], FunctionPolicy(script_fn), ex, cfg, grader=lambda g, p: g == p)
    tree = result.results[0].tree
    n = tree.by_id()
    err = n["0.1.0"]
    assert (err.is_terminal, err.exec_ok, err.consecutive_errors) == (False, False, 1)
    # Its child's program leaves the failing step out, so the trajectory recovers.
    assert n["0.1.0.0"].answer == "4" and n["0.1.0.0"].correct is True
    assert any(c.endswith("print(b + 2)\n") and "1 / 0" not in c for c in seen)


def test_max_depth_ends_trajectories_and_an_exhausted_root_ends_the_search() -> None:
    cfg = SearchConfig(rollouts=10, candidates=3, max_depth=2)
    result, tree = run(cfg)
    n = tree.by_id()
    assert (n["0.0.1"].terminal_reason, n["0.0.1"].reward, n["0.0.1"].visits) == ("max_depth", -1.0, 1)
    assert n["0.1.1"].terminal_reason == "max_depth"
    assert all(node.depth <= 2 for node in tree.nodes)
    # Both root children were fully explored after two rollouts: the search stops early instead of spinning.
    assert n["0"].exhausted
    assert result.problems["rollouts"][0] == 2
    assert (n["0"].visits, n["0"].value_sum) == (2, 0.0)  # max-depth terminals are not backed up


def _policy(table_: Mapping[str, Sequence[RawCompletion]]) -> FunctionPolicy:
    def fn(prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        items = table_[last_code_line(prompt)]
        return [items[i % len(items)] for i in range(n)]

    return FunctionPolicy(fn)


def test_unparsable_candidates_dropped_or_kept() -> None:
    table_: dict[str, list[RawCompletion]] = {
        "": [{"text": "# Step 1: I am still thinking about", "finish_reason": "length"}, "a = 4\n<end_of_step>"],
        "a = 4": ["print(a)\n<end_of_code>"],
    }
    res = synthesize([PROBLEM], _policy(table_), InProcessExecutor(), SearchConfig(rollouts=1, candidates=2))
    tree = res.results[0].tree
    assert [n.node_id for n in tree.nodes] == ["0", "0.0", "0.0.0"]
    assert res.stats.counters.unparsable == 1
    cfg = SearchConfig(rollouts=1, candidates=2, unparsable="keep")
    res = synthesize([PROBLEM], _policy(table_), InProcessExecutor(), cfg)
    n = res.results[0].tree.by_id()
    assert (n["0.0"].terminal_reason, n["0.0"].reward, n["0.0"].exec_ok) == ("unparsable", -1.0, None)
    assert n["0.1"].step_text == "a = 4\n<end_of_step>\n"


def test_final_code_that_prints_nothing_is_not_an_answer() -> None:
    table_ = {"": ["x = 4\n<end_of_code>", "y = 4\n<end_of_step>"], "y = 4": ["print(y)\n<end_of_code>"]}
    res = synthesize([PROBLEM], _policy(table_), InProcessExecutor(), SearchConfig(rollouts=1, candidates=2))
    tree = res.results[0].tree
    assert [n.step_text.splitlines()[0] for n in tree.nodes[1:]] == ["y = 4", "print(y)"]
    assert res.results[0].solved


def test_a_node_whose_candidates_all_fail_becomes_a_dead_end() -> None:
    table_ = {"": ["a = 1\n<end_of_step>"], "a = 1": ["b = a / 0\n<end_of_step>", "c = undefined\n<end_of_step>"]}
    res = synthesize([PROBLEM], _policy(table_), InProcessExecutor(), SearchConfig(rollouts=3, candidates=2))
    n = res.results[0].tree.by_id()
    assert (n["0.0"].is_terminal, n["0.0"].terminal_reason, n["0.0"].reward) == (True, "code_error", -1.0)
    assert n["0"].exhausted and res.problems["rollouts"][0] == 1
    assert res.problems["error"][0] is None


@pytest.mark.parametrize(
    "text",
    [
        "The answer is \\boxed{4}\n<end_of_answer>",  # prose: not run as code
        "<answer>\nThe answer is \\boxed{4}\n<end_of_answer>",
        "# so the answer is \\boxed{4}\nz = 4\n<end_of_answer>",  # code with it: runs
    ],
)
def test_answer_step_with_boxed_answer_is_terminal(text: str) -> None:
    table_ = {"": [text, "a = 1\n<end_of_step>"]}
    res = synthesize([PROBLEM], _policy(table_), InProcessExecutor(), SearchConfig(rollouts=1, candidates=2))
    n = res.results[0].tree.by_id()
    assert (n["0.0"].terminal_reason, n["0.0"].answer, n["0.0"].correct) == ("answer", "4", True)
    assert n["0.0"].exec_ok is True and n["0.1"].step_text == "a = 1\n<end_of_step>\n"


def test_extra_rollouts_only_for_unsolved_problems() -> None:
    cfg = SearchConfig(rollouts=1, candidates=3, extra_rollouts_if_unsolved=2)
    unsolved = Problem(id="hard", question="A scripted question.", answer="99")
    res, _ = run(cfg, problem=unsolved)
    assert res.problems["rollouts"][0] == 3
    res, _ = run(cfg)  # R1 already finds 4
    assert res.problems["rollouts"][0] == 1


def test_rollouts_for_overrides_the_budget_per_problem() -> None:
    other = Problem(id="other", question="A scripted question.", answer="4")
    res = synthesize(
        [PROBLEM, other],
        FunctionPolicy(script_fn),
        InProcessExecutor(),
        SearchConfig(rollouts=1, candidates=3),
        rollouts_for={"other": 3},
    )
    got = dict(zip(res.problems["problem_id"].to_list(), res.problems["rollouts"].to_list(), strict=True))
    assert got == {"golden": 1, "other": 3}
