"""Every PPM answer rule on the same PPM-guided trees, against plain MCTS: a re-reading of finished evaluations.

    R=bench/results
    .venv/bin/python bench/answer_rules.py \
        --compare final256=$R/mcts8-wide-seed0-final256.results.jsonl \
        --compare final512=$R/mcts8-wide-seed0-final512.results.jsonl,$R/mcts8-wide-seed0-final256.results.jsonl \
        --json /tmp/answer-rules.json          # seconds; the PNG goes beside the JSON

An `rstar eval` results file (`results.parquet` or `results.jsonl`) keeps, for every problem of a PPM-guided search
(`mcts` rows), each answer terminal's answer, PPM score and grade. So every answer rule of the product
(`rstar.eval.metrics`) can be applied to those trees after the fact, without searching again:

- `mcts` (the paper): the highest-PPM answer (`best_by_score`);
- `mcts-topk` (the reference code): majority of the top-k by PPM (`top_k_majority`);
- `mcts-wmaj`: PPM-weighted majority, each answer voting `(1 + score) / 2` (`weighted_majority`);
- `mcts-vote`: the plain majority of the PPM-guided tree's answers (the PPM only steered the search);

each against the plain search's majority vote (`mcts-plain` rows of the same file or of the files listed after it:
same problems, same budget). A comparison is `LABEL=GUIDED[,PLAIN...]`. Rules the files already hold as rows
(`mcts`, `mcts-topk`, `mcts-plain`) are recomputed and must reproduce the stored predictions' grades (a mismatch
stops the script: the file was not written by these rules). Per rule: accuracy, the problems only it / only plain
MCTS got right, and the two-sided exact sign test p over those discordant problems (how likely so lopsided a split
is if the rule and plain MCTS were equally good on these problems; it says nothing about another seed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = ("mcts", "mcts-topk", "mcts-wmaj", "mcts-vote")
LABELS = {
    "mcts": "highest PPM (paper)",
    "mcts-topk": "top-{k} vote (reference)",
    "mcts-wmaj": "PPM-weighted vote",
    "mcts-vote": "plain vote of the guided tree",
}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p of a `wins` : `losses` split of discordant problems under a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def pick(rule: str, answers: Sequence[str | None], scores: Sequence[float | None], top_k: int) -> int | None:
    """The index of the answer `rule` picks in one tree (None: no answer to pick)."""
    from rstar.eval.metrics import best_by_score, majority_vote, top_k_majority, weighted_majority

    if rule == "mcts":
        return best_by_score(answers, scores)
    if rule == "mcts-topk":
        return top_k_majority(answers, scores, top_k).first_index
    if rule == "mcts-wmaj":
        return weighted_majority(answers, scores).first_index
    if rule in ("mcts-vote", "mcts-plain"):
        return majority_vote(answers).first_index
    raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")


def graded(row: dict[str, Any], rule: str, top_k: int) -> bool:
    """Whether `rule` picks a correct answer in the tree of one results row (its per-answer grades)."""
    answers, scores, ok = list(row["answers"] or []), list(row["scores"] or []), list(row["sample_correct"] or [])
    if not (len(answers) == len(ok) and (rule in ("mcts-vote", "mcts-plain") or len(scores) == len(answers))):
        raise ValueError(f"problem {row['problem_id']}: answers, scores and grades of different lengths")
    if rule in ("mcts-vote", "mcts-plain"):
        scores = [None] * len(answers)
    i = pick(rule, answers, scores, top_k)
    return i is not None and bool(ok[i])


def _by_problem(rows: Sequence[dict[str, Any]], mode: str, budget: int) -> dict[str, dict[str, Any]]:
    return {r["problem_id"]: r for r in rows if r["mode"] == mode and int(r["budget"]) == budget}


def compare(
    label: str, guided_rows: Sequence[dict[str, Any]], plain_rows: Sequence[dict[str, Any]], top_k: int
) -> list[dict[str, Any]]:
    """One comparison per budget that both files hold: every rule on the guided trees against the plain vote."""
    from rstar.eval.metrics import ProblemResult, ranking_accuracy

    budgets = sorted({int(r["budget"]) for r in guided_rows if r["mode"] == "mcts"})
    if not budgets:
        raise SystemExit(f"{label}: no PPM-guided (mcts) rows")
    out = []
    fields = set(ProblemResult.__dataclass_fields__)
    for b in budgets:
        guided, plain = _by_problem(guided_rows, "mcts", b), _by_problem(plain_rows, "mcts-plain", b)
        if not plain:
            raise SystemExit(f"{label}: no mcts-plain rows at budget {b}")
        if set(guided) != set(plain):
            raise SystemExit(
                f"{label}@{b}: the guided and the plain search cover different problems "
                f"({len(set(guided) - set(plain))} only guided, {len(set(plain) - set(guided))} only plain)"
            )
        ids = sorted(guided)
        plain_ok = {i: graded(plain[i], "mcts-plain", top_k) for i in ids}
        stored = {"mcts": guided, "mcts-topk": _by_problem(guided_rows, "mcts-topk", b), "mcts-plain": plain}
        for mode in ("mcts", "mcts-topk", "mcts-plain"):  # the file's own answers must be what the rules give
            for i, row in stored[mode].items():
                mine = plain_ok[i] if mode == "mcts-plain" else graded(guided[i], mode, top_k)
                if mine != bool(row["correct"]) and row.get("error") is None:
                    raise SystemExit(f"{label}@{b}: {mode} on {i} recomputes as {mine}, the file says {row['correct']}")
        rules = {}
        for rule in RULES:
            ok = {i: graded(guided[i], rule, top_k) for i in ids}
            wins = sum(ok[i] and not plain_ok[i] for i in ids)
            losses = sum(plain_ok[i] and not ok[i] for i in ids)
            rules[rule] = {
                "accuracy": sum(ok.values()) / len(ids),
                "only_rule": wins,
                "only_plain": losses,
                "sign_p": sign_test(wins, losses),
            }
        picked = [ProblemResult(**{k: v for k, v in guided[i].items() if k in fields}) for i in ids]
        out.append(
            {
                "label": label,
                "budget": b,
                "problems": len(ids),
                "plain": sum(plain_ok.values()) / len(ids),
                "covered_guided": sum(bool(guided[i]["n_correct"]) for i in ids) / len(ids),
                "covered_plain": sum(bool(plain[i]["n_correct"]) for i in ids) / len(ids),
                "answers_per_tree": sum(len(guided[i]["answers"] or []) for i in ids) / len(ids),
                "ranking": ranking_accuracy(picked),
                "rules": rules,
            }
        )
    return out


def table(results: Sequence[dict[str, Any]], top_k: int) -> str:
    pct: Callable[[float], str] = lambda x: f"{100 * x:.1f}"  # noqa: E731
    heads = [LABELS[r].format(k=top_k) for r in RULES]
    lines = [
        "| trees | problems | PPM ranking | plain MCTS % (covered) | guided covered % | "
        + " | ".join(f"{h} % (only it / only plain right, sign p)" for h in heads)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(RULES),
    ]
    for res in results:
        cells = []
        for rule in RULES:
            r = res["rules"][rule]
            cells.append(f"{pct(r['accuracy'])} ({r['only_rule']} / {r['only_plain']}, {r['sign_p']:.2f})")
        rank = "-" if res["ranking"] is None else f"{res['ranking']:.2f}"
        lines.append(
            f"| {res['label']} (@{res['budget']}) | {res['problems']} | {rank} | {pct(res['plain'])} "
            f"({pct(res['covered_plain'])}) | {pct(res['covered_guided'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], top_k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(results) + 2), 4.2))
    width = 0.8 / (len(RULES) + 1)
    for j, rule in enumerate(("mcts-plain", *RULES)):
        xs = [i + (j - len(RULES) / 2) * width for i in range(len(results))]
        ys = [100 * (r["plain"] if rule == "mcts-plain" else r["rules"][rule]["accuracy"]) for r in results]
        label = "plain MCTS (no PPM)" if rule == "mcts-plain" else LABELS[rule].format(k=top_k)
        ax.bar(xs, ys, width, label=label, color="grey" if rule == "mcts-plain" else f"C{j - 1}")
    ax.set_xticks(range(len(results)), [f"{r['label']}\n@{r['budget']}, {r['problems']} problems" for r in results])
    ax.set_ylabel("accuracy %")
    lo = min(100 * min([r["plain"]] + [v["accuracy"] for v in r["rules"].values()]) for r in results)
    ax.set_ylim(max(0.0, lo - 15), None)
    ax.set_title("Answer rules on the same PPM-guided trees vs plain MCTS at equal budget", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_compare(spec: str) -> tuple[str, Path, list[Path]]:
    """`LABEL=GUIDED[,PLAIN...]` -> (label, guided file, plain files); the plain rows default to the guided file's."""
    label, sep, files = spec.partition("=")
    parts = [Path(p) for p in files.split(",") if p]
    if not sep or not label or not parts:
        raise argparse.ArgumentTypeError(f"{spec!r}: use LABEL=GUIDED_RESULTS[,PLAIN_RESULTS...]")
    return label, parts[0], parts[1:] or parts[:1]


def main(argv: list[str] | None = None) -> int:
    from bench.ppm_needed import load_rows

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--compare", type=parse_compare, action="append", required=True, help="LABEL=GUIDED[,PLAIN...]; repeat"
    )
    ap.add_argument("--top-k", type=int, default=4, help="k of the top-k vote (rstar eval's default: 4)")
    ap.add_argument("--json", type=Path, help="write the results here (and the plot beside it, .png)")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be at least 1")
    for _, guided, plain in args.compare:
        for p in (guided, *plain):
            if not p.exists():
                ap.error(f"no results file {p}")
    results = [
        res
        for label, guided, plain in args.compare
        for res in compare(label, load_rows(guided), [r for p in plain for r in load_rows(p)], args.top_k)
    ]
    print(table(results, args.top_k))
    if args.json:
        from bench.ppm_crosseval import shown

        args.json.parent.mkdir(parents=True, exist_ok=True)
        files = [{"label": lab, "guided": shown(g), "plain": [shown(p) for p in ps]} for lab, g, ps in args.compare]
        args.json.write_text(json.dumps({"top_k": args.top_k, "files": files, "comparisons": results}, indent=1))
        plot(results, args.top_k, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
