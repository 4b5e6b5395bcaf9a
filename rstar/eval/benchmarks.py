"""Benchmark loaders: MATH500, GSM8K, AIME 2024 and AMC 2023 built in, any other problem set via a field mapping.

A benchmark is a `BenchmarkSpec`: where to find it (file names inside a data directory, a Hugging Face hub id), which
fields hold the question / answer / id, and how to normalise its gold answers so reports show clean golds (GSM8K's
`... #### 1,234` -> `1234`, AMC's `27.0` -> `27`, AIME's `025` -> `25`). The grader normalises too; doing it at load
time keeps the per-problem tables readable and majority votes keyed on the same form as the gold.

    problems, report = load_benchmark("math500", data_dir="data/benchmarks")   # a local copy
    problems, report = load_benchmark("gsm8k")                                 # the HF hub (needs network)
    problems, report = load_benchmark("mine=/data/my_test.jsonl?question=prompt&answer=final")

Loading builds on `rstar.data.problems`: a row without an answer is recorded in `report.errors` and skipped, the rest
loads. An unknown benchmark name raises `UnknownBenchmarkError` listing the known ones; a source that cannot be read at
all raises `BenchmarkLoadError`. Both subclass `ValueError`, so a harness can record them and go on.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from rstar.data.problems import LoadReport, ProblemFileError, iter_problem_rows, rows_to_problems
from rstar.types import Problem

DATA_DIR_ENV = "RSTAR_BENCHMARK_DIR"  # default data directory when none is passed
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class BenchmarkError(ValueError):
    """A benchmark cannot be evaluated (base class)."""


class UnknownBenchmarkError(BenchmarkError):
    """A benchmark name that is neither built in nor a `name=path` custom spec."""


class BenchmarkLoadError(BenchmarkError):
    """A known benchmark whose source cannot be read (no local file, hub unreachable, unreadable file)."""


# --------------------------------------------------------------------------------------------------------------------
# Answer normalisation at load time


def canonical_number(answer: str) -> str:
    """A gold answer in the grader's display form (`rstar.verify.answer.normalize_answer`, the project's one
    normaliser): `025` -> `25`, `27.0` -> `27`, `1,000` -> `1000`, `$18` -> `18`; the tuple `1,2` stays as it is."""
    from rstar.verify.answer import normalize_answer

    return normalize_answer(answer)


def gsm8k_answer(answer: str) -> str:
    """GSM8K golds: the number after `####` in a full solution (or the bare answer), without thousands separators."""
    tail = answer.rsplit("####", 1)[1] if "####" in answer else answer
    return canonical_number(tail.strip())


# --------------------------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its rows map onto `Problem`s.

    `files` are paths relative to a data directory, tried in order (case-insensitively; the first that exists wins),
    so a directory holding the usual file names is enough. `path`, when set, is an explicit file. `hub_id` /
    `hub_subset` / `hub_split` name the Hugging Face dataset used when no local file is given. Field names left None
    are guessed by `rstar.data.problems` (question/problem, answer/solution, id/unique_id/index).
    """

    name: str
    files: tuple[str, ...] = ()
    path: str | None = None
    hub_id: str | None = None
    hub_subset: str | None = None
    hub_split: str = "test"
    question_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    answer_transform: Callable[[str], str] | None = field(default=None, compare=False)
    description: str = ""

    def with_path(self, path: str | Path) -> BenchmarkSpec:
        return dataclasses.replace(self, path=str(path))


def _files(*stems: str) -> tuple[str, ...]:
    """Usual local file names for a benchmark called by any of `stems`."""
    out: list[str] = []
    for stem in stems:
        for suffix in LOCAL_SUFFIXES:
            out += [f"{stem}_test{suffix}", f"{stem}{suffix}", f"{stem}/test{suffix}"]
    return tuple(out)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec(
        name="math500",
        # The copy with level and subject first: the report breaks MATH500 down by both.
        files=("math500-levels/test.jsonl", "math500/test.jsonl", *_files("math500", "math-500")),
        hub_id="HuggingFaceH4/MATH-500",
        hub_split="test",
        description="MATH500 (the PRM800K test split of MATH), with level and subject",
    ),
    "gsm8k": BenchmarkSpec(
        name="gsm8k",
        files=_files("gsm8k", "GSM8K"),
        hub_id="openai/gsm8k",
        hub_subset="main",
        hub_split="test",
        question_field="question",
        answer_field="answer",
        answer_transform=gsm8k_answer,
        description="GSM8K test (1319 grade-school word problems); `#### N` answers, thousands separators removed",
    ),
    "aime2024": BenchmarkSpec(
        name="aime2024",
        files=_files("aime2024", "aime24", "aime_2024"),
        hub_id="HuggingFaceH4/aime_2024",
        hub_split="train",
        answer_field="answer",
        answer_transform=canonical_number,
        description="AIME 2024 I and II (30 problems); zero-padded answers normalised",
    ),
    "amc23": BenchmarkSpec(
        name="amc23",
        files=_files("amc23", "amc2023", "amc_2023"),
        hub_id="math-ai/amc23",
        hub_split="test",
        answer_field="answer",
        answer_transform=canonical_number,
        description="AMC 2023 (40 problems); float answers like 27.0 normalised",
    ),
}
ALIASES: dict[str, str] = {
    "math-500": "math500",
    "math_500": "math500",
    "aime24": "aime2024",
    "aime": "aime2024",
    "aime_2024": "aime2024",
    "amc2023": "amc23",
    "amc": "amc23",
    "amc_2023": "amc23",
    "gsm": "gsm8k",
}


def known_benchmarks() -> list[str]:
    return sorted(BENCHMARKS)


def get_spec(name_or_spec: str | BenchmarkSpec) -> BenchmarkSpec:
    """Resolve a built-in name (or alias), a `name=path[?question=F&answer=F&id=F]` custom spec, or a spec itself."""
    if isinstance(name_or_spec, BenchmarkSpec):
        return name_or_spec
    text = name_or_spec.strip()
    if "=" in text:
        return parse_custom(text)
    key = ALIASES.get(text.lower(), text.lower())
    if key not in BENCHMARKS:
        raise UnknownBenchmarkError(
            f"unknown benchmark {text!r}: known benchmarks are {', '.join(known_benchmarks())}; "
            "any other set loads as NAME=PATH[?question=FIELD&answer=FIELD]"
        )
    return BENCHMARKS[key]


def parse_custom(text: str) -> BenchmarkSpec:
    """`name=path?question=prompt&answer=final&id=uid` -> a spec for a local file (or a hub id when not a path)."""
    name, _, target = text.partition("=")
    name = name.strip()
    target, _, query = target.partition("?")
    if not name or not target.strip():
        raise UnknownBenchmarkError(f"custom benchmark {text!r}: expected NAME=PATH[?question=FIELD&answer=FIELD]")
    opts = dict(parse_qsl(query))
    unknown = set(opts) - {"question", "answer", "id", "split", "subset"}
    if unknown:
        raise UnknownBenchmarkError(f"custom benchmark {text!r}: unknown option(s) {sorted(unknown)}")
    target = target.strip()
    local = Path(target).exists() or target.endswith(LOCAL_SUFFIXES) or target.startswith(("/", "."))
    # `gsm8k=/my/copy.jsonl` keeps GSM8K's field mapping and answer normalisation unless the query overrides them.
    base = BENCHMARKS.get(ALIASES.get(name.lower(), name.lower()))
    return BenchmarkSpec(
        name=base.name if base is not None else name,
        path=target if local else None,
        hub_id=None if local else target,
        hub_subset=opts.get("subset"),
        hub_split=opts.get("split", "test"),
        question_field=opts.get("question", base.question_field if base else None),
        answer_field=opts.get("answer", base.answer_field if base else None),
        id_field=opts.get("id", base.id_field if base else None),
        answer_transform=base.answer_transform if base is not None else None,
        description=f"{name} from {target}",
    )


def find_local_file(spec: BenchmarkSpec, data_dir: str | Path) -> Path | None:
    """The first of `spec.files` present under `data_dir` (or `data_dir/benchmarks`), matched case-insensitively."""
    roots = [Path(data_dir), Path(data_dir) / "benchmarks"]
    for root in roots:
        if not root.is_dir():
            continue
        for rel in spec.files:
            hit = _ci_lookup(root, rel)
            if hit is not None:
                return hit
    return None


def _ci_lookup(root: Path, rel: str) -> Path | None:
    cur = root
    for part in Path(rel).parts:
        exact = cur / part
        if exact.exists():
            cur = exact
            continue
        try:
            matches = [p for p in cur.iterdir() if p.name.lower() == part.lower()]
        except OSError:
            return None
        if not matches:
            return None
        cur = matches[0]
    return cur if cur.is_file() else None


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _normalise_level(level: str | None) -> str | None:
    """`Level 3` / `3` / 3 -> `3`, so levels sort and group the same across copies."""
    if level is None:
        return None
    m = re.fullmatch(r"(?i)\s*(?:level\s*)?(\d+)\s*", str(level))
    return m.group(1) if m else str(level)


def load_benchmark(
    benchmark: str | BenchmarkSpec,
    *,
    data_dir: str | Path | None = None,
    path: str | Path | None = None,
    limit: int | None = None,
) -> tuple[list[Problem], LoadReport]:
    """Load one benchmark as `Problem`s (source = the benchmark name) plus the per-row load report.

    Resolution order: an explicit `path` (file, or a directory holding the usual file names), the spec's own path,
    `data_dir` (default `$RSTAR_BENCHMARK_DIR`), then the Hugging Face hub. A directory that does not hold the
    benchmark is an error, not a silent fall-through to the hub: the user asked for a local copy.
    """
    spec = get_spec(benchmark)
    source = _resolve_source(spec, data_dir=data_dir, path=path)
    try:
        if isinstance(source, Path):
            rows = iter_problem_rows(source)
        else:
            rows = iter_problem_rows(source, split=spec.hub_split, subset=spec.hub_subset)
        problems, report = rows_to_problems(
            rows,
            source=spec.name,
            question_field=spec.question_field,
            answer_field=spec.answer_field,
            id_field=spec.id_field,
            require_answer=True,
            answer_transform=spec.answer_transform,
        )
    except ProblemFileError as exc:
        raise BenchmarkLoadError(f"benchmark {spec.name}: {exc}") from exc
    if report.rows > 0 and report.kept == 0:
        first = report.errors[0] if report.errors else "no rows"
        raise BenchmarkLoadError(f"benchmark {spec.name}: no usable problems in {source} ({first})")
    problems = [
        dataclasses.replace(
            p, source=spec.name, level=_normalise_level(p.level), meta={**p.meta, "origin": str(source)}
        )
        for p in problems
    ]
    if limit is not None:
        problems = problems[: max(0, limit)]
    return problems, report


def _resolve_source(spec: BenchmarkSpec, *, data_dir: str | Path | None, path: str | Path | None) -> Path | str:
    explicit = path if path is not None else spec.path
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_dir():
            hit = find_local_file(spec, p)
            if hit is None:
                raise BenchmarkLoadError(_not_found(spec, p))
            return hit
        if not p.exists():
            raise BenchmarkLoadError(f"benchmark {spec.name}: file not found: {p}")
        return p
    directory = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if directory:
        d = Path(directory).expanduser()
        if not d.is_dir():
            raise BenchmarkLoadError(f"benchmark {spec.name}: data directory not found: {d}")
        hit = find_local_file(spec, d)
        if hit is None:
            raise BenchmarkLoadError(_not_found(spec, d))
        return hit
    if spec.hub_id is None:
        raise BenchmarkLoadError(f"benchmark {spec.name}: no local path and no hub id")
    return spec.hub_id


def _not_found(spec: BenchmarkSpec, directory: Path) -> str:
    shown = ", ".join(spec.files[:4]) + (", ..." if len(spec.files) > 4 else "")
    return f"benchmark {spec.name}: none of its usual files ({shown}) is in {directory}"


def load_benchmarks(
    names: Sequence[str | BenchmarkSpec],
    *,
    data_dir: str | Path | None = None,
    paths: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
) -> tuple[dict[str, list[Problem]], dict[str, LoadReport], dict[str, str]]:
    """Load several benchmarks; one that fails is reported in the third dict (name -> error) and the rest still load."""
    loaded: dict[str, list[Problem]] = {}
    reports: dict[str, LoadReport] = {}
    errors: dict[str, str] = {}
    for item in names:
        label = item.name if isinstance(item, BenchmarkSpec) else str(item).partition("=")[0].strip()
        try:
            spec = get_spec(item)
            label = spec.name
            problems, report = load_benchmark(spec, data_dir=data_dir, path=(paths or {}).get(spec.name), limit=limit)
        except BenchmarkError as exc:
            errors[label] = str(exc)
            continue
        loaded[spec.name] = problems
        reports[spec.name] = report
    return loaded, reports, errors
