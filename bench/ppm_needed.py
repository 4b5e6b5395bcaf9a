"""How well must a PPM rank a policy's answers before its pick beats a majority vote? Simulated judges, real trees.

    .venv/bin/python bench/ppm_needed.py \
        --results bench/results/mcts3-wide-seed0-final256.results.jsonl \
        --results bench/results/mcts8-wide-seed0-final256.results.jsonl \
        --json bench/results/ppm-needed-wide-seed0.json          # seconds; the PNG goes beside the JSON

Takes the trees an `rstar eval` run left in its results file (`results.parquet` or `results.jsonl`; by default the
`mcts-plain` rows: the answers a search without PPM reached and whether each is right) and replaces the PPM by a
simulated judge of known quality: each answer gets the score `mu * correct + N(0, 1)`, with `mu` set so that a correct
answer outscores a wrong one of the same tree with probability `a` (the pairwise ranking accuracy that
`rstar.eval.metrics.ranking_accuracy` measures for a real PPM: `a = Phi(mu / sqrt(2))`). For each `a` it draws many
judges and applies the product's own answer rules (`rstar.eval.metrics`) to the same trees: the paper's (the highest
score), the reference implementation's (majority of the top-k by score) and the plain vote (no judge at all). It
prints the expected accuracy of each rule against `a` (with the 5-95 % range over draws), the smallest `a` at which a
rule's expected accuracy exceeds the vote's, and, when the file also holds the PPM-guided rows (`--measured`, default
`mcts`), the real PPM's measured ranking and accuracy for comparison.

What it answers: whether a PPM that loses to the vote loses because it ranks too poorly for the number of answers a
tree holds (the more answers, the likelier a noisy judge scores some wrong one highest, while the vote gets better),
and how good a PPM would have to be at a given budget. What it assumes: the judge's errors are independent from one
answer to the next (a real PPM's may be correlated, e.g. by the answer's wording), and the trees are those of the
search without PPM, which at equal budget hold as many correct answers as the PPM-guided ones where this was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANKINGS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class Tree:
    """One problem's answers (by equivalence key; None: the trajectory has no answer) and whether each is right."""

    keys: tuple[str | None, ...]
    correct: tuple[bool, ...]


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The per-problem rows of an evaluation's results file (`results.parquet`, schema-checked, or `results.jsonl`)."""
    if path.suffix == ".parquet":
        from rstar.eval.report import read_results

        return read_results(path).to_dicts()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trees_of(rows: Sequence[dict[str, Any]], mode: str) -> list[Tree]:
    """The trees of `mode`'s rows, answers reduced to the grader's equivalence key (what the vote groups by)."""
    out = []
    for r in rows:
        if r["mode"] != mode:
            continue
        answers, correct = list(r["answers"] or []), list(r["sample_correct"] or [])
        if len(answers) != len(correct):
            raise ValueError(f"problem {r['problem_id']}: {len(answers)} answers but {len(correct)} grades")
        out.append(make_tree(answers, correct))
    return out


def make_tree(answers: Sequence[Any], correct: Sequence[Any]) -> Tree:
    """A tree from its answers (reduced to the grader's equivalence key; blank: None) and their grades."""
    from rstar.verify.answer import answer_key

    keys = tuple(None if a is None or not str(a).strip() else answer_key(str(a)) for a in answers)
    return Tree(keys, tuple(bool(c) for c in correct))


def judge_mean(ranking: float) -> float:
    """The score gap `mu` between a correct and a wrong answer (unit noise) that ranks a pair right with P=ranking."""
    if not 0.5 <= ranking <= 1.0:
        raise ValueError(f"a ranking accuracy is between 0.5 (chance) and 1.0 (perfect), got {ranking}")
    return math.inf if ranking >= 1.0 else math.sqrt(2.0) * NormalDist().inv_cdf(ranking)


def _identity(key: str) -> str:
    return key


def vote_accuracy(trees: Sequence[Tree]) -> float:
    """Share of trees whose majority answer (ties to the first, as plain MCTS answers) is right."""
    from rstar.eval.metrics import majority_vote

    right = 0
    for t in trees:
        v = majority_vote(list(t.keys), key=_identity)
        right += v.first_index is not None and t.correct[v.first_index]
    return right / len(trees) if trees else 0.0


def simulate(
    trees: Sequence[Tree], ranking: float, draws: int, top_k: int, rng: random.Random
) -> dict[str, list[float]]:
    """Accuracy of the highest-score and the top-k rule under `draws` simulated judges of the given ranking accuracy."""
    from rstar.eval.metrics import best_by_score, top_k_majority

    mu = judge_mean(ranking)
    out: dict[str, list[float]] = {"best": [], "topk": []}
    for _ in range(draws):
        best = topk = 0
        for t in trees:
            # a perfect judge: every correct answer above every wrong one, the order among equals random
            scores: list[float | None] = [
                None if k is None else (mu if math.isfinite(mu) else 1e6) * c + rng.gauss(0.0, 1.0)
                for k, c in zip(t.keys, t.correct, strict=True)
            ]
            i = best_by_score(t.keys, scores)
            best += i is not None and t.correct[i]
            j = top_k_majority(t.keys, scores, top_k, key=_identity).first_index
            topk += j is not None and t.correct[j]
        n = max(1, len(trees))
        out["best"].append(best / n)
        out["topk"].append(topk / n)
    return out


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def measured(rows: Sequence[dict[str, Any]], mode: str, topk_mode: str) -> dict[str, Any] | None:
    """The real PPM's ranking and accuracy from the PPM-guided rows of the same file, if it has them."""
    from rstar.eval.metrics import ProblemResult, ranking_accuracy

    fields = set(ProblemResult.__dataclass_fields__)
    picked = [ProblemResult(**{k: v for k, v in r.items() if k in fields}) for r in rows if r["mode"] == mode]
    if not picked:
        return None
    top = [r for r in rows if r["mode"] == topk_mode]
    return {
        "mode": mode,
        "ranking": ranking_accuracy(picked),
        "best": sum(bool(r.correct) for r in picked) / len(picked),
        "topk": sum(bool(r["correct"]) for r in top) / len(top) if top else None,
        "covered": sum(r.n_correct > 0 for r in picked) / len(picked),
    }


def analyse(path: Path, mode: str, measured_mode: str, draws: int, top_k: int, seed: int) -> list[dict[str, Any]]:
    """Everything the table and the plot show for one results file, one analysis per budget it holds rows of `mode`
    for (trees of different sizes answer different questions); SystemExit when it holds none."""
    rows = load_rows(path)
    budgets = sorted({int(r["budget"]) for r in rows if r["mode"] == mode})
    if not budgets:
        raise SystemExit(f"{path}: no rows of mode {mode!r} (modes there: {sorted({r['mode'] for r in rows})})")
    return [
        analyse_budget(path, [r for r in rows if int(r["budget"]) == b], mode, measured_mode, draws, top_k, seed)
        for b in budgets
    ]


def judge_curve(trees: Sequence[Tree], draws: int, top_k: int, seed: int) -> list[dict[str, float]]:
    """Per simulated ranking accuracy: each rule's mean accuracy over `draws` judges and its 5-95 % range."""
    rng = random.Random(seed)
    curve = []
    for a in RANKINGS:
        sim = simulate(trees, a, draws, top_k, rng)
        curve.append(
            {
                "ranking": a,
                **{f"{rule}_mean": statistics.fmean(xs) for rule, xs in sim.items()},
                **{f"{rule}_p05": _pct(xs, 0.05) for rule, xs in sim.items()},
                **{f"{rule}_p95": _pct(xs, 0.95) for rule, xs in sim.items()},
            }
        )
    return curve


def needed(curve: Sequence[dict[str, float]], vote: float) -> dict[str, float | None]:
    """Per rule, the smallest simulated ranking at which its mean accuracy beats the vote (None: never)."""
    return {
        rule: next((c["ranking"] for c in curve if c[f"{rule}_mean"] > vote + 1e-9), None) for rule in ("best", "topk")
    }


def analyse_budget(
    path: Path, rows: Sequence[dict[str, Any]], mode: str, measured_mode: str, draws: int, top_k: int, seed: int
) -> dict[str, Any]:
    """The analysis of one budget's rows of a results file (rows of `mode` among them)."""
    from bench.ppm_crosseval import shown

    trees = trees_of(rows, mode)
    vote = vote_accuracy(trees)
    curve = judge_curve(trees, draws, top_k, seed)

    budgets = sorted({int(r["budget"]) for r in rows if r["mode"] == mode})
    return {
        "results": shown(path),  # repository-relative, as every bench result JSON records paths
        "mode": mode,
        "budgets": budgets,
        "problems": len(trees),
        "answers_per_tree": statistics.fmean(sum(k is not None for k in t.keys) for t in trees),
        "covered": sum(any(t.correct) for t in trees) / len(trees),
        "mixed": sum(any(t.correct) and not all(t.correct) for t in trees),
        "vote": vote,
        "curve": curve,
        "needed": needed(curve, vote),
        "measured": measured(rows, measured_mode, f"{measured_mode}-topk"),
    }


def table(res: dict[str, Any], top_k: int) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    head = (
        f"{res['results']}: {res['problems']} trees of {res['mode']}@{','.join(map(str, res['budgets']))}, "
        f"{res['answers_per_tree']:.1f} answers per tree, {pct(res['covered'])} % hold a correct answer, "
        f"{res['mixed']} a correct and a wrong one; the vote: {pct(res['vote'])} %"
    )
    lines = [
        head,
        "",
        f"| judge ranks correct above wrong | highest score % (5-95 %) | top-{top_k} vote % (5-95 %) | vote % |",
        "|---|---|---|---|",
    ]
    for c in res["curve"]:
        lines.append(
            f"| {c['ranking']:.2f} | {pct(c['best_mean'])} ({pct(c['best_p05'])}-{pct(c['best_p95'])}) "
            f"| {pct(c['topk_mean'])} ({pct(c['topk_p05'])}-{pct(c['topk_p95'])}) | {pct(res['vote'])} |"
        )
    m = res["measured"]
    if m is not None:
        lines.append(
            f"| measured PPM ({m['mode']} rows): {m['ranking']:.2f} | {pct(m['best'])} | {pct(m['topk'])} | "
            f"(its own trees: {pct(m['covered'])} % covered) |"
        )
    need = res["needed"]
    fmt = lambda a: "never, up to a perfect judge" if a is None else f"{a:.2f}"  # noqa: E731
    lines += [
        "",
        f"beats the vote from a ranking of: highest score {fmt(need['best'])}, top-{top_k} {fmt(need['topk'])}",
    ]
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], top_k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False, sharey=True)
    for ax, res in zip(axes[0], results, strict=True):
        xs = [c["ranking"] for c in res["curve"]]
        for rule, label, colour in (("best", "highest score (paper)", "C0"), ("topk", f"top-{top_k} vote", "C2")):
            ax.plot(xs, [100 * c[f"{rule}_mean"] for c in res["curve"]], "-o", ms=3, color=colour, label=label)
            ax.fill_between(
                xs,
                [100 * c[f"{rule}_p05"] for c in res["curve"]],
                [100 * c[f"{rule}_p95"] for c in res["curve"]],
                color=colour,
                alpha=0.15,
            )
        ax.axhline(100 * res["vote"], color="C3", ls="--", label="majority vote (no PPM)")
        ax.axhline(100 * res["covered"], color="grey", ls=":", label="trees holding a correct answer")
        m = res["measured"]
        if m is not None:  # the top-k star larger and beneath, so that equal accuracies show both
            if m["topk"] is not None:
                ax.plot([m["ranking"]], [100 * m["topk"]], "*", ms=16, color="C2", label=f"measured PPM, top-{top_k}")
            ax.plot([m["ranking"]], [100 * m["best"]], "*", ms=9, color="C0", label="measured PPM, highest score")
        budgets = ",".join(map(str, res["budgets"]))
        title = f"{res['mode']}@{budgets}: {res['problems']} trees, {res['answers_per_tree']:.1f} answers each"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("judge ranks a correct answer above a wrong one (P)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy %")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("How good must a PPM be to beat the vote? Simulated judges on the search's own trees", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, action="append", required=True, help="an rstar eval results file; repeat")
    ap.add_argument("--mode", default="mcts-plain", help="the rows whose trees are judged (default mcts-plain)")
    ap.add_argument("--measured", default="mcts", help="the real PPM's rows in the same file, for comparison")
    ap.add_argument("--draws", type=int, default=400, help="simulated judges per ranking accuracy")
    ap.add_argument("--top-k", type=int, default=4, help="k of the top-k vote (rstar eval's default: 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here (and the plot beside it, .png)")
    args = ap.parse_args(argv)
    if args.draws < 1 or args.top_k < 1:
        ap.error("--draws and --top-k must be at least 1")
    for p in args.results:
        if not p.exists():
            ap.error(f"no results file {p}")
    results = [
        res for p in args.results for res in analyse(p, args.mode, args.measured, args.draws, args.top_k, args.seed)
    ]
    for res in results:
        print(table(res, args.top_k), end="\n\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"draws": args.draws, "top_k": args.top_k, "seed": args.seed, "files": results}, indent=1)
        )
        plot(results, args.top_k, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
