"""The `self_evolution` flow: rounds 1..R of rStar-Math, each an `evolution_round` subflow fed by the one before.

    from flows.params import EvolutionParams, TrainingOptions
    from flows.self_evolution import self_evolution
    result = self_evolution(EvolutionParams(rounds=4, problems="train.jsonl",
                                            bootstrap_policy="openai:http://gpu:8000/v1#deepseek-coder-v2",
                                            training=TrainingOptions(base_model="hf:/models/qwen2.5-math-7b")))

As in the paper: round 1 is terminal-guided MCTS with a bootstrap generator (any spec: a large model behind an
OpenAI-compatible server, or a seed-SFT checkpoint), 8 rollouts; round 2 terminal-guided with round 1's policy, 16
rollouts; from round 3 (`ppm_from_round`) PPM-augmented with the previous round's PPM. The problems the previous
round left unsolved (or short of correct trajectories) get extra rollouts (its aggregate's re-run list). The rule
is the pure function `flows.params.round_params`.

Before round 1 the model being evolved (`training.base_model`, else the bootstrap policy) is evaluated, so the
summary shows accuracy before and after. With `bootstrap_sft` (and no `bootstrap_policy`) a round 0 first fine-tunes
`training.base_model` on that seed SFT set (tasks/bootstrap.py): the CPU-sized stand-in for the paper's large
bootstrap model; the result generates round 1's trees and is evaluated too. With `final_ppm` one more, PPM-only
round follows the last one: the final policy searches again (the problems, or `final_ppm_problems`) and a PPM is
trained on its own trees (`flows.params.final_ppm_params`; a 135M PPM judges the policy whose trees it learned from
better than the next one, BENCHMARKS.md). Each round is a subflow named `round-k`; re-running the evolution with
the same parameters re-uses every finished stage of every round.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.params import (
    EvolutionParams,
    EvolutionResult,
    PreviousRound,
    RoundResult,
    final_ppm_params,
    round_params,
)
from flows.round import _param, evolution_round
from tasks.bootstrap import ingest_seed_sft
from tasks.common import run_logger
from tasks.evaluate import accuracy_of, evaluate_task
from tasks.train import train_policy_task


def evolution_run_name() -> str:
    first = _param("params", "first_round", 1)
    rounds = _param("params", "rounds", 1)
    return f"evolve-r{first}-r{first + rounds - 1}"


@flow(name="self-evolution", flow_run_name=evolution_run_name)
def self_evolution(params: EvolutionParams) -> EvolutionResult:
    """Rounds `first_round .. first_round + rounds - 1`; see the module docstring."""
    logger = run_logger()
    ev = params.evaluation
    before: dict[str, float] = {}
    base = params.training.base_model or params.bootstrap_policy
    assert base is not None  # EvolutionParams guarantees a base model or a bootstrap
    if params.evaluate_base and ev.enabled:
        ref = evaluate_task(
            base, None, ev.benchmarks, ev.mode, ev.budget, ev.limit, params.seed, params.first_round - 1, ev.extra
        )
        before = accuracy_of(ref)
        logger.info("before round %d: %s accuracy %s", params.first_round, base, before)

    bootstrap: dict[str, float] | None = None
    if params.bootstrap_sft is not None and params.bootstrap_policy is None:
        # Round 0: fine-tune the base model on the seed SFT set; the result generates round 1's trees.
        seed_sft = ingest_seed_sft(params.bootstrap_sft)
        boot = train_policy_task(seed_sft, base, params.bootstrap_config(), params.seed, 0)
        logger.info("bootstrap policy (seed SFT of %s on %s): %s", base, params.bootstrap_sft, boot.uri)
        params = params.model_copy(update={"bootstrap_policy": boot.uri})
        if ev.enabled:
            bootstrap = accuracy_of(
                evaluate_task(boot.uri, None, ev.benchmarks, ev.mode, ev.budget, ev.limit, params.seed, 0, ev.extra)
            )
            logger.info("bootstrap policy accuracy %s", bootstrap)

    results: list[RoundResult] = []
    previous: PreviousRound | None = None
    for k in range(params.first_round, params.first_round + params.rounds):
        result = evolution_round(round_params(params, k, previous))
        results.append(result)
        previous = PreviousRound(policy=result.policy, ppm=result.ppm, aggregate=result.aggregate)

    final: RoundResult | None = None
    if params.final_ppm and previous is not None:
        k = params.first_round + params.rounds
        final = evolution_round(final_ppm_params(params, k, previous))
        logger.info("PPM-only round %d: the final policy's own PPM %s", k, final.ppm)

    judged = [*results, *([final] if final is not None else [])]
    benchmarks = sorted({b for r in judged for b in r.accuracy} | set(before))

    def row(label: int | str, coverage: float | None, accuracy: dict[str, float], policy: str | None) -> dict[str, Any]:
        cov = None if coverage is None else round(coverage, 4)
        return {"round": label, "coverage": cov, **{b: accuracy.get(b) for b in benchmarks}, "policy": policy}

    table = [row("base", None, before, base)]
    if bootstrap is not None:
        table.append(row("bootstrap", None, bootstrap, params.bootstrap_policy))
    table += [row(r.round_idx, r.coverage, r.accuracy, r.policy) for r in results]
    if final is not None:
        table.append(row(f"{final.round_idx} (PPM only)", final.coverage, final.accuracy, final.policy))
    create_table_artifact(key="self-evolution-summary", table=table, description="coverage and accuracy per round")
    last = results[-1]
    return EvolutionResult(
        rounds=results,
        accuracy_before=before,
        accuracy_bootstrap=bootstrap,
        bootstrap_policy=params.bootstrap_policy,
        accuracy_after=(final.accuracy if final is not None and final.accuracy else last.accuracy),
        policy=last.policy,
        ppm=final.ppm if final is not None else last.ppm,
        final_ppm_round=final,
    )
