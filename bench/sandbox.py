"""Benchmark the sandbox: steps/s and latency of the isolated pool vs a fresh subprocess per step vs in-process exec.

    .venv/bin/python bench/sandbox.py                 # 500 steps, every variant on every step (a few minutes)
    .venv/bin/python bench/sandbox.py --quick         # 120 steps, subprocess on every 5th one (under a minute)
    .venv/bin/python bench/sandbox.py --json out.json --workers 2

The steps are what a policy writes during tree search: accumulated code-augmented CoT programs (every prefix of a
trajectory is executed), with arithmetic, fractions, loops, math, sympy and numpy, and about one in ten failing. The
same programs run through

- pool:        `rstar.verify.sandbox.Sandbox` (pre-warmed zygotes, every isolation layer), one caller running steps one
               after another (latency, `pool_seq_*`) and `run_batch` over all workers (throughput, `pool_steps_per_s`);
- subprocess:  a fresh `python -I -S -c` per step with the real interpreter binary (not the pyenv shim), site-packages
               added to sys.path by the program so that sympy imports work; no isolation beyond the process;
- in-process:  `InProcessExecutor` (plain `exec`, unsafe): the upper bound.

The machine drifts (and other jobs share it), so the variants are interleaved: the steps are split into rounds, each
round runs every variant in a rotating order, and steps/s are medians over rounds. Latencies are over all steps.
Prints a table; `--json PATH` writes the numbers (`pool_steps_per_s`, `subprocess_steps_per_s`,
`inprocess_steps_per_s`, `pool_p50_ms`, `pool_p99_ms`, ratios, protections, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rstar.types import ExecutionResult
from rstar.verify.sandbox import InProcessExecutor, Sandbox, SandboxConfig

# --------------------------------------------------------------------------------------------------------------------
# Realistic steps


@dataclass(frozen=True)
class Step:
    code: str
    short: bool  # plain Python (no sympy/numpy import): the case the p50 < 5 ms target is about


def _trajectory(rng: random.Random) -> list[list[str]]:
    """One problem's steps (each a list of code lines), in the style of the step format (docs/format.md)."""
    a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(1, 9)
    kind = rng.choice(["word", "word", "fraction", "loop", "math", "sympy_solve", "sympy_simplify", "numpy"])
    if kind == "word":
        return [
            ["# Step 1: count the items in the boxes", f"boxes = {a}", f"per_box = {b}", "total = boxes * per_box"],
            ["# Step 2: remove the ones given away", f"given = {c * 3}", "left = total - given"],
            ["# Step 3: share them equally", f"people = {c + 1}", "share = left / people"],
            ["# Now print the final answer", "print(round(share, 4))"],
        ]
    if kind == "fraction":
        return [
            ["# Step 1: write the parts as exact fractions", "from fractions import Fraction",
             f"x = Fraction({a}, {b + 1})", f"y = Fraction({c}, {a + 3})"],
            ["# Step 2: add them and simplify", "s = x + y", "d = s.denominator"],
            ["# Now print the final answer", "print(s, float(s))"],
        ]  # fmt: skip
    if kind == "loop":
        return [
            ["# Step 1: sum the multiples of 3 or 5 below the limit", f"limit = {a * 25}", "total = 0",
             "for n in range(1, limit):", "    if n % 3 == 0 or n % 5 == 0:", "        total += n"],
            ["# Step 2: count the primes below the limit", "count = 0", "for n in range(2, limit):",
             "    if all(n % p for p in range(2, int(n ** 0.5) + 1)):", "        count += 1"],
            ["# Now print the final answer", "print(total, count)"],
        ]  # fmt: skip
    if kind == "math":
        return [
            ["# Step 1: choose the committee", "import math", f"ways = math.comb({a}, {c})"],
            ["# Step 2: the common factor", f"g = math.gcd({a * b}, {b * c})", "r = math.sqrt(ways)"],
            ["# Now print the final answer", "print(ways, g, round(r, 4))"],
        ]
    if kind == "sympy_solve":
        return [
            ["# Step 1: set up the equation", "from sympy import symbols, Eq, solve", "x = symbols('x')",
             f"eq = Eq({c}*x**2 - {a}*x, {b})"],
            ["# Step 2: solve it", "sols = solve(eq, x)"],
            ["# Now print the final answer", "print(sols)"],
        ]  # fmt: skip
    if kind == "sympy_simplify":
        return [
            ["# Step 1: write the expression", "from sympy import symbols, simplify, factor, Rational, sqrt",
             "x = symbols('x')", f"expr = (x**2 - {c * c}) / (x - {c})"],
            ["# Step 2: simplify and evaluate", "s = simplify(expr)", f"v = s.subs(x, Rational({a}, {b}))"],
            ["# Now print the final answer", f"print(s, v, factor(x**2 + {2 * c}*x + {c * c}), sqrt({a * a * 2}))"],
        ]  # fmt: skip
    return [
        ["# Step 1: build the data", "import numpy as np", f"v = np.arange(1, {a + 2})"],
        ["# Step 2: its mean and spread", "m = v.mean()", "s = v.std()"],
        ["# Now print the final answer", "print(round(float(m), 3), round(float(s), 3))"],
    ]


_FAILURES = [
    ["# Step 2: use the total", "result = totl * 2"],  # NameError
    ["# Step 2: the ratio", "ratio = 1 / (3 - 3)"],  # ZeroDivisionError
    ["# Step 2: combine", "value = 'n' + 3"],  # TypeError
    ["# Step 2: the sum", "s = sum([1, 2, 3]"],  # SyntaxError
]


def make_steps(n: int, seed: int = 0) -> list[Step]:
    """`n` step executions: every prefix of random trajectories (~10% of trajectories break at some step)."""
    rng = random.Random(seed)
    steps: list[Step] = []
    while len(steps) < n:
        traj = _trajectory(rng)
        if rng.random() < 0.1:
            traj.insert(rng.randint(1, len(traj) - 1), rng.choice(_FAILURES))
        for k in range(1, len(traj) + 1):
            code = "\n\n".join("\n".join(lines) for lines in traj[:k]) + "\n"
            steps.append(Step(code, short="sympy" not in code and "numpy" not in code))
    steps = steps[:n]
    rng.shuffle(steps)  # so that any round or subsample is a fair mix
    return steps


# --------------------------------------------------------------------------------------------------------------------
# Variants


def real_python() -> str:
    """The interpreter binary itself: a pyenv `python3` on PATH is a bash shim that costs ~170 ms a start."""
    return os.path.realpath(sys.executable)


class SubprocessExecutor:
    """A fresh `python -I -S -c` per program (no isolation beyond the process); site-packages added for sympy."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.python = real_python()
        self.timeout_s = timeout_s
        paths = [p for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")} if p]
        self.prelude = f"import sys; sys.path[:0] = {paths!r}\n"

    def run(self, code: str) -> ExecutionResult:
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [self.python, "-I", "-S", "-c", self.prelude + code],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return ExecutionResult(ok=False, error="Timeout", timed_out=True)
        err = proc.stderr.strip().splitlines()[-1].split(":")[0] if proc.returncode else None
        return ExecutionResult(
            ok=proc.returncode == 0,
            stdout=proc.stdout,
            stderr=proc.stderr,
            error=err,
            duration_ms=(time.perf_counter() - start) * 1000,
        )


_FORK_PROBE = """
import os, time
lat = []
for _ in range(40):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    lat.append((time.perf_counter() - t) * 1000)
print(' '.join(f'{x:.4f}' for x in lat))
"""


def fork_latencies() -> list[float]:
    """Calibration: bare fork + _exit + waitpid in a small interpreter (the machine notes say ~1.2 ms when calm)."""
    out = subprocess.run([real_python(), "-I", "-S", "-c", _FORK_PROBE], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def _timed(run: Callable[[str], ExecutionResult], steps: Sequence[Step]) -> tuple[float, list[float], list[bool]]:
    """Run steps one after another: (wall seconds, per-step latencies in ms, ok flags)."""
    lat, oks = [], []
    t0 = time.perf_counter()
    for step in steps:
        s = time.perf_counter()
        r = run(step.code)
        lat.append((time.perf_counter() - s) * 1000)
        oks.append(r.ok)
    return time.perf_counter() - t0, lat, oks


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="number of steps (500; 120 with --quick)")
    ap.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2: one per core here)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are over these)")
    ap.add_argument("--subprocess-every", type=int, default=None, help="run the subprocess variant on every k-th step")
    ap.add_argument("--quick", action="store_true", help="120 steps, subprocess on every 5th step: under a minute")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = args.steps or (120 if args.quick else 500)
    every = args.subprocess_every or (5 if args.quick else 1)
    steps = make_steps(n, args.seed)
    rounds = [steps[i :: args.rounds] for i in range(args.rounds)]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t = time.perf_counter()
    sandbox = Sandbox(SandboxConfig(workers=args.workers, timeout_s=30.0))
    protections = sandbox.protections
    startup_s = time.perf_counter() - t
    log(f"sandbox ready in {startup_s:.1f} s; {n} steps, {args.rounds} rounds, workers={args.workers}")
    inproc = InProcessExecutor()
    sub = SubprocessExecutor()
    for code in ("import sympy, numpy, fractions\n", "print(1)\n"):  # warm every variant's caches
        inproc.run(code)
        sandbox.run(code)
        sandbox.run_batch([code] * args.workers)

    rates: dict[str, list[float]] = {"pool_seq": [], "pool": [], "subprocess": [], "inprocess": []}
    lats: dict[str, list[float]] = {k: [] for k in rates}
    short_lat: dict[str, list[float]] = {k: [] for k in rates}
    oks: dict[str, dict[str, bool]] = {k: {} for k in rates}
    order = list(rates)
    fork_ms: list[float] = []
    for i, chunk in enumerate(rounds):
        fork_ms += fork_latencies()
        for name in order[i % len(order) :] + order[: i % len(order)]:
            subset = chunk[::every] if name == "subprocess" else chunk
            if name == "pool":
                t0 = time.perf_counter()
                results = sandbox.run_batch([s.code for s in subset])
                wall = time.perf_counter() - t0
                flags = [r.ok for r in results]
                lat: list[float] = []
            else:
                run = {"pool_seq": sandbox.run, "subprocess": sub.run, "inprocess": inproc.run}[name]
                wall, lat, flags = _timed(run, subset)
                lats[name] += lat
                short_lat[name] += [ms for ms, s in zip(lat, subset, strict=True) if s.short]
            rates[name].append(len(subset) / wall)
            oks[name].update({s.code: ok for s, ok in zip(subset, flags, strict=True)})
        log(f"round {i + 1}/{len(rounds)}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
    sandbox.close()

    disagree = sum(oks["pool"][c] != oks["inprocess"][c] for c in oks["pool"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "steps": n,
        "rounds": args.rounds,
        "workers": args.workers,
        "subprocess_steps": sum(len(c[::every]) for c in rounds),
        "pool_steps_per_s": med["pool"],
        "pool_seq_steps_per_s": med["pool_seq"],
        "subprocess_steps_per_s": med["subprocess"],
        "inprocess_steps_per_s": med["inprocess"],
        "pool_p50_ms": _pct(lats["pool_seq"], 50),
        "pool_p99_ms": _pct(lats["pool_seq"], 99),
        "pool_short_p50_ms": _pct(short_lat["pool_seq"], 50),
        "pool_short_p99_ms": _pct(short_lat["pool_seq"], 99),
        "subprocess_p50_ms": _pct(lats["subprocess"], 50),
        "subprocess_p99_ms": _pct(lats["subprocess"], 99),
        "subprocess_short_p50_ms": _pct(short_lat["subprocess"], 50),
        "inprocess_p50_ms": _pct(lats["inprocess"], 50),
        "inprocess_p99_ms": _pct(lats["inprocess"], 99),
        "pool_vs_subprocess_per_step": med["pool_seq"] / med["subprocess"],
        "pool_vs_subprocess_short_p50": _pct(short_lat["subprocess"], 50) / _pct(short_lat["pool_seq"], 50),
        "inprocess_vs_pool_per_step": med["inprocess"] / med["pool_seq"],
        "pool_batch_vs_seq": med["pool"] / med["pool_seq"],
        "ok_disagreements_pool_vs_inprocess": disagree,
        "bare_fork_p50_ms": _pct(fork_ms, 50),
        "pool_startup_s": startup_s,
        "protections": protections,
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    rows = [
        ("pool, run_batch", out["pool_steps_per_s"], None, None),
        ("pool, one at a time", out["pool_seq_steps_per_s"], out["pool_p50_ms"], out["pool_p99_ms"]),
        ("  short steps only", None, out["pool_short_p50_ms"], out["pool_short_p99_ms"]),
        ("fresh subprocess", out["subprocess_steps_per_s"], out["subprocess_p50_ms"], out["subprocess_p99_ms"]),
        ("  short steps only", None, out["subprocess_short_p50_ms"], None),
        ("in-process exec (unsafe)", out["inprocess_steps_per_s"], out["inprocess_p50_ms"], out["inprocess_p99_ms"]),
    ]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print(f"| variant ({n} steps, {args.workers} workers) | steps/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, rate, p50, p99 in rows:
        print(f"| {name} | {fmt(rate, ',.0f')} | {fmt(p50, '.2f')} | {fmt(p99, '.2f')} |")
    print(
        f"pool vs subprocess per step: {out['pool_vs_subprocess_per_step']:.1f}x; in-process vs pool: "
        f"{out['inprocess_vs_pool_per_step']:.1f}x; batch vs one-at-a-time: {out['pool_batch_vs_seq']:.2f}x; "
        f"load average {out['load_avg_1m']:.1f} on {out['cpus']} CPUs (bare fork+exit+wait p50 "
        f"{out['bare_fork_p50_ms']:.2f} ms); ok/error disagreements pool vs in-process: {disagree}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
