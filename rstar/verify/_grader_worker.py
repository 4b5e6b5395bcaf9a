"""Child side of the grader's symbolic check: a long-lived process that compares two answers with math-verify.

Not imported by the library: `rstar.verify._grader_pool` starts it as `python -I <this file>` and talks to it over
stdin/stdout, one JSON object per line:

    request   {"g": "<gold latex>", "p": "<pred latex>", "cpu_s": 10}
    response  {"r": true | false | null, "m": "<which rule decided>"}

`r` is null when math-verify could parse neither side into something comparable. The process prints `ready` once its
imports are done, so that import time never counts against a check's time limit.

Why a separate process: sympy can spend unbounded time and memory on a hostile answer (`9^9^9^9` evaluates a
370-million-digit integer inside one C call that no signal interrupts), and math-verify's own `signal.alarm` timeout
only works in the main thread, while Prefect runs tasks in worker threads. The parent kills this process when a check
overruns; here a memory rlimit turns a memory blow-up into a MemoryError and a per-request CPU rlimit ends a runaway
computation even if the parent has died meanwhile. Run with `-I` (isolated mode): the directory of this file is not put
on sys.path, no user site, no PYTHON* variables.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from typing import Any

MEMORY_LIMIT_BYTES = 3 * 1024**3


def _set_limits() -> None:
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - platform without RLIMIT_AS
        pass


def _arm_cpu_limit(seconds: float) -> None:
    """Let the kernel end this process if the coming request burns more than `seconds` of CPU (SIGXCPU)."""
    try:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = used.ru_utime + used.ru_stime
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(spent + max(1.0, seconds)) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):  # pragma: no cover
        pass


def main() -> None:
    logging.disable(logging.CRITICAL)  # math-verify logs a warning for every disabled timeout and every failure
    sys.setrecursionlimit(10_000)
    from math_verify import parse, verify
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    configs = (LatexExtractionConfig(), ExprExtractionConfig())

    def parsed(text: str) -> list[Any]:
        # Answers arrive already extracted and cleaned; `$...$` makes math-verify read them as one LaTeX expression.
        out = parse(f"${text}$", extraction_config=configs, parsing_timeout=None)
        return [x for x in out if not isinstance(x, str)]

    def check(gold: str, pred: str) -> tuple[bool | None, str]:
        g, p = parsed(gold), parsed(pred)
        if not g or not p:
            return None, "unparsed"
        return bool(verify(g, p, timeout_seconds=None)), "math_verify"

    # Warm the slow first-time paths (the parser, sympy's simplify, relations) before saying ready, so that lazy
    # initialisation inside sympy (~0.5 s) never counts against the first real check's time limit.
    for g, p in (("\\frac{1}{2}", "0.5"), ("x^2+2x+1", "(x+1)^2"), ("[0,1)", "0\\le x<1")):
        check(g, p)
    _set_limits()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            _arm_cpu_limit(float(req.get("cpu_s", 10)))
            r, m = check(str(req["g"]), str(req["p"]))
            resp: dict[str, Any] = {"r": r, "m": m}
        except MemoryError:
            resp = {"r": None, "m": "memory"}
        except RecursionError:
            resp = {"r": None, "m": "recursion"}
        except Exception as exc:  # a parser bug on odd input must not end the worker
            resp = {"r": None, "m": f"error:{type(exc).__name__}"}
        out.write(json.dumps(resp) + "\n")
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
