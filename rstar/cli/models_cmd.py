"""`rstar models`: prepare, inspect and try the models that model specs name (see docs/models.md).

    rstar models prepare smollm2-135m           # convert the packaged GGUF once into $RSTAR_HOME/models/ (~30-60 s)
    rstar models prepare tiny:3                 # build a random tiny model (tests, demos)
    rstar models info smollm2-135m              # JSON: path, architecture, parameters, context, vocabulary, EOS ids
    rstar models info openai:http://host:8000/v1  # JSON: the models the server lists
    rstar models generate smollm2-135m "What is 2+3?" -n 2 --max-tokens 32   # sample, print, report tokens/s

Exit status: 0 on success, 1 when the model cannot be prepared / reached / loaded (the message says why), 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="prepare, inspect and try models named by specs (smollm2-135m, tiny, hf:PATH, openai:URL#MODEL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    prep = sub.add_parser("prepare", help="build / convert in-process models into $RSTAR_HOME/models and print paths")
    prep.add_argument("specs", nargs="+", metavar="SPEC", help="smollm2-135m, tiny[:SEED] or hf:PATH")
    info = sub.add_parser("info", help="print what a spec resolves to, as JSON (loads no weights)")
    info.add_argument("spec", metavar="SPEC")
    gen = sub.add_parser("generate", help="sample from a policy spec and report tokens/s")
    gen.add_argument("spec", metavar="SPEC")
    gen.add_argument("prompt", help="the prompt text ('-' reads stdin)")
    gen.add_argument("-n", type=int, default=1, help="completions (default 1)")
    gen.add_argument("--max-tokens", type=int, default=64, help="token limit per completion (default 64)")
    gen.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable); default: none")
    gen.add_argument("--step-stops", action="store_true", help="stop on the step delimiters (<end_of_step>, ...)")
    gen.add_argument("--json", action="store_true", help="print the completions as JSON")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "models_command", None)
    if action is None:
        args._parser.print_help()
        return 2
    from rstar.models.registry import ModelSpecError
    from rstar.models.smollm2 import SmolLM2SourceError

    try:
        if action == "prepare":
            return _prepare(args.specs)
        if action == "info":
            print(json.dumps(_info(args.spec), indent=2))
            return 0
        return _generate(args)
    except (ModelSpecError, SmolLM2SourceError, FileNotFoundError, ValueError, RuntimeError) as exc:
        # RuntimeError: an unreachable / wrong OpenAI-compatible server; NotImplementedError: an unsupported model.
        print(f"rstar models {action}: {exc}", file=sys.stderr)
        return 1


def _prepare(specs: list[str]) -> int:
    from rstar.models.registry import resolve_local_model

    for spec in specs:
        t = time.perf_counter()
        print(f"preparing {spec} ...", file=sys.stderr)
        path = resolve_local_model(spec)
        print(f"{spec}: ready in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        print(path)
    return 0


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in a folder's safetensors files, read from their headers (no weights loaded)."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():  # noqa: SIM118  (safe_open is not a dict)
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= int(dim)
                total += n
    return total


def _info(spec: str) -> dict[str, Any]:
    from rstar.models.registry import parse_spec, resolve_local_model

    ms = parse_spec(spec)
    out: dict[str, Any] = {"spec": spec, "backend": ms.backend}
    if ms.backend == "fake":
        out["model_id"] = str(ms)
        return out
    if ms.backend == "openai":
        from rstar.models.policy_openai import OpenAIPolicy

        url, _, model = ms.target.partition("#")
        with OpenAIPolicy(url, model or None, check_model=False, max_retries=1) as policy:
            out["base_url"] = policy.base_url
            out["models"] = policy.list_models()
            out["model"] = model or (out["models"][0] if len(out["models"]) == 1 else None)
        return out
    path = resolve_local_model(ms)
    cfg = json.loads((path / "config.json").read_text())
    out.update(
        {
            "model_id": str(ms),
            "path": str(path),
            "architecture": (cfg.get("architectures") or [None])[0],
            "parameters": count_parameters(path),
            "context": cfg.get("max_position_embeddings"),
            "vocab_size": cfg.get("vocab_size"),
            "layers": cfg.get("num_hidden_layers"),
            "hidden_size": cfg.get("hidden_size"),
            "eos_token_id": cfg.get("eos_token_id"),
            "dtype": cfg.get("dtype", cfg.get("torch_dtype")),
            "chat_template": (path / "chat_template.jinja").exists(),
        }
    )
    return out


def _generate(args: argparse.Namespace) -> int:
    from rstar.models.registry import load_policy
    from rstar.types import SamplingSpec
    from rstar.verify.steps import STOP_STRINGS

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    stops = tuple(args.stop or ()) + (STOP_STRINGS if args.step_stops else ())
    spec = SamplingSpec(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        stop=tuple(dict.fromkeys(stops)),
        seed=args.seed,
    )
    t = time.perf_counter()
    policy = load_policy(args.spec)
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    (outs,) = policy.generate([prompt], spec, seeds=[args.seed])
    took = time.perf_counter() - t
    tokens = sum(c.num_tokens for c in outs)
    if args.json:
        print(json.dumps([c.__dict__ for c in outs], indent=2))
    else:
        for i, c in enumerate(outs):
            print(f"--- completion {i} ({c.num_tokens} tokens, {c.finish_reason}, stop={c.stop_reason!r})")
            print(c.text)
    print(
        f"{policy.model_id}: loaded in {loaded:.1f}s; {tokens} tokens in {took:.2f}s = {tokens / max(took, 1e-9):.1f} "
        "tokens/s",
        file=sys.stderr,
    )
    close = getattr(policy, "close", None)
    if callable(close):
        close()
    return 0
