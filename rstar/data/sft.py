"""Select the policy's SFT data from search trees: the top-k correct trajectories of each problem, ranked by Q.

rStar-Math trains the policy only on *step-verified* trajectories: root-to-leaf paths that end in a correct answer
and whose code ran, chosen by their Q-values rather than at random (paper, Table 8: 78.4 vs 72.4 on MATH).

    sft = build_sft(nodes, problems, k=2)            # SFT_SCHEMA frame, one row per selected trajectory
    sft, stats = sft_from_trees(trees, problems, k=2)

Selection per problem (every tree of the problem pooled):

1. candidates: trajectories ending in a correct answer terminal; those with a failing step (`exec_ok` False) are
   dropped, as the reference drops traces containing an error;
2. ranked by average step Q (higher first), ties by minimum step Q (higher first), then fewer steps, then tree id and
   leaf id in natural order (a deterministic tie-break);
3. a trajectory whose text equals a better-ranked one is skipped (two trees of one problem can repeat a path);
4. the first `k` are kept.

Rows are rendered exactly as the search parses them: `prompt = build_prompt(question)`, `completion` = the step texts
concatenated (`rstar.verify.steps.render_trajectory`); the trainer appends EOS after the completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

from rstar.data.schema import PROBLEMS_SCHEMA, SFT_SCHEMA, validate
from rstar.data.trees import Trajectory, Tree, build_trees, iter_by_problem, natural_key, questions
from rstar.verify.steps import build_prompt


@dataclass
class SFTStats:
    """What the selection saw and why problems or trajectories were left out."""

    problems: int = 0  # problems with at least one tree
    with_correct: int = 0  # problems with at least one correct trajectory (before filters)
    selected_problems: int = 0  # problems contributing at least one row
    rows: int = 0
    dropped_exec_error: int = 0  # correct trajectories dropped because a step's code failed
    duplicates: int = 0  # correct trajectories skipped because a better one has the same text
    missing_question: int = 0  # problems with trees but no question in the problem table

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def rank_key(t: Trajectory) -> tuple:
    """Sort key, best first: average Q, then minimum Q (both descending), fewer steps, tree id, leaf id."""
    return (-t.avg_q, -t.min_q, t.num_steps, t.tree_id, natural_key(t.leaf_id))


def select_correct(
    trees: Sequence[Tree], k: int, *, drop_exec_errors: bool = True, stats: SFTStats | None = None
) -> list[Trajectory]:
    """The top-`k` correct trajectories over the trees of one problem (see the module docstring for the rules)."""
    stats = stats if stats is not None else SFTStats()
    correct = [t for tree in trees for t in tree.trajectories() if t.outcome == "correct"]
    if drop_exec_errors:
        kept = [t for t in correct if not t.has_exec_error]
        stats.dropped_exec_error += len(correct) - len(kept)
        correct = kept
    chosen: list[Trajectory] = []
    seen: set[str] = set()
    for t in sorted(correct, key=rank_key):
        if t.completion in seen:
            stats.duplicates += 1
            continue
        seen.add(t.completion)
        chosen.append(t)
        if len(chosen) == k:
            break
    return chosen


def sft_from_trees(
    trees: Sequence[Tree],
    problems: pl.DataFrame,
    *,
    k: int = 2,
    drop_exec_errors: bool = True,
    template: str | None = None,
) -> tuple[pl.DataFrame, SFTStats]:
    """SFT rows (SFT_SCHEMA) and selection statistics for already-built trees."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    problems = validate(problems, PROBLEMS_SCHEMA, name="problems")
    qs = questions(problems)
    sources = dict(zip(problems["problem_id"].to_list(), problems["source"].to_list(), strict=True))
    stats = SFTStats()
    rows: list[dict] = []
    for pid, group in iter_by_problem(trees):
        stats.problems += 1
        if any(t.flags(t.root)[0] for t in group):
            stats.with_correct += 1
        if pid not in qs:
            stats.missing_question += 1
            continue
        prompt = build_prompt(qs[pid]) if template is None else build_prompt(qs[pid], template)
        chosen = select_correct(group, k, drop_exec_errors=drop_exec_errors, stats=stats)
        if chosen:
            stats.selected_problems += 1
        for rank, t in enumerate(chosen):
            rows.append(
                {
                    "problem_id": pid,
                    "tree_id": t.tree_id,
                    "leaf_id": t.leaf_id,
                    "rank": rank,
                    "prompt": prompt,
                    "completion": t.completion,
                    "avg_q": t.avg_q,
                    "min_q": t.min_q,
                    "num_steps": t.num_steps,
                    "source": sources.get(pid),
                }
            )
    stats.rows = len(rows)
    return pl.DataFrame(rows, schema=SFT_SCHEMA), stats


def build_sft(
    nodes: pl.DataFrame,
    problems: pl.DataFrame,
    k: int = 2,
    *,
    drop_exec_errors: bool = True,
    template: str | None = None,
) -> pl.DataFrame:
    """The top-`k` correct trajectories of every problem, rendered for SFT (SFT_SCHEMA). Problems without a correct
    trajectory contribute nothing; an empty node table gives an empty frame."""
    trees, _ = build_trees(nodes)
    df, _ = sft_from_trees(trees, problems, k=k, drop_exec_errors=drop_exec_errors, template=template)
    return df
