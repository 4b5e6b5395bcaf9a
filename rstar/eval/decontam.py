"""Decontamination: find training problems that overlap a benchmark by word n-grams, and drop them from training.

Text is normalised before comparison (Unicode NFKC, lower case, LaTeX markup and punctuation reduced to spaces, so
`$\\frac{1}{2}$` and `\\frac 1 2` match) and split into word tokens. A training problem is contaminated when it shares
at least `min_overlap` n-grams (default: one 13-gram, as in the GPT-3 and Llama-2 contamination studies) with some
benchmark problem. A benchmark question shorter than n words is matched as a whole: a training problem that contains
all of it, in order, is contaminated too (short questions would otherwise never be checked); below `MIN_SHORT_WORDS`
words only an identical question counts, so "compute 2 3" does not flag every problem that contains it.

    kept, report = decontaminate(train_problems, {"math500": math500, "gsm8k": gsm8k})
    report.summary()          # "12 of 7500 training problems overlap math500 (11), gsm8k (1); excluded"
    report.to_dict()          # JSON for the round's manifest

`decontaminate_against(train, ["math500", "gsm8k"], data_dir=...)` loads the benchmarks first (the round flow's call).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.types import Problem

DEFAULT_N = 13
MIN_SHORT_WORDS = 6
_LATEX_CMD = re.compile(r"\\(?:left|right|displaystyle|mathrm|text|textbf|mathbf|operatorname|[,;:! ])")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_text(text: str) -> str:
    """Lower-cased, markup-free, punctuation-free text with single spaces."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _LATEX_CMD.sub(" ", t)
    t = t.replace("\\", " ")
    return _NON_WORD.sub(" ", t).strip()


def tokens(text: str) -> list[str]:
    return normalize_text(text).split()


def ngrams(toks: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """All contiguous n-grams of a token list (empty when it has fewer than n tokens)."""
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """One contaminated training problem and the benchmark problem it overlaps most."""

    train_id: str
    benchmark: str
    benchmark_id: str
    shared_ngrams: int
    example: str  # one shared n-gram, joined with spaces

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_id": self.train_id,
            "benchmark": self.benchmark,
            "benchmark_id": self.benchmark_id,
            "shared_ngrams": self.shared_ngrams,
            "example": self.example,
        }


@dataclass
class ContaminationReport:
    """What the check found: every overlapping training problem, and whether they were excluded."""

    n: int
    min_overlap: int
    train_size: int
    benchmark_sizes: dict[str, int]
    overlaps: list[Overlap] = field(default_factory=list)
    excluded: bool = True

    @property
    def contaminated_ids(self) -> set[str]:
        return {o.train_id for o in self.overlaps}

    def per_benchmark(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.overlaps:
            counts[o.benchmark] = counts.get(o.benchmark, 0) + 1
        return counts

    def summary(self) -> str:
        if not self.overlaps:
            return f"no overlap ({self.n}-grams) between {self.train_size} training problems and {self.benchmark_sizes}"
        per = ", ".join(f"{b} ({k})" for b, k in sorted(self.per_benchmark().items()))
        action = "excluded" if self.excluded else "kept (exclusion off)"
        return f"{len(self.overlaps)} of {self.train_size} training problems overlap {per} by {self.n}-grams; {action}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "min_overlap": self.min_overlap,
            "train_size": self.train_size,
            "benchmark_sizes": self.benchmark_sizes,
            "contaminated": len(self.overlaps),
            "per_benchmark": self.per_benchmark(),
            "excluded": self.excluded,
            "overlaps": [o.to_dict() for o in self.overlaps],
        }


class NgramIndex:
    """n-grams of benchmark questions -> (benchmark, problem id) for fast lookup of training problems."""

    def __init__(self, benchmarks: Mapping[str, Iterable[Problem]], n: int = DEFAULT_N) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.sizes: dict[str, int] = {}
        self.grams: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        self.short_lengths: set[int] = set()  # lengths of benchmark questions shorter than n, matched whole
        self.exact: dict[str, list[tuple[str, str]]] = {}  # very short normalised questions -> problems
        for name, problems in benchmarks.items():
            count = 0
            for p in problems:
                count += 1
                toks = tokens(p.question)
                if not toks:
                    continue
                if len(toks) < MIN_SHORT_WORDS:  # longer questions are covered by their n-grams or whole match
                    self.exact.setdefault(" ".join(toks), []).append((name, p.id))
                    continue
                if len(toks) < n:
                    self.short_lengths.add(len(toks))
                    grams = {tuple(toks)}
                else:
                    grams = ngrams(toks, n)
                for g in grams:
                    self.grams.setdefault(g, []).append((name, p.id))
            self.sizes[name] = count

    def matches(self, text: str) -> dict[tuple[str, str], list[tuple[str, ...]]]:
        """Benchmark problems sharing n-grams with `text`: (benchmark, id) -> the shared n-grams."""
        toks = tokens(text)
        found: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for key in self.exact.get(" ".join(toks), ()):
            found.setdefault(key, []).append(tuple(toks))
        for length in (self.n, *sorted(self.short_lengths)):
            for g in ngrams(toks, length):
                for key in self.grams.get(g, ()):
                    found.setdefault(key, []).append(g)
        return found


def find_contamination(
    train: Iterable[Problem],
    benchmarks: Mapping[str, Iterable[Problem]],
    *,
    n: int = DEFAULT_N,
    min_overlap: int = 1,
) -> ContaminationReport:
    """Check every training problem against the benchmarks; report those sharing >= `min_overlap` n-grams."""
    if min_overlap < 1:
        raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
    index = NgramIndex(benchmarks, n)
    overlaps: list[Overlap] = []
    size = 0
    for p in train:
        size += 1
        found = index.matches(p.question)
        if not found:
            continue
        (bench, bid), grams = max(found.items(), key=lambda kv: (len(kv[1]), kv[0]))
        whole = any(len(g) < n for g in grams)  # an identical or wholly contained short question
        if len(grams) >= min_overlap or whole:
            example = " ".join(sorted(grams)[0])
            overlaps.append(Overlap(p.id, bench, bid, len(grams), example))
    return ContaminationReport(
        n=n, min_overlap=min_overlap, train_size=size, benchmark_sizes=index.sizes, overlaps=overlaps
    )


def decontaminate(
    train: Sequence[Problem],
    benchmarks: Mapping[str, Iterable[Problem]],
    *,
    n: int = DEFAULT_N,
    min_overlap: int = 1,
    exclude: bool = True,
) -> tuple[list[Problem], ContaminationReport]:
    """The training problems to use (contaminated ones dropped unless `exclude=False`) and the report."""
    report = find_contamination(train, benchmarks, n=n, min_overlap=min_overlap)
    report.excluded = exclude
    if not exclude or not report.overlaps:
        return list(train), report
    bad = report.contaminated_ids
    return [p for p in train if p.id not in bad], report


def decontaminate_against(
    train: Sequence[Problem],
    benchmarks: Sequence[str] = ("math500", "gsm8k", "aime2024", "amc23"),
    *,
    data_dir: str | Path | None = None,
    n: int = DEFAULT_N,
    min_overlap: int = 1,
    exclude: bool = True,
) -> tuple[list[Problem], ContaminationReport]:
    """Load benchmarks by name (see `rstar.eval.benchmarks`) and decontaminate `train` against them.

    A benchmark that cannot be loaded raises: silently checking against nothing would defeat the purpose.
    """
    from rstar.eval.benchmarks import load_benchmark

    loaded = {name: load_benchmark(name, data_dir=data_dir)[0] for name in benchmarks}
    return decontaminate(train, loaded, n=n, min_overlap=min_overlap, exclude=exclude)
