"""Which PPM recipe ranks best? Judges compared on the same trees of a validation split (never the held-out one).

    .venv/bin/python bench/ppm_recipe.py \
        --run .rstar/bench/evolution-wide/seed-0 --world .rstar/bench/evolution-wide/world \
        --policy-round 3 --pairs rounds/4/pairs/fab6e9a789008f74 --like rounds/4/ppm/a3f15a8619b4b65b \
        --offset 512 --validation 120 --budget 8 \
        --ppm as-run=rounds/4/ppm/a3f15a8619b4b65b --variant lr1e-5='{"learning_rate": 1e-5}' \
        --json bench/results/ppm-recipe-wide-seed0.json          # the PNG goes beside the JSON

A PPM's worth at test time is how often it ranks a policy's correct answer above a wrong one *of the same problem*
(`rstar.eval.metrics.ranking_accuracy`). Reading that off the held-out evaluation mixes two things (the PPM also
steers the search that grows the trees) and ~60 problems give ~35-500 pairs; tuning a recipe there would also tune
the held-out split. So this script:

1. takes `--validation` new problems of the run's world generator, past the first `--offset` of its fresh stream
   (`bench/ppm_probe.fresh_problems`; the final PPM-only rounds use the first 256 / 512), and refuses any that is in
   a file of the world folder (train, seed, held-out, final PPM sets);
2. grows the trees once: plain eval-mode MCTS (no PPM, `rstar.eval.modes.mcts`, the held-out evaluation's settings)
   with the run's round policy at `--budget` rollouts, keeping every answer terminal's full text;
3. trains each `--variant` (a PPM trained like `--like`'s manifest says, on `--pairs`, with the variant's settings
   over it; `rstar.train.ppm.train_ppm`; besides `TrainConfig` fields a variant may set `seed` (training seed,
   default 0) and `"same_program_steps": false` (drop step pairs whose two steps run the same code and differ only
   in their comments)) and takes each `--ppm` as it is;
4. scores every answer of every tree with every judge and applies the product's answer rules
   (`rstar.eval.metrics`: the highest score, the top-k vote, the plain vote).

It prints and writes (JSON + PNG) per judge: pairwise ranking accuracy with a 90 % bootstrap interval over trees,
the accuracy of the highest-score and top-k rules against the vote on the same trees, its training cost, and the
ranking a simulated judge needs on these trees to beat the vote (`bench/ppm_needed.py`). Everything is cached in
`--out`: trees per (policy, problems, budget), models per (pairs, settings), scores per (judge, trees), so adding a
variant costs its training and one scoring pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")

from bench.ppm_crosseval import shown  # noqa: E402  (after the path insert: the bench runs as a script)
from bench.ppm_needed import Tree, make_tree  # noqa: E402


def digest(obj: Any) -> str:
    """A short content key for a JSON-able object (cache names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def program(step_text: str) -> str:
    """What a step computes: its code without comments, tags and whitespace (two steps that differ only in wording
    run the same program, so a Q gap between them is the luck of later rollouts, not the step's merit)."""
    lines = (line.split("#")[0] for line in step_text.splitlines())
    return "\n".join("".join(line.split()) for line in lines if line.strip() and not line.strip().startswith("<"))


def drop_same_program_steps(pairs: Any) -> Any:
    """Step pairs whose chosen and rejected steps run the same program removed (final pairs kept)."""
    import polars as pl

    keep = [
        k != "step" or program(c) != program(r)
        for k, c, r in zip(pairs["kind"], pairs["chosen"], pairs["rejected"], strict=True)
    ]
    return pairs.filter(pl.Series(keep, dtype=pl.Boolean))


def validation_problems(world_dir: Path, offset: int, n: int) -> list[Any]:
    """Problems `offset .. offset+n` of the world's fresh stream; SystemExit if any is in a file of `world_dir`."""
    from bench.ppm_crosseval import problem_questions
    from bench.ppm_probe import fresh_problems

    if offset < 0 or n < 1:
        raise SystemExit(f"--offset must be >= 0 and --validation >= 1, got {offset} and {n}")
    new = fresh_problems(world_dir, offset + n)[offset:]
    taken = problem_questions(world_dir)
    clash = [p.question for p in new if p.question in taken]
    if clash:
        raise SystemExit(f"{len(clash)} validation problems are in a file of {world_dir} (first: {clash[0]!r})")
    return new


def tree_of(row: dict[str, Any]) -> Tree:
    return make_tree(row["answers"], row["correct"])


def grow_trees(problems: Sequence[Any], policy: str, cfg: Any, budget: int, path: Path) -> list[dict[str, Any]]:
    """Plain eval-mode MCTS over `problems`: per problem its answer terminals (answer, grade, full text); cached."""
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    from rstar.eval.modes.base import EvalContext, Grades
    from rstar.eval.modes.mcts import _NoPPM, search_config
    from rstar.models.registry import load_policy
    from rstar.search.driver import synthesize
    from rstar.verify.sandbox import Sandbox

    pol = load_policy(policy)
    t0 = time.perf_counter()
    with Sandbox() as ex:
        ctx = EvalContext(policy=pol, config=cfg, executor=ex)
        res = synthesize(list(problems), pol, ex, search_config(ctx, budget, len(problems)), reward_model=_NoPPM())
    wall = time.perf_counter() - t0
    by_id = {r.problem.id: r for r in res.results}
    rows = []
    for p in problems:
        r = by_id[p.id]
        idx = [i for i, n in enumerate(r.tree.nodes) if n.terminal_reason == "answer"]
        grades = Grades(p.answer)
        rows.append(
            {
                "problem_id": p.id,
                "level": p.level,
                "gold": p.answer,
                "answers": [r.tree.nodes[i].answer for i in idx],
                "correct": [grades.correct(r.tree.nodes[i].answer) for i in idx],
                "texts": [r.tree.prefix(i) for i in idx],
                "tokens": int(r.problem_row["tokens_generated"]),
                "error": r.error,
                "wall_s": wall / max(1, len(problems)),
            }
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return rows


def score_trees(rows: Sequence[dict[str, Any]], model_dir: Path, path: Path) -> list[list[float]]:
    """Raw PPM scores (before tanh: the order is all the answer rules use) of every answer text; cached."""
    if path.exists():
        scores: list[list[float]] = json.loads(path.read_text())["scores"]
        return scores
    from rstar.models.ppm import HFRewardModel

    texts = [t for r in rows for t in r["texts"]]
    t0 = time.perf_counter()
    raw = HFRewardModel(model_dir).raw_scores(texts)
    out, i = [], 0
    for r in rows:
        out.append([float(x) for x in raw[i : i + len(r["texts"])]])
        i += len(r["texts"])
    path.write_text(json.dumps({"model": str(model_dir), "wall_s": time.perf_counter() - t0, "scores": out}))
    return out


def judge_stats(
    trees: Sequence[Tree], scores: Sequence[Sequence[float]], top_k: int, boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """A judge on fixed trees: pairwise ranking (ties half) with a 90 % bootstrap interval over mixed trees, and the
    accuracy of the highest-score and top-k rules; the vote and coverage of the same trees for comparison."""
    from bench.ppm_needed import _identity, vote_accuracy
    from rstar.eval.metrics import best_by_score, pairs_won, top_k_majority

    if len(trees) != len(scores):
        raise ValueError(f"{len(trees)} trees but {len(scores)} score lists")
    best = topk = 0
    per_tree: list[tuple[float, int]] = []  # (pairs won, pairs) of each tree holding a right and a wrong answer
    for t, s in zip(trees, scores, strict=True):
        if len(s) != len(t.keys):
            raise ValueError(f"a tree has {len(t.keys)} answers but {len(s)} scores")
        sc: list[float | None] = [None if k is None else x for k, x in zip(t.keys, s, strict=True)]
        i = best_by_score(t.keys, sc)
        best += i is not None and t.correct[i]
        j = top_k_majority(t.keys, sc, top_k, key=_identity).first_index
        topk += j is not None and t.correct[j]
        won, pairs = pairs_won((x, ok) for x, ok in zip(sc, t.correct, strict=True) if x is not None)
        if pairs:
            per_tree.append((won, pairs))
    n = max(1, len(trees))
    out: dict[str, Any] = {
        "trees": len(trees),
        "covered": sum(any(t.correct) for t in trees) / n,
        "vote": vote_accuracy(trees),
        "best": best / n,
        "topk": topk / n,
        "mixed_trees": len(per_tree),
        "pairs": sum(p for _, p in per_tree),
        "ranking": None,
        "ranking_ci90": None,
    }
    if per_tree:
        rng = random.Random(seed)
        draws = []
        for _ in range(boot):
            pick = [per_tree[rng.randrange(len(per_tree))] for _ in per_tree]
            draws.append(sum(w for w, _ in pick) / sum(p for _, p in pick))
        draws.sort()
        out["ranking"] = sum(w for w, _ in per_tree) / sum(p for _, p in per_tree)
        out["ranking_ci90"] = [draws[int(0.05 * (boot - 1))], draws[int(0.95 * (boot - 1))]]
    return out


def needed_ranking(trees: Sequence[Tree], top_k: int, draws: int, seed: int) -> dict[str, float | None]:
    """The smallest simulated ranking (`bench/ppm_needed.py`) at which each rule beats the vote on these trees."""
    from bench.ppm_needed import judge_curve, needed, vote_accuracy

    return needed(judge_curve(trees, draws, top_k, seed), vote_accuracy(trees))


def parse_named(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} takes NAME=VALUE, got {item!r}")
        if name in out:
            raise SystemExit(f"{what} {name!r} given twice")
        out[name] = value
    return out


def table(report: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    v = report["trees"]
    need = report["needed"]
    lines = [
        f"{v['problems']} validation problems, plain MCTS@{report['budget']}: {v['answers_per_tree']:.1f} answers per "
        f"tree, {pct(v['covered'])} % hold a correct answer, {v['mixed']} a correct and a wrong one; vote "
        f"{pct(v['vote'])} %. A simulated judge beats the vote from a ranking of {need['best']} (highest score) / "
        f"{need['topk']} (top-{report['top_k']}).",
        "",
        f"| judge | settings | pairs / steps / train min | ranking [90 % CI] | highest score % | top-{report['top_k']} % "
        "| vote % |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in report["judges"]:
        s, t = j["stats"], j.get("train") or {}
        ci = s["ranking_ci90"]
        rank = "-" if s["ranking"] is None else f"{s['ranking']:.3f} [{ci[0]:.2f}-{ci[1]:.2f}]"
        cost = (
            f"{t.get('train_pairs', '-'):.0f} / {t.get('steps', 0):.0f} / {t.get('wall_s', 0) / 60:.1f}"
            if t
            else "as trained"
        )
        lines.append(
            f"| {j['name']} | {json.dumps(j['settings']) if j['settings'] else j['source']} | {cost} | {rank} "
            f"| {pct(s['best'])} | {pct(s['topk'])} | {pct(s['vote'])} |"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = [j for j in report["judges"] if j["stats"]["ranking"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(judges) + 3.4))
    ys = list(range(len(judges)))[::-1]
    for y, j in zip(ys, judges, strict=True):
        s = j["stats"]
        lo, hi = s["ranking_ci90"]
        ax1.errorbar([s["ranking"]], [y], xerr=[[s["ranking"] - lo], [hi - s["ranking"]]], fmt="o", color="C0")
        ax2.plot([100 * s["best"]], [y], "o", color="C0", label="highest score" if y == ys[0] else None)
        ax2.plot([100 * s["topk"]], [y], "s", color="C2", label=f"top-{report['top_k']} vote" if y == ys[0] else None)
    need = report["needed"]["best"]
    if need is not None:
        ax1.axvline(need, color="C3", ls="--", label=f"needed to beat the vote ({need})")
    ax1.axvline(0.5, color="grey", ls=":", label="chance")
    ax2.axvline(100 * report["trees"]["vote"], color="C3", ls="--", label="majority vote (no PPM)")
    ax2.axvline(100 * report["trees"]["covered"], color="grey", ls=":", label="trees holding a correct answer")
    for ax in (ax1, ax2):
        ax.set_yticks(ys, [j["name"] for j in judges])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax1.set_xlabel("ranks a correct answer above a wrong one (90 % CI over trees)")
    ax2.set_xlabel("accuracy % on the same trees")
    fig.suptitle(
        f"PPM recipes on {report['trees']['problems']} validation problems, plain MCTS@{report['budget']} trees",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True, help="a seed folder of bench/evolution.py (<out>/seed-N)")
    ap.add_argument("--world", type=Path, required=True, help="the world folder of that run (<out>/world)")
    ap.add_argument("--policy-round", type=int, default=3, help="the round whose policy grows the trees")
    ap.add_argument("--pairs", help="the run's pairs artifact the variants train on (rounds/K/pairs/DIGEST)")
    ap.add_argument("--like", help="the run's PPM artifact whose training settings the variants start from")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON", help="settings over --like's")
    ap.add_argument("--ppm", action="append", default=[], metavar="NAME=KEY|PATH", help="a trained PPM as it is")
    ap.add_argument("--offset", type=int, default=512, help="skip this many of the world's fresh problems")
    ap.add_argument("--validation", type=int, default=120, help="validation problems")
    ap.add_argument("--budget", type=int, default=8, help="rollouts per validation tree")
    ap.add_argument("--budget-json", type=Path, default=None, help="the run's bench/evolution.py JSON (its settings)")
    ap.add_argument("--seed", type=int, default=0, help="the search's seed")
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200, help="simulated judges per ranking (the 'needed' column)")
    ap.add_argument("--out", type=Path, default=ROOT / ".rstar" / "bench" / "ppm-recipe")
    ap.add_argument("--json", type=Path, default=None, help="write the report here (and the plot beside it, .png)")
    args = ap.parse_args(argv)
    variants: dict[str, Any] = {}
    for name, text in parse_named(args.variant, "--variant").items():
        try:
            variants[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            ap.error(f"--variant {name}: settings are not JSON ({exc}): {text!r}")
    given = parse_named(args.ppm, "--ppm")
    if set(variants) & set(given):
        ap.error(f"a --ppm and a --variant share the name {sorted(set(variants) & set(given))[0]!r}")
    if variants and not (args.pairs and args.like):
        ap.error("--variant needs --pairs and --like")
    if not variants and not given:
        ap.error("nothing to judge: give --variant and/or --ppm")
    for name, v in variants.items():
        if not isinstance(v, dict):
            ap.error(f"--variant {name}: settings must be a JSON object, got {v!r}")

    from bench.evolution import eval_config
    from bench.ppm_crosseval import run_budget
    from bench.ppm_probe import run_policy

    policy = run_policy(args.run, args.policy_round)  # points RSTAR_HOME at the run's store
    from infra.storage import open_store

    store = open_store()
    problems = validation_problems(args.world, args.offset, args.validation)
    cfg = eval_config(run_budget(args.budget_json), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tree_key = digest([policy, [p.id for p in problems], args.budget, cfg.to_dict()])
    rows = grow_trees(problems, policy, cfg, args.budget, args.out / f"trees-{tree_key}.jsonl")
    trees = [tree_of(r) for r in rows]

    judges: list[dict[str, Any]] = []
    for name, src in given.items():
        path = Path(src) if Path(src).exists() else store.get_artifact(src) / "model"
        judges.append({"name": name, "source": shown(path), "settings": None, "model": path, "train": None})
    if variants:
        import polars as pl

        from bench.ppm_crosseval import train_like
        from tasks.build_data import PAIRS_FILE

        pairs = pl.read_parquet(store.get_artifact(args.pairs) / PAIRS_FILE)
        base = dict(store.read_manifest(args.like).config["train"])
        backbone = Path(policy.removeprefix("hf:"))
        for name, over in variants.items():
            config = {**base, **over}
            model = args.out / f"ppm-{digest([args.pairs, str(backbone), config])}"
            done = model / "bench_train.json"
            if not done.exists():
                settings = dict(config)
                seed = int(settings.pop("seed", 0))
                data = pairs if settings.pop("same_program_steps", True) else drop_same_program_steps(pairs)
                t0 = time.perf_counter()
                metrics = train_like(data, settings, backbone, model, seed)
                done.write_text(json.dumps({**metrics, "pairs": data.height, "wall_s": time.perf_counter() - t0}))
            train = json.loads(done.read_text())
            judges.append({"name": name, "source": shown(model), "settings": over, "model": model, "train": train})
    for j in judges:
        scores = score_trees(rows, j.pop("model"), args.out / f"scores-{digest([j['source'], tree_key])}.json")
        j["stats"] = judge_stats(trees, scores, args.top_k)

    import statistics

    from bench.ppm_needed import vote_accuracy

    report = {
        "run": shown(args.run),
        "policy": shown(policy),
        "policy_round": args.policy_round,
        "pairs": args.pairs,
        "like": args.like,
        "like_settings": dict(store.read_manifest(args.like).config["train"]) if args.like else None,
        "offset": args.offset,
        "budget": args.budget,
        "top_k": args.top_k,
        "trees": {
            "problems": len(trees),
            "answers_per_tree": statistics.fmean(len(t.keys) for t in trees),
            "covered": sum(any(t.correct) for t in trees) / len(trees),
            "mixed": sum(any(t.correct) and not all(t.correct) for t in trees),
            "vote": vote_accuracy(trees),
            "search_wall_s": sum(r["wall_s"] for r in rows),
        },
        "needed": needed_ranking(trees, args.top_k, args.draws, args.seed),
        "judges": judges,
    }
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        plot(report, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
