"""Load problem sets (question + gold answer) from JSONL, JSON, Parquet or a Hugging Face dataset id.

A problem file is the input of a self-evolution round and of `rstar synthesize`. Field names are configurable because
every public dataset names them differently (`question`/`problem`, `answer`/`solution`/`final_answer`). Loading never
silently drops data: a malformed line is reported with its line number in `LoadReport.errors` and skipped; a
duplicate question is reported and skipped; the caller decides whether errors are fatal.

    problems, report = load_problems("train.jsonl")
    problems, report = load_problems("AI-MO/NuminaMath-CoT", split="train", answer_field="solution")

Problem ids come from an id field when the file has one (`id`, `unique_id`, `index`, `idx`, or `id_field`), else
from a content hash of the question, so the same problem keeps its id across shards, rounds and re-orderings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.types import Problem
from rstar.verify.boxed import last_boxed

QUESTION_FIELDS = ("question", "problem", "query", "prompt", "input")
ANSWER_FIELDS = ("answer", "final_answer", "gold", "target", "solution")
ID_FIELDS = ("id", "unique_id", "problem_id", "index", "idx")


class ProblemFileError(ValueError):
    """The problem source cannot be read at all (missing file, unknown format, no usable field)."""


@dataclass
class LoadReport:
    """What happened while loading: rows read, problems kept, and every row that was skipped and why."""

    source: str
    rows: int = 0
    kept: int = 0
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0

    @property
    def skipped(self) -> int:
        return self.rows - self.kept

    def summary(self) -> str:
        msg = f"{self.source}: {self.kept} problems from {self.rows} rows"
        if self.errors:
            msg += f", {len(self.errors)} skipped (first: {self.errors[0]})"
        if self.duplicates:
            msg += f", {self.duplicates} duplicate questions skipped"
        return msg


def problem_id_for(question: str) -> str:
    """Stable content-derived id: the same question text always gets the same id."""
    return "p-" + hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:12]


def _pick(row: Mapping[str, Any], explicit: str | None, candidates: Sequence[str]) -> str | None:
    if explicit is not None:
        return explicit if explicit in row else None
    for name in candidates:
        if name in row:
            return name
    return None


def _iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line_or_row_number, row, error) from a local file."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    suffix = suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    yield lineno, None, f"line {lineno}: not valid JSON ({exc.__class__.__name__}: {exc})"
                    continue
                if not isinstance(obj, dict):
                    yield lineno, None, f"line {lineno}: expected a JSON object, got {type(obj).__name__}"
                    continue
                yield lineno, obj, None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProblemFileError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            # {"data": [...]} / {"problems": [...]} / {"train": [...]} wrappers.
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ProblemFileError(f"{path}: expected a JSON list of objects (or an object holding one list)")
            data = lists[0]
        if not isinstance(data, list):
            raise ProblemFileError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, obj in enumerate(data, start=1):
            if not isinstance(obj, dict):
                yield i, None, f"item {i}: expected an object, got {type(obj).__name__}"
                continue
            yield i, obj, None
    elif suffix == ".parquet":
        import polars as pl

        for i, obj in enumerate(pl.read_parquet(path).iter_rows(named=True), start=1):
            yield i, obj, None
    else:
        raise ProblemFileError(f"{path}: unknown problem file format {suffix!r} (use .jsonl, .json or .parquet)")


def _iter_hub(
    dataset_id: str, split: str, subset: str | None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise ProblemFileError("loading from the Hugging Face hub needs the `datasets` package") from exc
    try:
        ds = datasets.load_dataset(dataset_id, subset, split=split)
    except Exception as exc:
        raise ProblemFileError(
            f"{dataset_id!r} is neither a local file nor a loadable Hugging Face dataset "
            f"(split={split!r}): {exc.__class__.__name__}: {exc}"
        ) from exc
    for i, obj in enumerate(ds, start=1):
        yield i, dict(obj), None


def iter_problem_rows(
    source: str | Path, *, split: str = "train", subset: str | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Rows of a local file, or of a hub dataset when `source` is not an existing path."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise ProblemFileError(f"{path} is a directory; pass a .jsonl, .json or .parquet file")
        yield from _iter_rows(path)
        return
    text = str(source)
    if text.endswith((".jsonl", ".json", ".parquet", ".ndjson")) or text.startswith(("/", "./", "../")):
        raise ProblemFileError(f"problem file not found: {text}")
    yield from _iter_hub(text, split, subset)


def rows_to_problems(
    rows: Iterable[tuple[int, dict[str, Any] | None, str | None]],
    *,
    source: str,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    require_answer: bool = True,
    answer_transform: Any = None,
) -> tuple[list[Problem], LoadReport]:
    """Turn raw rows into `Problem`s, recording every skipped row in the report."""
    report = LoadReport(source=source)
    problems: list[Problem] = []
    seen: set[str] = set()
    for n, row, err in rows:
        report.rows += 1
        if err is not None or row is None:
            report.errors.append(err or f"row {n}: unreadable")
            continue
        qf = _pick(row, question_field, QUESTION_FIELDS)
        if qf is None or not isinstance(row[qf], str) or not row[qf].strip():
            want = question_field or "/".join(QUESTION_FIELDS)
            report.errors.append(f"row {n}: no question field ({want})")
            continue
        question = row[qf].strip()
        af = _pick(row, answer_field, ANSWER_FIELDS)
        raw_answer = row.get(af) if af is not None else None
        answer = "" if raw_answer is None else str(raw_answer).strip()
        if answer and answer_transform is not None:
            answer = answer_transform(answer)
        elif answer and af == "solution":
            answer = _boxed_or_same(answer)
        if require_answer and not answer:
            want = answer_field or "/".join(ANSWER_FIELDS)
            report.errors.append(f"row {n}: no answer ({want})")
            continue
        idf = _pick(row, id_field, ID_FIELDS)
        pid = str(row[idf]) if idf is not None and row.get(idf) is not None else problem_id_for(question)
        if pid in seen:
            report.duplicates += 1
            continue
        seen.add(pid)
        known = {qf, af, idf, "source", "level", "subject", "type"}
        meta = {k: v for k, v in row.items() if k not in known and isinstance(v, str | int | float | bool)}
        level = row.get("level")
        subject = row.get("subject", row.get("type"))
        problems.append(
            Problem(
                id=pid,
                question=question,
                answer=answer,
                source=str(row.get("source") or source),
                level=None if level is None else str(level),
                subject=None if subject is None else str(subject),
                meta=meta,
            )
        )
        report.kept += 1
    return problems, report


def load_problems(
    source: str | Path,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    split: str = "train",
    subset: str | None = None,
    require_answer: bool = True,
    limit: int | None = None,
) -> tuple[list[Problem], LoadReport]:
    """Load problems from a local JSONL/JSON/Parquet file or a Hugging Face dataset id.

    Raises `ProblemFileError` when the source cannot be read at all; per-row problems go into the report.
    When `answer_field` names a full solution (e.g. NuminaMath's `solution`), the last `\\boxed{}` is taken as the answer.
    """
    rows = iter_problem_rows(source, split=split, subset=subset)
    problems, report = rows_to_problems(
        rows,
        source=Path(str(source)).stem if Path(str(source)).exists() else str(source),
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        require_answer=require_answer,
    )
    if report.rows > 0 and report.kept == 0 and report.errors:
        raise ProblemFileError(f"no usable problems in {source}: {report.errors[0]}")
    if limit is not None:
        problems = problems[:limit]
    return problems, report


def _boxed_or_same(text: str) -> str:
    """The content of the last `\\boxed{...}` in a solution, or the text itself when there is none."""
    boxed = last_boxed(text)
    return text if boxed is None else boxed


def write_problems_jsonl(problems: Iterable[Problem], path: str | Path) -> int:
    """Write problems as JSONL (id, question, answer, source, level, subject + meta). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for p in problems:
            row: dict[str, Any] = {"id": p.id, "question": p.question, "answer": p.answer, "source": p.source}
            if p.level is not None:
                row["level"] = p.level
            if p.subject is not None:
                row["subject"] = p.subject
            row.update({k: v for k, v in p.meta.items() if k not in row})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
