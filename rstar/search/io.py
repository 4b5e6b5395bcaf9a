"""Streaming Parquet output of a synthesis run, with resume. Layout (docs/data.md):

    OUT/nodes/part-000001.parquet      NODES_SCHEMA rows of the problems finished in that flush
    OUT/problems/part-000001.parquet   PROBLEMS_SCHEMA rows of the same problems (written second: the commit marker)
    OUT/summary.json                   totals over the whole directory, this run's stats, config, model ids

    summary = synthesize_to_dir(problems, "out/shard-0", policy, executor, SearchConfig())
    nodes, problems = load_synthesis("out/shard-0")      # always read through this (see below)

Finished problems are buffered and flushed every `flush_every` problems or `flush_interval_s` seconds, and on any
exit (exception, abort, Ctrl-C): a hard kill loses only the in-flight trees and at most one flush interval of
finished ones. Each part file is written to a hidden temporary name and renamed, so readers never see half a file.

Resume: re-running on the same directory skips the problems it already holds without an error. Before searching,
it tidies the directory so that every problem appears in exactly one part and plain
`pl.read_parquet("OUT/nodes/*.parquet")` stays correct: it deletes node parts whose problem part was never written
(a kill between the two writes) and leftover temporary files, and rewrites the parts holding problems that failed
and are about to be searched again without them (nodes first, so a crash midway leaves at worst a failed problem row
with fewer nodes, which the next resume retries again). `load_synthesis` additionally keeps only the latest part's
rows per problem and ignores node rows without a problem row, so it is correct on any directory.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from rstar.config import SearchConfig
from rstar.data.schema import NODES_SCHEMA, PROBLEMS_SCHEMA, validate
from rstar.search.driver import ProblemResult, SearchStats, frames, synthesize
from rstar.search.mcts import Grader
from rstar.types import CodeExecutor, PolicyLM, Problem, RewardModel

PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")


def _parts(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PART_RE.match(p.name))]
    return sorted(found)


def _write_atomic(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)


class PartWriter:
    """Buffers finished problems and writes them as numbered part files (nodes first, then problems)."""

    def __init__(self, out_dir: str | Path, *, flush_every: int = 64, flush_interval_s: float = 10.0) -> None:
        self.out = Path(out_dir)
        self.nodes_dir = self.out / "nodes"
        self.problems_dir = self.out / "problems"
        self.nodes_dir.mkdir(parents=True, exist_ok=True)
        self.problems_dir.mkdir(parents=True, exist_ok=True)
        existing = _parts(self.nodes_dir) + _parts(self.problems_dir)
        self.next_seq = max((s for s, _ in existing), default=0) + 1
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self._buffer: list[ProblemResult] = []
        self._last_flush = time.monotonic()
        self.written_problems = 0
        self.parts_written = 0

    def add(self, result: ProblemResult) -> None:
        self._buffer.append(result)
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        nodes, problems = frames(self._buffer)
        name = f"part-{self.next_seq:06d}.parquet"
        _write_atomic(nodes, self.nodes_dir / name)
        _write_atomic(problems, self.problems_dir / name)
        self.next_seq += 1
        self.parts_written += 1
        self.written_problems += len(self._buffer)
        self._buffer.clear()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _latest_problem_rows(out: Path, columns: list[str] | None = None) -> pl.DataFrame:
    frames_: list[pl.DataFrame] = []
    for seq, path in _parts(out / "problems"):
        df = pl.read_parquet(path, columns=columns)
        frames_.append(df.with_columns(pl.lit(seq, dtype=pl.Int64).alias("_part")))
    if not frames_:
        schema = {c: PROBLEMS_SCHEMA[c] for c in (columns or list(PROBLEMS_SCHEMA))}
        return pl.DataFrame(schema={**schema, "_part": pl.Int64()})
    df = pl.concat(frames_, how="vertical")
    return df.sort("_part", maintain_order=True).unique(subset="problem_id", keep="last", maintain_order=True)


def finished_problem_ids(out_dir: str | Path, *, include_failed: bool = False) -> set[str]:
    """Ids of the problems a directory already holds (those whose latest row has no error, unless include_failed)."""
    df = _latest_problem_rows(Path(out_dir), columns=["problem_id", "error"])
    if not include_failed:
        df = df.filter(pl.col("error").is_null())
    return set(df["problem_id"].to_list())


def load_synthesis(out_dir: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(nodes, problems) of a synthesis directory, latest attempt per problem, validated against the schemas."""
    out = Path(out_dir)
    problems = _latest_problem_rows(out)
    keys = problems.select("problem_id", "_part")
    node_frames = [
        pl.read_parquet(path).with_columns(pl.lit(seq, dtype=pl.Int64).alias("_part"))
        for seq, path in _parts(out / "nodes")
    ]
    if node_frames:
        nodes = pl.concat(node_frames, how="vertical").join(keys, on=["problem_id", "_part"], how="semi")
    else:
        nodes = pl.DataFrame(schema={**NODES_SCHEMA, "_part": pl.Int64()})
    nodes = validate(nodes.drop("_part"), NODES_SCHEMA, name=f"{out}/nodes")
    problems = validate(
        problems.sort("_part", maintain_order=True).drop("_part"), PROBLEMS_SCHEMA, name=f"{out}/problems"
    )
    return nodes, problems


def summarize_dir(out_dir: str | Path) -> dict[str, Any]:
    """Totals over every problem a synthesis directory holds (latest attempt each)."""
    df = _latest_problem_rows(Path(out_dir))
    n = len(df)
    failed = int(df["error"].is_not_null().sum()) if n else 0
    solved = int(df["solved"].sum()) if n else 0
    graded = df.filter(pl.col("gold") != "") if n else df
    return {
        "problems": n,
        "failed": failed,
        "solved": solved,
        "solve_rate": round(solved / len(graded), 4) if len(graded) else None,
        "rollouts": int(df["rollouts"].sum()) if n else 0,
        "correct_rollouts": int(df["correct_rollouts"].sum()) if n else 0,
        "nodes": int(df["nodes"].sum()) if n else 0,
        "tokens_generated": int(df["tokens_generated"].sum()) if n else 0,
        "errors": df.filter(pl.col("error").is_not_null()).select("problem_id", "error").head(20).to_dicts()
        if n
        else [],
    }


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def prepare_resume(out_dir: str | Path, retry: set[str]) -> dict[str, int]:
    """Tidy a synthesis directory before resuming (see the module docstring); `retry` are the failed problem ids that
    will be searched again. Returns counts of what was removed."""
    out = Path(out_dir)
    removed = {"orphan_parts": 0, "temp_files": 0, "retried_problems": 0}
    for folder in (out / "nodes", out / "problems"):
        if folder.is_dir():
            for tmp in folder.glob(".part-*.tmp"):
                tmp.unlink()
                removed["temp_files"] += 1
    for _, path in _parts(out / "nodes"):
        if not (out / "problems" / path.name).exists():
            path.unlink()
            removed["orphan_parts"] += 1
    if not retry:
        return removed
    for _, ppath in _parts(out / "problems"):
        probs = pl.read_parquet(ppath)
        hit = probs["problem_id"].is_in(list(retry))
        if not hit.any():
            continue
        removed["retried_problems"] += int(hit.sum())
        npath = out / "nodes" / ppath.name
        keep = probs.filter(~hit)
        if npath.exists():
            nodes = pl.read_parquet(npath)
            nodes = nodes.filter(pl.col("problem_id").is_in(keep["problem_id"].to_list()))
            if keep.height:
                _write_atomic(nodes, npath)
            else:
                npath.unlink()
        if keep.height:
            _write_atomic(keep, ppath)
        else:
            ppath.unlink()
    return removed


def synthesize_to_dir(
    problems: Iterable[Problem],
    out_dir: str | Path,
    policy: PolicyLM,
    executor: CodeExecutor,
    config: SearchConfig,
    *,
    reward_model: RewardModel | None = None,
    grader: Grader | None = None,
    rollouts_for: Mapping[str, int] | None = None,
    round_idx: int = 0,
    resume: bool = True,
    flush_every: int = 64,
    flush_interval_s: float = 10.0,
    on_problem_done: Callable[[ProblemResult], None] | None = None,
    on_tick: Callable[[SearchStats], None] | None = None,
    extra_summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Search `problems`, streaming finished ones to Parquet parts under `out_dir`; returns (and writes) the summary.

    With `resume` (the default) problems the directory already holds without an error are skipped; without it a
    directory that already holds parts is refused (`FileExistsError`) rather than mixed with a new run.
    The summary is written even when the run stops early (`status` says how it ended) and the exception re-raised.
    """
    out = Path(out_dir)
    if not resume and (_parts(out / "problems") or _parts(out / "nodes")):
        raise FileExistsError(f"{out} already holds synthesis parts; resume, or choose an empty directory")
    done = finished_problem_ids(out)
    todo = [p for p in problems if p.id not in done]
    failed_before = finished_problem_ids(out, include_failed=True) - done
    tidied = prepare_resume(out, {p.id for p in todo} & failed_before)
    summary: dict[str, Any] = {
        "status": "running",
        "skipped_already_done": len(done),
        "to_search": len(todo),
        "resume_cleanup": tidied,
        "config": config.to_dict(),
        "policy_id": str(policy.model_id),
        "ppm_id": str(reward_model.model_id) if reward_model is not None and config.uses_ppm else None,
        "round": round_idx,
    }
    if extra_summary:
        summary.update(extra_summary)
    stats = SearchStats()
    try:
        with PartWriter(out, flush_every=flush_every, flush_interval_s=flush_interval_s) as writer:

            def done_cb(res: ProblemResult) -> None:
                writer.add(res)
                if on_problem_done is not None:
                    on_problem_done(res)

            def tick_cb(s: SearchStats) -> None:
                nonlocal stats
                stats = s
                if on_tick is not None:
                    on_tick(s)

            result = synthesize(
                todo,
                policy,
                executor,
                config,
                reward_model=reward_model,
                grader=grader,
                rollouts_for=rollouts_for,
                round_idx=round_idx,
                on_problem_done=done_cb,
                on_tick=tick_cb,
                collect=False,
            )
            stats = result.stats
        summary["status"] = "complete"
    except BaseException as exc:
        summary["status"] = f"stopped: {type(exc).__name__}: {exc}"
        raise
    finally:
        summary["this_run"] = stats.to_dict()
        summary["totals"] = summarize_dir(out)
        write_summary(out, summary)
    return summary
