"""MCTS over code-augmented chain-of-thought steps (rStar-Math), with a batched multi-tree driver.

    from rstar.search import synthesize, SearchConfig
    result = synthesize(problems, policy, executor, SearchConfig(rollouts=16), reward_model=None)

Modules: `tree` (nodes, back-up, rows), `uct` (selection), `mcts` (one problem's search as a state machine),
`driver` (many trees, one model call per tick), `io` (streaming Parquet parts, resume, summary). docs/search.md
explains the algorithm; docs/data.md the output tables.
"""

from rstar.config import SearchConfig
from rstar.search.driver import (
    ProblemResult,
    SearchAborted,
    SearchStats,
    SynthesisResult,
    run_search,
    sampling_spec,
    synthesize,
)
from rstar.search.io import load_synthesis, synthesize_to_dir
from rstar.search.mcts import TreeSearch, default_grader, expansion_seed
from rstar.search.tree import Node, Tree
from rstar.search.uct import select_child, uct_score

__all__ = [
    "Node",
    "ProblemResult",
    "SearchAborted",
    "SearchConfig",
    "SearchStats",
    "SynthesisResult",
    "Tree",
    "TreeSearch",
    "default_grader",
    "expansion_seed",
    "load_synthesis",
    "run_search",
    "sampling_spec",
    "select_child",
    "synthesize",
    "synthesize_to_dir",
    "uct_score",
]
