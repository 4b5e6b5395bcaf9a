"""Evaluation harness: benchmarks, test-time inference modes, one grader, reports with plots, decontamination.

    from rstar.eval import evaluate, EvalConfig
    report = evaluate("hf:ckpt/policy", ["math500", "gsm8k"], modes=["greedy", "maj"], budgets=[1, 8],
                      out_dir="runs/eval", data_dir="data/benchmarks")

| module | what |
|---|---|
| `benchmarks` | MATH500, GSM8K, AIME 2024, AMC 2023 loaders (local files or the HF hub), custom sets by field mapping |
| `prompts` | the code-augmented and plain chain-of-thought prompt formats, `Trajectory` |
| `engine` | batched lock-step trajectory generation with per-sample seeds, PPM scoring |
| `modes/` | one module per strategy (greedy, majority, best_of_n, beam, mcts) behind the `MODES` dispatch dict |
| `metrics` | `ProblemResult`, majority votes and their ties, PPM picks, unbiased pass@k, per-cell summaries |
| `report` | results Parquet schema, Markdown tables, the accuracy-vs-budget PNG, `write_reports` |
| `runner` | `evaluate(...) -> EvalReport`: the grid of cells, failure containment, incremental writes |
| `decontam` | n-gram overlap between training problems and benchmarks |

docs/evaluation.md explains how accuracy is computed. Importing this package stays light (no torch, no matplotlib):
`evaluate`, `EvalConfig` and `load_benchmark` are resolved on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalConfig", "evaluate", "load_benchmark"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from rstar.eval.runner import evaluate

        return evaluate
    if name == "EvalConfig":
        from rstar.eval.config import EvalConfig

        return EvalConfig
    if name == "load_benchmark":
        from rstar.eval.benchmarks import load_benchmark

        return load_benchmark
    raise AttributeError(f"module 'rstar.eval' has no attribute {name!r}")
