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
