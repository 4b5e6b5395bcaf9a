"""Does a round's PPM beat a majority vote on a round's trees? PPM-guided vs plain MCTS for every (policy, PPM) pair.

    .venv/bin/python bench/ppm_crosseval.py --run .rstar/bench/evolution/seed-1 --world .rstar/bench/evolution/world \
        --seed 1 --json bench/results/ppm-crosseval-seed1.json          # ~4 min per PPM-guided cell of 60 problems

Reads the models that `bench/evolution.py` left in a run folder's artifact store (`--run` is used as `RSTAR_HOME`;
keys `rounds/<k>/{policy,ppm}/<digest>`) and, for each policy round given, runs the test-time search with each PPM
round given (`mcts`, the paper's rule: the highest-PPM answer; and `mcts-topk`, the reference implementation's: a
majority vote over the top-k answers by PPM score, read from the same tree) and without a PPM (`mcts-plain`: majority
vote), with the run's search settings (candidates, depth, tokens per step, temperature, rollouts: from the run's
`bench/evolution.py` JSON given as `--budget-json`, else the default budget's) and the run's seed, on the world's
held-out split. Besides accuracy it reports, over the trees that hold both a correct and a wrong answer ("mixed"), how
often the chosen answer and how often the tree's most frequent answer is right, the PPM's within-tree pairwise ranking
accuracy (what separates a PPM that helps from one that only reorders) and, per PPM cell, the problems only it or only
plain MCTS got right. Prints the table; `--json` writes it.

`--train-ppm ROUNDS` adds one more PPM: trained like the flow's (the first policy round's model as backbone, the
run's PPM settings) on the preference pairs of the given rounds together, one epoch over all of them, to see whether
more pairs (e.g. `--train-ppm 1,2`, the pairs a round-2 PPM could have had) make a PPM that beats the vote.
`--ppm-spec NAME=SPEC` adds any other PPM, e.g. the one `bench/ppm_probe.py` trains on pairs from many more problems.

`--heldout-offset M --heldout N` evaluates problems M .. M+N of the world's held-out *stream*: the held-out split is
the head of a stream the world generator draws first, so asking past the split draws the same stream further
(`heldout_problems`), for an evaluation on more problems than the run's split without touching it; a drawn problem
that is in any problem file of the world folder (train, seed, a PPM-only round's) is skipped and counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def round_artifact(round_idx: int, kind: str) -> str:
    """The key of the one artifact of `kind` (policy, ppm, pairs) a round left in the run's store (`RSTAR_HOME`)."""
    from infra.storage import open_store

    keys = open_store().list_artifacts(f"rounds/{round_idx}/{kind}/")
    if len(keys) != 1:
        raise SystemExit(f"expected one {kind} artifact of round {round_idx} in the run's store, found {len(keys)}")
    return keys[0]


def model_spec(round_idx: int, kind: str) -> str:
    """A loadable `hf:` spec of the policy or PPM of a round (a local copy of the stored artifact)."""
    from infra.storage import open_store
    from tasks.common import resolve_model

    spec = resolve_model(open_store().uri(round_artifact(round_idx, kind)))
    assert spec is not None
    return spec


RULES = {
    "mcts": "highest score, PPM {ppm}",
    "mcts-topk": "majority of the top-k by PPM {ppm}",
    "mcts-wmaj": "PPM-weighted vote, PPM {ppm}",
    "mcts-plain": "majority (plain MCTS)",
}


def shown(where: Path | str | None) -> str | None:
    """A path (or an `hf:` spec) as a result JSON records it: relative to the repository when inside it, so results
    read the same on every machine; anything elsewhere stays absolute."""
    if where is None:
        return None
    text = str(where)
    scheme, sep, rest = text.partition(":")
    if sep and scheme.isalpha() and len(scheme) > 1:  # a spec such as hf:/path; a bare path has no scheme
        return text if rest.startswith("//") else f"{scheme}:{shown(rest)}"  # a URI (file://, s3://) stays whole
    path = Path(text)
    if not path.is_absolute():
        return text
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return text


def heldout_problems(world_dir: Path, offset: int, n: int) -> tuple[list[Any], int]:
    """Problems `offset .. offset+n` of the world's held-out stream, and how many drawn problems were skipped.

    `generate_world` draws the held-out split first, from its own seeded stream, so a world grown to more held-out
    problems starts with exactly the run's split (checked: SystemExit otherwise) and continues the stream. Past the
    split, a problem whose question is in any problem file of `world_dir` (the run's train and seed splits, a PPM-only
    round's problems) is skipped, since the run trained on it.
    """
    from rstar.data.problems import load_problems
    from rstar.data.world import WorldConfig, generate_world

    if offset < 0 or n < 1:
        raise SystemExit(f"--heldout-offset must be >= 0 and --heldout >= 1, got {offset} and {n}")
    split, _ = load_problems(world_dir / "heldout.jsonl")
    if offset + n <= len(split):
        return list(split[offset : offset + n]), 0
    taken = problem_questions(world_dir, skip=("heldout.jsonl",))
    # only the held-out stream is needed; it is drawn first, so the other splits' sizes do not change it
    cfg = {**world_config(world_dir), "train": 0, "seed_sft": 0}
    size = offset + n
    while True:
        try:
            stream = generate_world(WorldConfig(**{**cfg, "heldout": size})).heldout
        except RuntimeError as err:  # the generator has no more distinct problems
            raise SystemExit(
                f"the held-out stream cannot give {offset + n} problems not in {world_dir}: {err}"
            ) from err
        if [p.question for p in stream[: len(split)]] != [p.question for p in split]:
            raise SystemExit("the grown world's held-out stream does not start with the run's split: refusing")
        kept, skipped = list(split), 0
        for p in stream[len(split) :]:
            if len(kept) == offset + n:
                break
            if p.question in taken:
                skipped += 1
            else:
                kept.append(p.to_problem("heldout"))
        if len(kept) == offset + n:
            return kept[offset:], skipped
        size *= 2


def world_config(world_dir: Path) -> dict[str, Any]:
    """The `WorldConfig` fields a world folder was generated with (its `world.json`; lists back to tuples)."""
    config = json.loads((world_dir / "world.json").read_text())["config"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def problem_questions(world_dir: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """The questions of every problem file in `world_dir` (rows with a question and an answer; not SFT solutions)."""
    taken: set[str] = set()
    for f in sorted(world_dir.glob("*.jsonl")):
        if f.name in skip:
            continue
        for line in f.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("question"), str) and "answer" in row:
                taken.add(row["question"])
    return taken


def run_budget(path: Path | None) -> Any:
    """The `bench/evolution.py` Budget a run was made with: from its result JSON, else the default budget."""
    from bench.evolution import DEFAULT, Budget

    if path is None:
        return DEFAULT
    return Budget(**json.loads(path.read_text())["budget"])


def mixed_tree_stats(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Over trees with a correct and a wrong answer: how often the chosen and the most frequent answer are right."""
    from rstar.eval.metrics import majority_vote

    mixed = chosen = frequent = 0
    for r in rows:
        grades = list(r["sample_correct"] or [])
        if not (any(grades) and not all(grades)):
            continue
        mixed += 1
        chosen += int(bool(r["correct"]))
        vote = majority_vote(list(r["answers"]))  # plain MCTS's rule: equivalent answers group, ties to the first
        frequent += int(vote.first_index is not None and bool(grades[vote.first_index]))
    return {"mixed": mixed, "chosen_right": chosen, "most_frequent_right": frequent}


def add_paired(cells: list[dict[str, Any]]) -> None:
    """Per PPM cell, the problems only it or only plain MCTS (same policy, same problems) got right.

    The paired view of an accuracy difference: +7 problems from 10 wins and 3 losses is stronger evidence than +7
    from 20 and 13, which the two accuracies alone cannot tell apart.
    """
    from bench.answer_rules import sign_test

    plain = {c["policy_round"]: c["correct"] for c in cells if c["rule"] == "mcts-plain"}
    for c in cells:
        base = plain.get(c["policy_round"])
        if c["rule"] == "mcts-plain" or base is None:
            continue
        c["only_this_right"] = sum(a and not b for a, b in zip(c["correct"], base, strict=True))
        c["only_plain_right"] = sum(b and not a for a, b in zip(c["correct"], base, strict=True))
        c["sign_p"] = round(sign_test(c["only_this_right"], c["only_plain_right"]), 3)


def train_like(pairs: Any, config: dict[str, Any], backbone: Path, out: Path, seed: int) -> dict[str, Any]:
    """Train a PPM on `pairs` with a round's PPM settings (`config`, from its manifest); returns its numeric metrics."""
    from rstar.train.common import TrainConfig
    from rstar.train.ppm import train_ppm

    result = train_ppm(pairs, backbone, out, TrainConfig.for_ppm(**{**config, "seed": seed}))
    return {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}


def train_pooled_ppm(rounds: list[int], policy_round: int, out: Path, seed: int) -> tuple[str, dict[str, Any]]:
    """A PPM trained as the run's were, on the pairs of several rounds at once; returns its spec and metrics."""
    import polars as pl

    from infra.storage import open_store
    from tasks.build_data import PAIRS_FILE

    store = open_store()
    data = pl.concat([pl.read_parquet(store.get_artifact(round_artifact(r, "pairs")) / PAIRS_FILE) for r in rounds])
    config = dict(store.read_manifest(round_artifact(max(rounds), "ppm")).config["train"])
    config.pop("max_steps", None)  # one epoch over every pair, not the round's step cap
    backbone = Path(model_spec(policy_round, "policy").removeprefix("hf:"))
    metrics = train_like(data, config, backbone, out, seed)
    return f"hf:{out}", {"pairs": data.height, "rounds": rounds, "config": config, **metrics}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a seed folder of bench/evolution.py (<out>/seed-N)")
    ap.add_argument("--world", type=Path, required=True, help="the world folder of that run (<out>/world)")
    ap.add_argument("--seed", type=int, required=True, help="the run's seed (the search's sampling seed)")
    ap.add_argument("--policies", type=int, nargs="+", default=[2, 3], help="policy rounds")
    ap.add_argument("--ppms", type=int, nargs="*", default=[2, 3], help="PPM rounds (plain MCTS is always run)")
    ap.add_argument("--heldout", type=int, default=60, help="N held-out problems (past the split: the stream's)")
    ap.add_argument("--heldout-offset", type=int, default=0, help="skip the first M of the held-out stream")
    ap.add_argument("--budget-json", type=Path, default=None, help="the run's bench/evolution.py JSON (its settings)")
    ap.add_argument("--budget", type=int, default=None, help="rollouts per problem (default: the run's mcts_budget)")
    ap.add_argument("--train-ppm", default=None, metavar="ROUNDS", help="also train a PPM on these rounds' pairs (1,2)")
    ap.add_argument(
        "--ppm-spec", action="append", default=[], metavar="NAME=SPEC", help="also a PPM from elsewhere (ppm_probe.py)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / ".rstar" / "bench" / "ppm-crosseval")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    os.environ["RSTAR_HOME"] = str(args.run)
    os.environ["RSTAR_MLFLOW_TRACKING_URI"] = "off"
    from rstar.eval.runner import evaluate
    from rstar.models.registry import load_policy, load_reward_model
    from tasks.common import shared_executor

    held, skipped = heldout_problems(args.world, args.heldout_offset, args.heldout)
    if skipped:
        print(f"held-out stream: skipped {skipped} problems that are in a problem file of {args.world}", flush=True)
    from bench.evolution import eval_config

    b = run_budget(args.budget_json)
    cfg = eval_config(b, args.seed)
    if args.budget is None:
        args.budget = b.mcts_budget
    ppms: dict[str | None, str | None] = {str(r): model_spec(r, "ppm") for r in args.ppms}
    trained: dict[str, Any] = {}
    if args.train_ppm:
        rounds = [int(x) for x in args.train_ppm.split(",") if x.strip()]
        name = "+".join(map(str, rounds))
        t0 = time.perf_counter()
        ppms[name], trained = train_pooled_ppm(rounds, args.policies[0], args.out / f"ppm-{name}", args.seed)
        trained["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"PPM on the pairs of rounds {name}: {trained}", flush=True)
    for item in args.ppm_spec:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise SystemExit(f"--ppm-spec wants NAME=SPEC, got {item!r}")
        ppms[name] = spec
    ppms[None] = None
    cells: list[dict[str, Any]] = []
    for pol in args.policies:
        policy = load_policy(model_spec(pol, "policy"))
        for ppm, ppm_spec in ppms.items():
            t0 = time.perf_counter()
            # one PPM-guided tree, three answer rules
            modes = ("mcts", "mcts-topk", "mcts-wmaj") if ppm is not None else ("mcts-plain",)
            rep = evaluate(
                policy,
                {"heldout": held},
                modes=modes,
                budgets=(args.budget,),
                out_dir=args.out / f"policy{pol}-ppm{ppm}",
                reward_model=load_reward_model(ppm_spec) if ppm_spec is not None else None,
                executor=shared_executor(),
                config=cfg,
                plot=False,
            )
            wall = round(time.perf_counter() - t0, 1)
            for mode in modes:
                (summary,) = [s for s in rep.summaries if s.mode == mode]
                results = [r for r in rep.results if r.mode == mode]
                rows: list[dict[str, Any]] = [
                    {"answers": r.answers, "sample_correct": r.sample_correct, "correct": r.correct} for r in results
                ]
                cell = {
                    "policy_round": pol,
                    "ppm_round": ppm,
                    "rule": mode,
                    "accuracy": round(100 * rep.accuracy("heldout", mode, args.budget), 1),
                    "covered": summary.covered,
                    "answers_per_tree": round(sum(len(r["answers"]) for r in rows) / max(1, len(rows)), 2),
                    "ranking_accuracy": summary.ranking_accuracy,
                    **mixed_tree_stats(rows),
                    "correct": [bool(r.correct) for r in results],
                    "wall_s": wall,
                }
                cells.append(cell)
                print({k: v for k, v in cell.items() if k != "correct"}, flush=True)

    add_paired(cells)
    head = (
        "| policy | answer rule | accuracy % | covered | answers per tree | mixed trees | chosen right "
        "| most frequent right | PPM ranking | only this right / only plain right |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        rule = RULES[c["rule"]].format(ppm=c["ppm_round"])
        rank = "" if c["ranking_accuracy"] is None else f"{c['ranking_accuracy']:.2f}"
        paired = (
            ""
            if c.get("only_this_right") is None
            else f"{c['only_this_right']} / {c['only_plain_right']} (sign p {c['sign_p']:.2f})"
        )
        lines.append(
            f"| round {c['policy_round']} | {rule} | {c['accuracy']:.1f} | {c['covered']} of {len(held)} | "
            f"{c['answers_per_tree']} | {c['mixed']} | {c['chosen_right']} | {c['most_frequent_right']} | {rank} "
            f"| {paired} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "run": shown(args.run),
            "budget_json": shown(args.budget_json),
            "seed": args.seed,
            "heldout": len(held),
            "heldout_offset": args.heldout_offset,
            "heldout_skipped": skipped,
            "budget": args.budget,
            "search": dataclasses.asdict(cfg),
            "ppm_specs": {str(k): shown(v) for k, v in ppms.items() if k is not None},
            "cells": cells,
            "trained_ppm": trained,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
