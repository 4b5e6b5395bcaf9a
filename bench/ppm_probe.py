"""Does the PPM need pairs from more problems? Search many new training problems with one round's policy, train a PPM.

    .venv/bin/python bench/ppm_probe.py --run .rstar/bench/evolution/seed-1 --world .rstar/bench/evolution/world \
        --seed 1 --policy-round 2 --problems 256 --budget-json bench/results/evolution-default-seed1.json \
        --json bench/results/ppm-probe-seed1.json
    .venv/bin/python bench/ppm_crosseval.py --run .rstar/bench/evolution/seed-1 --world .rstar/bench/evolution/world \
        --seed 1 --policies 2 --ppms 2 --ppm-spec probe=<the ppm_spec it prints>
    .venv/bin/python bench/ppm_probe.py ... --subset 128   # then: a PPM on the pairs of its first 128 problems only

A round of `bench/evolution.py` searches 64 training problems with 4 rollouts; only the ~25 trees that hold both a
correct and a wrong answer give preference pairs (117-216 per round), and the PPMs trained on them rank the policy's
answers near chance. This probe runs one `evolution_round` (terminal-guided, as rounds 1-2) with the given round's
policy over `--problems` *new* training problems of the same world generator (the run's world grown, minus every
problem the run saw: its train split, its seed SFT and the held-out split, which is checked to be unchanged), with
the run's search and PPM settings (from its result JSON given as `--budget-json`, else the default budget's). It
trains only a PPM (backbone: that policy; one epoch over every pair, no step cap) and prints its spec for
`bench/ppm_crosseval.py --ppm-spec`. It writes into its own store (`--out`), never the run's.
"""

from __future__ import annotations

import argparse
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
os.environ.setdefault("DO_NOT_TRACK", "true")

from bench.ppm_crosseval import shown, world_config  # noqa: E402  (after the path insert: the bench runs as a script)


def fresh_problems(world_dir: Path, n: int) -> list[Any]:
    """`n` training problems of the run's world generator that the run never saw (train, seed SFT, held-out)."""
    from rstar.data.problems import load_problems
    from rstar.data.world import WorldConfig, generate_world

    cfg = world_config(world_dir)
    seen = {
        p.question for split in ("train", "seed", "heldout") for p in load_problems(world_dir / f"{split}.jsonl")[0]
    }
    held = [p.question for p in load_problems(world_dir / "heldout.jsonl")[0]]
    grown = generate_world(WorldConfig(**{**cfg, "train": int(cfg["train"]) + 2 * n}))  # room for the seed's overlap
    if [p.question for p in grown.heldout] != held:
        raise SystemExit("the grown world's held-out split differs from the run's: refusing (it would leak)")
    new = [p for p in grown.train if p.question not in seen][:n]
    if len(new) < n:
        raise SystemExit(f"only {len(new)} new training problems; asked for {n}")
    return [p.to_problem("train") for p in new]


def run_policy(run: Path, round_idx: int) -> str:
    """The `hf:` spec of a run's round policy, read from the run's store (leaves `RSTAR_HOME` pointing at it)."""
    from bench.ppm_crosseval import model_spec
    from infra.settings import get_settings

    os.environ["RSTAR_MLFLOW_TRACKING_URI"] = "off"
    os.environ["RSTAR_HOME"] = str(run.resolve())
    get_settings.cache_clear()
    return model_spec(round_idx, "policy")


def use_home(home: Path) -> None:
    """Point the store (and the Prefect settings derived from it) at `home`."""
    from infra.settings import configure_prefect_env, get_settings

    os.environ["RSTAR_HOME"] = str(home.resolve())
    get_settings.cache_clear()
    configure_prefect_env(get_settings(), override=True)


def subset_main(args: argparse.Namespace) -> int:
    """A PPM trained as the probe's was, on the pairs of the first `args.subset` problems the probe searched."""
    import polars as pl

    from bench.ppm_crosseval import train_like
    from infra.storage import open_store
    from rstar.data.problems import load_problems
    from tasks.build_data import PAIRS_FILE

    backbone = Path(run_policy(args.run, args.policy_round).removeprefix("hf:"))  # the probe's PPM backbone
    use_home(args.out / "home")
    store = open_store()
    k = args.policy_round + 1
    (pairs_key,) = store.list_artifacts(f"rounds/{k}/pairs/")
    (ppm_key,) = store.list_artifacts(f"rounds/{k}/ppm/")
    config = dict(store.read_manifest(ppm_key).config["train"])
    problems, _ = load_problems(args.out / "problems.jsonl")
    keep = {p.id for p in problems[: args.subset]}
    pairs = pl.read_parquet(store.get_artifact(pairs_key) / PAIRS_FILE).filter(pl.col("problem_id").is_in(keep))
    out = args.out / f"ppm-first{args.subset}"
    t0 = time.perf_counter()
    metrics = train_like(pairs, config, backbone, out, args.seed)
    report = {
        "subset": args.subset,
        "pairs": pairs.height,
        "problems_with_pairs": pairs["problem_id"].n_unique(),
        "ppm": metrics,
        "ppm_spec": shown(f"hf:{out}"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a seed folder of bench/evolution.py (<out>/seed-N)")
    ap.add_argument("--world", type=Path, required=True, help="the world folder of that run (<out>/world)")
    ap.add_argument("--seed", type=int, required=True, help="the run's seed")
    ap.add_argument("--policy-round", type=int, default=2, help="the round whose policy searches and is the backbone")
    ap.add_argument("--problems", type=int, default=256, help="new training problems to search")
    ap.add_argument("--budget-json", type=Path, default=None, help="the run's bench/evolution.py JSON (its settings)")
    ap.add_argument("--out", type=Path, default=ROOT / ".rstar" / "bench" / "ppm-probe")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="search nothing: train a PPM like the probe's on the pairs of the first N of its problems (a data-size "
        "curve from one search); needs a finished probe in --out",
    )
    args = ap.parse_args(argv)
    if args.subset is not None:
        return subset_main(args)

    from bench.ppm_crosseval import run_budget
    from rstar.data.problems import write_problems_jsonl

    b = run_budget(args.budget_json)  # search and PPM settings as the run's rounds had them
    problems = fresh_problems(args.world, args.problems)
    args.out.mkdir(parents=True, exist_ok=True)
    problem_file = args.out / "problems.jsonl"
    write_problems_jsonl(problems, problem_file)

    policy = run_policy(args.run, args.policy_round)  # a local hf: folder inside the run's store
    use_home(args.out / "home")
    from flows.params import EvalOptions, RoundParams, SearchOptions, TrainingOptions
    from flows.round import evolution_round
    from infra.storage import open_store

    params = RoundParams(
        round_idx=args.policy_round + 1,
        problems=str(problem_file),
        policy=policy,
        search=SearchOptions(
            mode="terminal",
            rollouts=b.rollouts,
            extra_rollouts_unsolved=0,
            candidates=b.candidates,
            max_depth=b.max_depth,
            temperature=b.temperature,
            extra={"max_step_tokens": b.max_step_tokens, "extra_rollouts_if_unsolved": 0},
        ),
        shard_size=args.problems,  # one shard: one process, one model, all trees batched together
        seed=args.seed,
        training=TrainingOptions(
            train_policy=False,
            ppm_base=policy,
            ppm_epochs=b.ppm_epochs,
            learning_rate=b.lr,
            batch_size=b.batch_size,
            max_length=512,
            extra={"warmup": 0.1, "weight_decay": 0.0},
        ),
        evaluation=EvalOptions(enabled=False),
        register_models=False,
    )
    t0 = time.perf_counter()
    result = evolution_round(params)
    wall = time.perf_counter() - t0
    store = open_store()
    metric = lambda uri: dict(store.read_manifest(uri).metrics) if uri else {}  # noqa: E731
    from tasks.common import resolve_model

    report: dict[str, Any] = {
        "run": shown(args.run),
        "seed": args.seed,
        "policy_round": args.policy_round,
        "problems": args.problems,
        "rollouts": b.rollouts,
        "coverage": result.coverage,
        "pairs": store.read_manifest(result.pairs).rows,
        "synthesize": [metric(u) for u in result.trees],
        "ppm": metric(result.ppm) if result.trained_ppm else None,
        "ppm_spec": shown(resolve_model(result.ppm)) if result.trained_ppm else None,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
