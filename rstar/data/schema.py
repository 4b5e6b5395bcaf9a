"""Explicit polars schemas for every table that crosses a stage boundary (documented in docs/data.md).

Producers build frames with `pl.DataFrame(rows, schema=...)` and consumers `validate(df, SCHEMA)` on read, so a
column that changes type or goes missing fails loudly at the boundary instead of silently downstream.
"""

from __future__ import annotations

import polars as pl

# One row per search-tree node (the root included, depth 0, empty step). Written by `rstar synthesize`.
NODES_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.Utf8(),
    "node_id": pl.Utf8(),  # path of child indices from the root: "0", "0.2", "0.2.1"
    "parent_id": pl.Utf8(),  # null for the root
    "depth": pl.Int32(),  # root 0; the first step is depth 1
    "step_text": pl.Utf8(),  # canonical step text incl. delimiter (and, for final code steps, the output block)
    "code": pl.Utf8(),  # this step's own code (the program is the concatenation along the path)
    "output": pl.Utf8(),  # what this step's code printed (its accumulated program's stdout minus the parent's)
    "exec_ok": pl.Boolean(),  # the accumulated code ran without error (null for the root)
    "is_terminal": pl.Boolean(),
    "terminal_reason": pl.Utf8(),  # null | "answer" | "code_error" | "max_depth" | "unparsable"
    "answer": pl.Utf8(),  # the extracted answer of an answer terminal, else null
    "correct": pl.Boolean(),  # graded against gold for answer terminals (null when no gold / not an answer)
    "reward": pl.Float64(),  # terminal reward that was back-propagated (+1 / -1, or the PPM score in eval mode)
    "visits": pl.Int32(),
    "value_sum": pl.Float64(),
    "q": pl.Float64(),  # value_sum / visits (null when never visited)
    "ppm_score": pl.Float64(),  # PPM score of the prefix ending at this node (null when no PPM)
    "expansion_order": pl.Int32(),  # global creation order within the tree (root 0)
    "tokens": pl.Int32(),  # tokens the policy generated for this step
    "round": pl.Int32(),
    "policy_id": pl.Utf8(),
    "ppm_id": pl.Utf8(),
}

# One row per problem searched. Written by `rstar synthesize` beside the nodes.
PROBLEMS_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.Utf8(),
    "question": pl.Utf8(),
    "gold": pl.Utf8(),
    "source": pl.Utf8(),
    "level": pl.Utf8(),
    "solved": pl.Boolean(),  # at least one correct answer terminal
    "rollouts": pl.Int32(),  # rollouts actually run
    "correct_rollouts": pl.Int32(),
    "terminals": pl.Int32(),  # answer terminals reached
    "nodes": pl.Int32(),
    "tokens_generated": pl.Int64(),
    "wall_time_s": pl.Float64(),
    "mode": pl.Utf8(),  # "terminal" | "ppm" | "eval"
    "round": pl.Int32(),
    "policy_id": pl.Utf8(),
    "ppm_id": pl.Utf8(),
    "seed": pl.Int64(),
    "error": pl.Utf8(),  # null, or why this problem's search failed (the shard still completes)
}


class SchemaError(ValueError):
    """A table does not have the columns or types its stage boundary promises."""


def validate(df: pl.DataFrame, schema: dict[str, pl.DataType], *, name: str = "table") -> pl.DataFrame:
    """Check that `df` has every column of `schema` with its type; return it with columns in schema order.

    Extra columns are kept after the schema's (producers may add fields; consumers must not rely on them).
    """
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise SchemaError(f"{name}: missing columns {missing}")
    wrong = [
        f"{c}: {df.schema[c]} (expected {t})"
        for c, t in schema.items()
        if df.schema[c] != t and not (df.schema[c] == pl.Null() and len(df) == 0)
    ]
    if wrong:
        raise SchemaError(f"{name}: wrong column types: {', '.join(wrong)}")
    extra = [c for c in df.columns if c not in schema]
    return df.select([*schema.keys(), *extra])


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------------------------------------------------
# Training data built from the trees (`rstar build-data`, rstar/data/sft.py, pairs.py, qvalues.py)

# One row per selected policy SFT trajectory. Written by `rstar build-data` as sft.parquet.
SFT_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.Utf8(),
    "tree_id": pl.Utf8(),
    "leaf_id": pl.Utf8(),  # node id of the correct answer terminal the trajectory ends in
    "rank": pl.Int32(),  # 0 = best of this problem's correct trajectories
    "prompt": pl.Utf8(),  # build_prompt(question)
    "completion": pl.Utf8(),  # the step texts concatenated (no EOS: the trainer appends it)
    "avg_q": pl.Float64(),
    "min_q": pl.Float64(),
    "num_steps": pl.Int32(),
    "source": pl.Utf8(),
}

# One row per PPM preference pair. Written by `rstar build-data` as pairs.parquet.
PAIRS_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.Utf8(),
    "tree_id": pl.Utf8(),
    "kind": pl.Utf8(),  # "step": two children of one node | "final": two whole trajectories (paper's final-step pairs)
    "node_id": pl.Utf8(),  # the node whose text is the shared prefix (for final pairs: the deepest common ancestor)
    "depth": pl.Int32(),  # depth of the judged (first differing) step
    "prefix": pl.Utf8(),  # prompt + steps up to node_id
    "chosen": pl.Utf8(),  # text after the prefix leading to a correct answer
    "rejected": pl.Utf8(),  # text after the prefix leading to a wrong answer
    "chosen_id": pl.Utf8(),  # child node id (step pairs) or leaf id (final pairs)
    "rejected_id": pl.Utf8(),
    "q_chosen": pl.Float64(),  # Q of the child (step) or average step Q of the trajectory (final)
    "q_rejected": pl.Float64(),
    "pos_count": pl.Int32(),  # chosen / rejected candidates selected at this node
    "neg_count": pl.Int32(),
    "weight": pl.Float64(),  # 1 / (pos_count * neg_count), as in the reference's loss
}

# One row per problem: outcome counts over every tree of the problem. Written as aggregate/problems.parquet.
PROBLEM_STATS_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.Utf8(),
    "source": pl.Utf8(),
    "level": pl.Utf8(),
    "trees": pl.Int32(),
    "nodes": pl.Int32(),
    "terminals": pl.Int32(),  # leaves reached by rollouts (every terminal kind)
    "answers": pl.Int32(),  # answer terminals
    "correct": pl.Int32(),
    "wrong": pl.Int32(),
    "code_errors": pl.Int32(),
    "other_terminals": pl.Int32(),  # max_depth, unparsable, ungraded answers
    "solve_rate": pl.Float64(),  # correct / terminals (null when no terminal)
    "difficulty": pl.Utf8(),  # easy | medium | hard | ungraded | failed
    "avg_steps": pl.Float64(),  # mean depth of the terminals
    "max_q": pl.Float64(),
    "extra_rollouts": pl.Int32(),  # rollouts to add next round (0: none)
    "rerun_reason": pl.Utf8(),  # null | hard | few_correct | failed | missing
}
