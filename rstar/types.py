"""Shared value types and the protocols through which models and executors enter the core.

Everything here is plain Python: no torch, transformers, prefect, mlflow or boto3. The search, data and eval code
depend only on these types; concrete backends (HF, OpenAI-compatible servers, vLLM, fakes, the sandbox) implement the
protocols in their own modules, so tests can inject deterministic fakes and the core stays importable in milliseconds.

The three protocols mirror the three things rStar-Math's search needs:

- `PolicyLM`: proposes candidate next steps, batch first (vLLM style): one call carries every pending expansion of a
  shard, `generate(prompts, spec) -> list[list[Completion]]`, one inner list of `spec.n` completions per prompt.
- `RewardModel`: the process preference model (PPM); scores trajectory prefixes (question + steps so far) in (-1, 1).
- `CodeExecutor`: runs the accumulated Python of a trajectory in isolation (`rstar.verify.sandbox.Sandbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# --------------------------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One math problem: a question and its gold answer (empty string when unknown, e.g. at test time)."""

    id: str
    question: str
    answer: str = ""
    source: str = ""
    level: str | None = None
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample from a policy; a value object like vLLM's `SamplingParams`.

    `seed` makes a call reproducible. Backends that can seed each request (vLLM, OpenAI-compatible servers, our HF
    sampler) also accept per-prompt seeds through `PolicyLM.generate(..., seeds=...)`, which the search uses so that a
    tree's samples do not depend on which other trees share its batch.
    """

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingSpec.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSpec.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSpec.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSpec.max_tokens must be >= 1, got {self.max_tokens}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("SamplingSpec.stop must be a tuple of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    """One sampled continuation.

    `text` excludes the stop string (as vLLM and OpenAI servers return it); `stop_reason` is the stop string that ended
    it, or None when it ended for another reason (`finish_reason` "length": max_tokens hit; "stop" with no
    stop_reason: end-of-sequence token).
    """

    text: str
    finish_reason: Literal["stop", "length"] = "stop"
    stop_reason: str | None = None
    num_tokens: int = 0


@runtime_checkable
class PolicyLM(Protocol):
    """A policy language model. Implementations: `rstar.models.policy_hf`, `policy_openai`, `fakes`."""

    @property
    def model_id(self) -> str: ...

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Return `spec.n` completions for each prompt, in prompt order. `seeds`, when given, has one seed per prompt."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A process preference model: scores each prefix (prompt + steps so far) with a value in (-1, 1)."""

    @property
    def model_id(self) -> str: ...

    def score(self, prefixes: Sequence[str]) -> list[float]: ...


# --------------------------------------------------------------------------------------------------------------------
# Code execution


@dataclass(frozen=True)
class ExecutionResult:
    """What running one program in the sandbox produced.

    `ok` is True only when the program ran to completion without an uncaught exception, within its limits.
    `error` is a short machine-readable kind ("SyntaxError", "ZeroDivisionError", "Timeout", "MemoryError",
    "OutputLimit", "Killed", "SystemExit", "SandboxError", ...) and `error_message` the human-readable detail.
    """

    ok: bool
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    error_message: str = ""
    timed_out: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
            "error_message": self.error_message,
            "timed_out": self.timed_out,
            "memory_exceeded": self.memory_exceeded,
            "output_truncated": self.output_truncated,
            "duration_ms": round(self.duration_ms, 3),
        }


@runtime_checkable
class CodeExecutor(Protocol):
    """Runs programs in isolation; one result per program, in order. Never raises for what the program does."""

    def run_batch(self, codes: Sequence[str]) -> list[ExecutionResult]: ...
