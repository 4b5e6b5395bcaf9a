"""Inference modes, one module per strategy, behind the `MODES` dispatch dict (as in search-and-learn).

| mode | module | budget means | prediction |
|---|---|---|---|
| `greedy` | `greedy` | (ignored, 1) | the single temperature-0 trajectory's answer |
| `maj` | `majority` | samples k | most common answer by equivalence class (maj@k) |
| `bon` | `best_of_n` | samples N | answer of the trajectory the PPM scores highest |
| `wmaj` | `best_of_n` | samples N | PPM-weighted majority over the same scored samples (weight `(1 + score) / 2`) |
| `beam` | `beam` | beam width | highest-PPM finished trajectory of a step-level beam search |
| `mcts` | `mcts` | rollouts | highest-PPM answer trajectory of a PPM-guided MCTS (the paper) |
| `mcts-topk` | `mcts` | rollouts | majority over the top-K PPM-ranked answers of the same MCTS (the reference) |
| `mcts-wmaj` | `mcts` | rollouts | PPM-weighted majority over every answer of the same MCTS |
| `mcts-plain` | `mcts` | rollouts | majority over the answers of an MCTS run without the PPM (the baseline) |

Each is `run(problems, ctx, budget) -> list[ProblemResult]`; see `rstar.eval.modes.base`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rstar.eval.metrics import ProblemResult
from rstar.eval.modes import beam, best_of_n, greedy, majority, mcts
from rstar.eval.modes.base import EvalContext
from rstar.types import Problem

ModeFn = Callable[[Sequence[Problem], EvalContext, int], list[ProblemResult]]

MODES: dict[str, ModeFn] = {
    "greedy": greedy.run,
    "maj": majority.run,
    "bon": best_of_n.run,
    "wmaj": best_of_n.run_weighted,
    "beam": beam.run,
    "mcts": mcts.run_best,
    "mcts-topk": mcts.run_topk,
    "mcts-wmaj": mcts.run_weighted,
    "mcts-plain": mcts.run_plain,
}
ALIASES: dict[str, str] = {
    "majority": "maj",
    "self-consistency": "maj",
    "sc": "maj",
    "best-of-n": "bon",
    "best_of_n": "bon",
    "mcts_topk": "mcts-topk",
    "mcts-top-k": "mcts-topk",
    "mcts_plain": "mcts-plain",
    "weighted-maj": "wmaj",
    "weighted_maj": "wmaj",
    "mcts_wmaj": "mcts-wmaj",
    "mcts-weighted": "mcts-wmaj",
}
PPM_MODES = frozenset({"bon", "wmaj", "beam", "mcts", "mcts-topk", "mcts-wmaj"})
BUDGETLESS_MODES = frozenset({"greedy"})


def resolve_mode(name: str) -> str:
    """The canonical mode name for `name` (aliases accepted); ValueError listing the modes for an unknown one."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in MODES:
        raise ValueError(f"unknown mode {name!r}: use one of {', '.join(MODES)}")
    return key


__all__ = ["ALIASES", "BUDGETLESS_MODES", "MODES", "PPM_MODES", "EvalContext", "ModeFn", "resolve_mode"]
