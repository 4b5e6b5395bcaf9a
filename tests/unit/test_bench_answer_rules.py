"""bench/answer_rules.py: the product's answer rules re-applied to stored trees, golden numbers on hand-made rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bench import load_bench

ar = load_bench("answer_rules")


def _row(mode: str, pid: str, answers: list[Any], grades: list[bool], scores: list[Any] | None = None,
         correct: bool | None = None, budget: int = 3) -> dict[str, Any]:  # fmt: skip
    return {  # the fields of an `rstar eval` results row that the script reads, and those a ProblemResult needs
        "benchmark": "world",
        "problem": f"question {pid}",
        "gold": "?",
        "prediction": None,
        "mode": mode,
        "budget": budget,
        "problem_id": pid,
        "answers": answers,
        "scores": scores if scores is not None else [None] * len(answers),
        "sample_correct": grades,
        "n_correct": sum(grades),
        "correct": bool(correct),
        "error": None,
    }


# Three PPM-guided trees and the plain trees of the same problems.
# a: right "5" is frequent but the PPM scores a wrong "6" highest: paper wrong, weighted vote right, plain right.
# b: the right "9" appears once with a high score, wrong "2" twice with low scores: paper and weighted right,
#    the guided tree's plain vote wrong; plain MCTS found only wrong answers.
# c: nothing right anywhere.
GUIDED = [
    _row("mcts", "a", ["5", "5", "6"], [True, True, False], [0.3, 0.2, 0.9], correct=False),
    _row("mcts", "b", ["2", "9", "2"], [False, True, False], [-0.8, 0.7, -0.9], correct=True),
    _row("mcts", "c", ["1", "4"], [False, False], [0.1, 0.2], correct=False),
    _row("mcts-topk", "a", ["5", "5", "6"], [True, True, False], [0.3, 0.2, 0.9], correct=False),
    _row("mcts-topk", "b", ["2", "9", "2"], [False, True, False], [-0.8, 0.7, -0.9], correct=True),
    _row("mcts-topk", "c", ["1", "4"], [False, False], [0.1, 0.2], correct=False),
]
PLAIN = [
    _row("mcts-plain", "a", ["5", "6", "5"], [True, False, True], correct=True),
    _row("mcts-plain", "b", ["2", "2", "3"], [False, False, False], correct=False),
    _row("mcts-plain", "c", ["1"], [False], correct=False),
]


def test_sign_test_exact_values() -> None:
    assert ar.sign_test(0, 0) == 1.0
    assert ar.sign_test(3, 3) == 1.0
    assert ar.sign_test(5, 0) == pytest.approx(2 / 32)
    assert ar.sign_test(1, 10) == pytest.approx(2 * 12 / 2048)
    assert ar.sign_test(2, 6) == ar.sign_test(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 256)


def test_every_rule_on_hand_made_trees() -> None:
    (res,) = ar.compare("toy", GUIDED, PLAIN, top_k=2)
    assert (res["budget"], res["problems"]) == (3, 3)
    assert res["plain"] == pytest.approx(1 / 3)  # a only
    assert res["covered_guided"] == pytest.approx(2 / 3) and res["covered_plain"] == pytest.approx(1 / 3)
    rules = res["rules"]
    # paper: a wrong (the 0.9 "6"), b right -> 1/3, one win (b) and one loss (a)
    assert (rules["mcts"]["accuracy"], rules["mcts"]["only_rule"], rules["mcts"]["only_plain"]) == (1 / 3, 1, 1)
    # top-2 of a: "6" (0.9), "5" (0.3): tie, to the higher-ranked "6" -> wrong; b: "9", "2": "9" -> right
    assert (rules["mcts-topk"]["accuracy"], rules["mcts-topk"]["only_rule"]) == (1 / 3, 1)
    # weighted: a "5" 0.65 + 0.6 = 1.25 > "6" 0.95; b "9" 0.85 > "2" 0.1 + 0.05 -> both right
    assert (rules["mcts-wmaj"]["accuracy"], rules["mcts-wmaj"]["only_rule"], rules["mcts-wmaj"]["only_plain"]) == (
        2 / 3,
        1,
        0,
    )
    assert rules["mcts-wmaj"]["sign_p"] == 1.0
    # the guided tree's plain vote: a "5" right, b "2" wrong
    assert rules["mcts-vote"]["accuracy"] == pytest.approx(1 / 3)
    # pairs: a (5 > 6? 0.3 < 0.9 and 0.2 < 0.9: 0 of 2), b (9 above both 2s: 2 of 2) -> 0.5
    assert res["ranking"] == pytest.approx(0.5)


def test_a_file_whose_answers_these_rules_do_not_give_is_refused() -> None:
    bad = [dict(r) for r in GUIDED]
    bad[0] = {**bad[0], "correct": True}  # the paper's rule picks "6" there, which is wrong
    with pytest.raises(SystemExit, match="mcts on a recomputes as False"):
        ar.compare("toy", bad, PLAIN, top_k=2)
    with pytest.raises(SystemExit, match="cover different problems"):
        ar.compare("toy", GUIDED, PLAIN[:2], top_k=2)
    with pytest.raises(SystemExit, match="no mcts-plain rows at budget 3"):
        ar.compare("toy", GUIDED, [{**r, "budget": 8} for r in PLAIN], top_k=2)
    with pytest.raises(SystemExit, match="no PPM-guided"):
        ar.compare("toy", PLAIN, PLAIN, top_k=2)


def test_parse_compare() -> None:
    assert ar.parse_compare("x=g.jsonl") == ("x", Path("g.jsonl"), [Path("g.jsonl")])
    assert ar.parse_compare("x=g.jsonl,p1,p2") == ("x", Path("g.jsonl"), [Path("p1"), Path("p2")])
    for bad in ("g.jsonl", "=g.jsonl", "x="):
        with pytest.raises(argparse.ArgumentTypeError):
            ar.parse_compare(bad)


def test_main_writes_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guided, plain = tmp_path / "g.results.jsonl", tmp_path / "p.results.jsonl"
    guided.write_text("".join(json.dumps(r) + "\n" for r in GUIDED))
    plain.write_text("".join(json.dumps(r) + "\n" for r in PLAIN))
    out = tmp_path / "rules.json"
    assert ar.main(["--compare", f"toy={guided},{plain}", "--top-k", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| toy (@3) | 3 | 0.50 | 33.3 (33.3) | 66.7 |" in printed
    data = json.loads(out.read_text())
    assert data["comparisons"][0]["rules"]["mcts-wmaj"]["accuracy"] == pytest.approx(2 / 3)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        ar.main(["--compare", f"toy={tmp_path / 'missing.jsonl'}"])
