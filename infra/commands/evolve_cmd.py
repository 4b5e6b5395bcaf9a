"""`rstar round`, `rstar evolve`, `rstar demo`: run the Prefect flows locally (Prefect's ephemeral API by default).

    rstar round --problems train.jsonl --policy openai:http://gpu:8000/v1#big --base-model smollm2-135m --round 1
    rstar evolve --problems train.jsonl --bootstrap-policy hf:seed-sft --base-model smollm2-135m --rounds 3
    rstar round --params round3.json              # a RoundParams JSON (what the Prefect UI form holds)
    rstar demo                                    # self-evolution end to end on embedded defaults, on CPU

Everything lands under `$RSTAR_HOME` (default ./.rstar) unless `RSTAR_ARTIFACT_URL`, `RSTAR_MLFLOW_TRACKING_URI`
or `RSTAR_PREFECT_API_URL` point elsewhere (infra/settings.py). Re-running a command with the same arguments
re-uses every finished stage. Prefect and the flows are imported inside `run`, after the Prefect environment is
configured, so `rstar --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser(
        "round",
        help="run one self-evolution round (the evolution_round flow)",
        description="Synthesize trees with MCTS, build SFT data and PPM pairs, train, evaluate, promote: one round.",
    )
    _common(r)
    r.add_argument("--round", dest="round_idx", type=int, default=None, help="round number k (default 1)")
    r.add_argument("--policy", help="policy that generates the trees: model spec or model artifact URI")
    r.add_argument("--ppm", help="process preference model (spec or artifact URI)")
    r.add_argument("--mode", choices=("terminal", "ppm"), help="search mode (default terminal)")
    r.add_argument("--rollouts", type=int, help="rollouts per problem (default 16)")
    r.add_argument("--boost", help="previous round's aggregate artifact URI: its unsolved problems get more rollouts")
    r.set_defaults(func=run, evolve_action="round")

    e = subparsers.add_parser(
        "evolve",
        help="run rounds 1..R of self-evolution (the self_evolution flow)",
        description="Round k's trained policy and PPM generate round k+1's trees; PPM-augmented from round 3.",
    )
    _common(e)
    e.add_argument("--rounds", type=int, help="number of rounds (default 4)")
    e.add_argument("--first-round", type=int, help="number of the first round (default 1)")
    e.add_argument("--bootstrap-policy", help="round 1's generator (model spec or artifact URI)")
    e.add_argument("--initial-ppm", help="a PPM for the first round (normally none)")
    e.add_argument("--ppm-from-round", type=int, help="first PPM-augmented round (default 3)")
    e.add_argument("--rollouts-first-round", type=int, help="rollouts per problem in round 1 (default 8)")
    e.add_argument("--rollouts", type=int, help="rollouts per problem in later rounds (default 16)")
    e.add_argument(
        "--final-ppm",
        action="store_true",
        default=None,
        help="after the last round, a PPM-only round: a PPM trained on the final policy's own trees",
    )
    e.set_defaults(func=run, evolve_action="evolve")

    d = subparsers.add_parser(
        "demo",
        help="self-evolution end to end on embedded defaults (small model, generated problems), on CPU",
        description="Generates a small problem world, runs self_evolution on it and prints where to look.",
    )
    d.add_argument("--rounds", type=int, default=None, help="rounds to run (default: flows.params.DEMO.rounds)")
    d.add_argument(
        "--out", type=Path, default=None, help="where the demo's problem files go (default $RSTAR_HOME/demo)"
    )
    d.add_argument(
        "--preset",
        default="smollm2",
        choices=("smollm2", "smoke"),
        help="smollm2: SmolLM2-135M, seed SFT + one round (~5 min on 2 idle cores); smoke: a tiny random model and a "
        "scripted bootstrap, to check the plumbing in a minute or two (flows.params.DEMO_PRESETS)",
    )
    d.set_defaults(func=run, evolve_action="demo")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, help="a JSON file of the flow's parameters; flags below override it")
    p.add_argument("--problems", help="problem set: JSONL/JSON/Parquet path, dataset id or artifact URI")
    p.add_argument("--limit", type=int, help="use only the first N problems")
    p.add_argument("--base-model", help="model the policy is fine-tuned from each round (e.g. smollm2-135m)")
    p.add_argument("--candidates", type=int, help="candidate steps per expansion (default 8)")
    p.add_argument("--shard-size", type=int, help="problems per synthesis shard (default 64)")
    p.add_argument("--shard-concurrency", type=int, help="shards at once (default 1)")
    p.add_argument("--max-failed-shards", type=float, help="tolerated fraction of failed shards (default 0)")
    p.add_argument("--seed", type=int, help="seed of every sampling stage (default 0)")
    p.add_argument("--benchmarks", help="comma-separated benchmarks to evaluate on (default gsm8k)")
    p.add_argument("--eval-mode", help="greedy | maj | best_of_n | beam | mcts (default greedy)")
    p.add_argument("--eval-limit", type=int, help="problems per benchmark")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation stage")
    p.add_argument("--no-register", action="store_true", help="do not register models in MLflow")
    p.add_argument("--json", dest="json_out", type=Path, help="also write the flow's result as JSON here")


def _overrides(args: argparse.Namespace, fields: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, attr) for attr, field in fields.items() if getattr(args, attr, None) is not None}


def _nested(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """Apply the flags shared by `round` and `evolve` to a parameter dict."""
    out = dict(base)
    out.update(
        _overrides(
            args,
            {
                "problems": "problems",
                "limit": "problem_limit",
                "shard_size": "shard_size",
                "shard_concurrency": "shard_concurrency",
                "max_failed_shards": "max_failed_shard_fraction",
                "seed": "seed",
            },
        )
    )
    training = dict(out.get("training") or {})
    if args.base_model:
        training["base_model"] = args.base_model
    out["training"] = training
    evaluation = dict(out.get("evaluation") or {})
    if args.benchmarks:
        evaluation["benchmarks"] = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if args.eval_mode:
        evaluation["mode"] = args.eval_mode
    if args.eval_limit:
        evaluation["limit"] = args.eval_limit
    if args.no_eval:
        evaluation["enabled"] = False
    out["evaluation"] = evaluation
    if args.no_register:
        out["register_models"] = False
    return out


def round_params_from_args(args: argparse.Namespace) -> Any:
    from flows.params import RoundParams

    base = json.loads(args.params.read_text()) if args.params else {}
    data = _nested(args, base)
    data.update(_overrides(args, {"round_idx": "round_idx", "policy": "policy", "ppm": "ppm", "boost": "boost"}))
    search = dict(data.get("search") or {})
    search.update(_overrides(args, {"mode": "mode", "rollouts": "rollouts", "candidates": "candidates"}))
    data["search"] = search
    return RoundParams.model_validate(data)


def evolution_params_from_args(args: argparse.Namespace) -> Any:
    from flows.params import EvolutionParams

    base = json.loads(args.params.read_text()) if args.params else {}
    data = _nested(args, base)
    data.update(
        _overrides(
            args,
            {
                "rounds": "rounds",
                "first_round": "first_round",
                "bootstrap_policy": "bootstrap_policy",
                "initial_ppm": "initial_ppm",
                "ppm_from_round": "ppm_from_round",
                "rollouts_first_round": "rollouts_first_round",
                "rollouts": "rollouts",
                "candidates": "candidates",
                "final_ppm": "final_ppm",
            },
        )
    )
    return EvolutionParams.model_validate(data)


def demo_params(out_dir: Path, rounds: int | None = None, preset: str = "smollm2") -> Any:
    """The demo's `EvolutionParams`: a generated problem world and the defaults of `flows.params.DEMO_PRESETS`."""
    from flows.params import DEMO_PRESETS, EvalOptions, EvolutionParams, TrainingOptions
    from rstar.data.world import WorldConfig, generate_world, write_world

    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose one of {sorted(DEMO_PRESETS)}")
    demo = DEMO_PRESETS[preset]
    world = generate_world(
        WorldConfig(
            seed=demo.world_seed,
            train=demo.train_problems,
            heldout=demo.heldout_problems,
            seed_sft=demo.seed_sft,
            levels=demo.levels,
            level_weights=demo.level_weights,
        )
    )
    paths = write_world(world, out_dir / "world")
    bootstrap = demo.bootstrap_policy
    return EvolutionParams(
        rounds=rounds or demo.rounds,
        problems=str(paths["train"]),
        bootstrap_policy=bootstrap.format(**{k: str(v) for k, v in paths.items()}) if bootstrap else None,
        bootstrap_sft=None if bootstrap else str(paths["seed_sft"]),
        bootstrap_epochs=demo.bootstrap_epochs,
        bootstrap_learning_rate=demo.bootstrap_learning_rate,
        rollouts_first_round=demo.rollouts,
        rollouts=demo.rollouts,
        extra_rollouts_unsolved=demo.rollouts,
        candidates=demo.candidates,
        search_extra=dict(demo.search_extra),
        shard_size=demo.shard_size,
        training=TrainingOptions(
            base_model=demo.base_model,
            continue_training=demo.continue_training,
            epochs=demo.epochs,
            learning_rate=demo.learning_rate,
            batch_size=demo.batch_size,
            extra=dict(demo.train_extra),
            ppm_extra=dict(demo.ppm_extra),
        ),
        evaluation=EvalOptions(
            benchmarks=[f"world={paths['heldout']}"], mode=demo.eval_mode, extra=dict(demo.eval_extra)
        ),
        # the untouched base model cannot write the step format (SmolLM2: 0 of 40 held-out problems): the bootstrap
        # is the "before" of a seed-SFT demo
        evaluate_base=bootstrap is not None,
    )


def _prepare() -> Any:
    """Point Prefect at our settings (home, start-up timeout, result storage) before it is first imported."""
    from infra.settings import configure_prefect_env, get_settings

    settings = get_settings()
    configure_prefect_env(settings)
    return settings


def run(args: argparse.Namespace) -> int:
    action = args.evolve_action
    try:
        settings = _prepare()
        if action == "demo":
            out = args.out or settings.home / "demo"
            params = demo_params(out, args.rounds, args.preset)
        elif action == "round":
            params = round_params_from_args(args)
        else:
            params = evolution_params_from_args(args)
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"rstar {action}: {exc}", file=sys.stderr)
        return 2

    from flows.round import RoundFailed

    result: Any
    try:
        if action == "round":
            from flows.round import evolution_round

            result = evolution_round(params)
            _print_round(result)
        else:
            from flows.self_evolution import self_evolution

            result = self_evolution(params)
            _print_evolution(result, settings)
    except RoundFailed as exc:
        print(f"rstar {action}: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json_out", None):
        args.json_out.write_text(result.model_dump_json(indent=2) + "\n")
    return 0


def _fmt_acc(acc: dict[str, float]) -> str:
    return ", ".join(f"{b} {a:.1%}" for b, a in sorted(acc.items())) or "n/a"


def _print_round(r: Any) -> None:
    cov = "n/a" if r.coverage is None else f"{r.coverage:.1%}"
    print(f"round {r.round_idx}: coverage {cov}, accuracy {_fmt_acc(r.accuracy)}")
    if r.failed_shards:
        print(
            f"  {len(r.failed_shards)} of {r.shards} shards failed (tolerated): {[f['shard'] for f in r.failed_shards]}"
        )
    print(f"  policy:    {r.policy}{'' if r.trained_policy else ' (carried over)'}")
    print(f"  ppm:       {r.ppm}{'' if r.trained_ppm or r.ppm is None else ' (carried over)'}")
    print(f"  artifacts: {r.artifact_prefix}")
    print(f"  MLflow run: {r.mlflow_run_id or 'tracking off'}")


def _print_evolution(result: Any, settings: Any) -> None:
    for r in result.rounds:
        _print_round(r)
    if result.final_ppm_round is not None:
        print("PPM only, on the final policy's own trees:")
        _print_round(result.final_ppm_round)
    print()
    if result.accuracy_before:
        print(f"accuracy before:    {_fmt_acc(result.accuracy_before)}  (the model before any training)")
    if result.accuracy_bootstrap is not None:
        print(f"accuracy bootstrap: {_fmt_acc(result.accuracy_bootstrap)}  (seed SFT: round 1's generator)")
        print(f"bootstrap policy:   {result.bootstrap_policy}")
    judge = " with the final PPM" if result.final_ppm_round is not None and result.final_ppm_round.accuracy else ""
    print(
        f"accuracy after:     {_fmt_acc(result.accuracy_after)}  (round {result.rounds[-1].round_idx}'s policy{judge})"
    )
    print(f"final policy:       {result.policy}")
    print(f"final PPM:          {result.ppm}")
    print(f"MLflow:             {settings.mlflow_tracking_uri} (experiment {settings.mlflow_experiment})")
    if settings.mlflow_tracking_uri.startswith("sqlite"):
        print(f"                    mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    print(f"artifacts:          {settings.artifact_url}")
