"""`rstar grade`: grade one prediction, or a JSONL batch, with the project's one grader (rstar.verify.answer).

    rstar grade '\\frac{1}{2}' 'so the answer is $\\boxed{0.5}$'      # prints: true
    rstar grade --batch preds.jsonl > graded.jsonl                 # one JSON line per input line

Batch lines are objects {"gold": ..., "pred": ...} (`pred` may be a whole model output). Each output line carries
`line`, `correct` (bool), `pred_answer`, `gold_answer` and `method`; a malformed line gives
{"line": N, "error": "..."} instead, and the batch goes on. Exit status: 0 when every line was graded, 1 when some
line was malformed, 2 for usage errors (missing file, no arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "grade",
        help="grade a prediction against a gold answer (prints true/false), or a JSONL batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("gold", nargs="?", help="gold answer (e.g. '\\frac{1}{2}', '2,125', '(C)')")
    p.add_argument("pred", nargs="?", help="prediction: an answer or a whole model output")
    p.add_argument("--batch", metavar="FILE.jsonl", help='grade every {"gold", "pred"} line of FILE (\'-\' = stdin)')
    p.add_argument("--timeout", type=float, default=2.0, help="CPU seconds per symbolic check (default 2)")
    p.add_argument("--explain", action="store_true", help="single pair: print the full JSON result, not true/false")
    p.set_defaults(func=run)


def _grade_line(lineno: int, raw: str, timeout_s: float) -> tuple[dict[str, Any], bool]:
    from rstar.verify.answer import grade

    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {"line": lineno, "error": f"invalid JSON: {exc.msg}"}, False
    if not isinstance(obj, dict):
        return {"line": lineno, "error": "expected a JSON object with keys gold and pred"}, False
    missing = [k for k in ("gold", "pred") if k not in obj]
    if missing:
        return {"line": lineno, "error": f"missing key(s): {', '.join(missing)}"}, False
    gold, pred = obj["gold"], obj["pred"]
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in (gold, pred)):
        return {"line": lineno, "error": "gold and pred must be strings or numbers"}, False
    result = grade(str(gold), str(pred), timeout_s=timeout_s)
    out: dict[str, Any] = {"line": lineno, **result.to_dict()}
    if "id" in obj:
        out["id"] = obj["id"]
    return out, True


def _run_batch(path: str, timeout_s: float) -> int:
    from tqdm import tqdm

    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        print(f"rstar grade: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    bad = 0
    with stream:
        for lineno, raw in enumerate(tqdm(stream, desc="grading", unit="line", file=sys.stderr, disable=None), 1):
            if not raw.strip():
                continue
            out, ok = _grade_line(lineno, raw, timeout_s)
            bad += not ok
            if not ok:
                print(f"rstar grade: line {lineno}: {out['error']}", file=sys.stderr)
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    if args.batch is not None:
        if args.gold is not None or args.pred is not None:
            print("rstar grade: give either GOLD PRED or --batch FILE, not both", file=sys.stderr)
            return 2
        return _run_batch(args.batch, args.timeout)
    if args.gold is None or args.pred is None:
        print("rstar grade: need GOLD and PRED (or --batch FILE.jsonl)", file=sys.stderr)
        return 2
    from rstar.verify.answer import grade

    result = grade(args.gold, args.pred, timeout_s=args.timeout)
    if args.explain:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print("true" if result.correct else "false")
    return 0
