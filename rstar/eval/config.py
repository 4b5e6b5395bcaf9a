"""`EvalConfig`: every knob of an evaluation run, as one frozen dataclass with per-field help.

The CLI (`rstar eval`), the library entry point (`rstar.eval.runner.evaluate`) and the Prefect `evaluate` flow all
build one of these; `summary.json` records it next to the numbers it produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EvalConfig:
    """How to run the inference modes (budgets, benchmarks and models are arguments of `evaluate`)."""

    format: str = _f("code", "prompt format: 'code' (our code-augmented steps) or 'cot' (plain chain of thought)")
    temperature: float = _f(0.7, "sampling temperature of the sampling modes (greedy always uses 0)")
    top_p: float = _f(1.0, "nucleus sampling mass of the sampling modes")
    max_steps: int = _f(16, "most steps per trajectory (code format, beam search and MCTS depth)")
    max_step_tokens: int = _f(256, "token limit of one step")
    max_tokens: int = _f(1024, "token limit of a whole chain-of-thought answer (cot format, non-beam modes)")
    execute_intermediate: bool = _f(False, "run every intermediate step's code (stops a trajectory at a code error)")
    beam_candidates: int = _f(4, "beam search: candidate next steps sampled per live beam (the budget is the width)")
    top_k: int = _f(4, "mcts-topk: majority vote over this many highest-PPM answers")
    mcts_candidates: int = _f(8, "MCTS: candidate steps sampled per expansion (the budget is the rollout count)")
    mcts_c_puct: float = _f(2.0, "MCTS: UCT exploration constant")
    seed: int = _f(0, "run seed; per-sample seeds derive from it, the problem id, the sample index and the depth")
    batch_size: int = _f(16, "problems per batch; results are written after each batch")
    ppm_batch_size: int = _f(64, "texts per PPM scoring call")
    max_failed_batches: int = _f(2, "consecutive failed batches after which a cell's remaining problems are skipped")
    use_chat_template: bool = _f(True, "cot format: render prompts through the tokenizer's chat template when present")

    def __post_init__(self) -> None:
        from rstar.eval.prompts import FORMATS

        if self.format not in FORMATS:
            raise ValueError(f"EvalConfig.format must be one of {FORMATS}, got {self.format!r}")
        if self.temperature < 0:
            raise ValueError("EvalConfig.temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("EvalConfig.top_p must be in (0, 1]")
        for name in ("max_steps", "max_step_tokens", "max_tokens", "beam_candidates", "top_k", "mcts_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1")
        for name in ("batch_size", "ppm_batch_size", "max_failed_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
