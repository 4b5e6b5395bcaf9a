"""Tiny Qwen2-style causal LMs with a byte-level BPE tokenizer, built offline in seconds.

These machines cannot reach the Hugging Face hub, and tests must not wait on a 135M-parameter model, so tests, the
CI regression run and quick demos build their models here:

    path = build_tiny_model("/tmp/tiny", seed=0)              # a save_pretrained folder
    model = AutoModelForCausalLM.from_pretrained(path)         # loads like any hub model

The tokenizer is trained on a small corpus of our own step format (see `rstar.verify.steps`) plus digits and math
words, so a trajectory is a few hundred tokens, not thousands of bytes. `TinyModelConfig(corpus="world")` trains it
instead on the problems and reference solutions of `rstar.data.world` (a fixed seed of its own, every level): names,
items and the words of the reference steps become single tokens, so a level-1 trajectory is ~90 tokens instead of
~160 (the learning regression test, `tests/integration/test_learning.py`, uses it). Numbers are split into digits,
as Qwen2's tokenizer does (see `QWEN2_PRETOKENIZE_REGEX`). The model is randomly initialised: it learns
whatever it is trained on, which is what the training and regression tests need. torch/transformers/tokenizers are
imported inside the functions, as in every adapter module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rstar.verify.steps import END_OF_ANSWER, END_OF_CODE, END_OF_STEP, build_prompt

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
Corpus = Literal["steps", "world"]
CORPORA: tuple[str, ...] = ("steps", "world")
WORLD_CORPUS_SEED = 7919  # the world corpus's own seed; tests draw their problems with other seeds


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of a tiny model. The defaults give ~0.2M parameters: a training step takes milliseconds on CPU."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0
    corpus: Corpus = "steps"  # the tokenizer's training text: "steps" (generic) or "world" (see the module docstring)

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"TinyModelConfig.corpus must be one of {CORPORA}, got {self.corpus!r}")


def _corpus() -> list[str]:
    """Text the tokenizer is trained on: our step format around arithmetic, so common pieces become single tokens."""
    words = (
        "Let's think step by step and solve the problem with code. How many what is the total each has have had "
        "gives buys sells apples pencils boxes books dollars cents price cost percent of half twice more less than "
        "left remaining altogether together per every day week hour minute sum product difference quotient number "
        "find compute answer result value equation solve for x y n a b c ratio fraction decimal integer"
    )
    lines = [words]
    for i in range(60):
        a, b = 3 + i * 7 % 50, 2 + i * 11 % 30
        q = f"Tom has {a} apples and buys {b} more. How many apples does Tom have?"
        steps = (
            f"# Step 1: add the apples bought to the apples Tom had\ntotal = {a} + {b}\n{END_OF_STEP}\n"
            f"# Step 2: multiply and divide to check\nratio = total / {b} * {a} - {a % 7}\n{END_OF_STEP}\n"
            f"# Now print the final answer\nprint(total)\n{END_OF_CODE}\n"
            f"<output>\n{a + b}\n<end_of_output>\n<answer>\nThe answer is \\boxed{{{a + b}}}\n{END_OF_ANSWER}\n"
        )
        lines.append(build_prompt(q) + steps)
    lines.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / // % ** ( ) [ ] = == < > , . : ; ' \" \\frac{}{} \\sqrt{}")
    return lines


def _world_corpus() -> list[str]:
    """Prompts + reference solutions of `rstar.data.world` problems of every level (a seed of the corpus's own)."""
    from rstar.data.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(seed=WORLD_CORPUS_SEED, train=600, heldout=0, seed_sft=0))
    return [build_prompt(p.question) + p.reference_completion() for p in world.train]


# Qwen2's pre-tokenization: transformers loads the tokenizer of any folder whose config says `qwen2` as a
# `Qwen2Tokenizer`, which rebuilds the pre-tokenizer from this expression (digits one by one) and adds an NFC
# normaliser, whatever tokenizer.json says. Training the BPE with the same rules makes the tokenizer built here and
# the one every consumer loads back (`AutoTokenizer.from_pretrained(path)`) split text identically; with plain
# ByteLevel rules, merges such as " 21" or " Step 1" were learned and then never used after a reload.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def build_tokenizer(vocab_size: int = 512, corpus: Corpus = "steps"):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `_corpus()` (or `_world_corpus()`) with Qwen2's pre-tokenization; any
    text round-trips through it exactly, and it splits text as the `Qwen2Tokenizer` it is reloaded as."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_world_corpus() if corpus == "world" else _corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        padding_side="left",
        model_max_length=1024,
    )


def build_tiny_model(out_dir: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Build a random tiny Qwen2 causal LM and its tokenizer, save both to `out_dir`, and return the path.

    Deterministic for a given config (seed included). Re-uses an existing folder built with the same config.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = config or TinyModelConfig()
    out = Path(out_dir)
    stamp = out / "tiny_config.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(cfg):
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.vocab_size, cfg.corpus)
    torch.manual_seed(cfg.seed)
    model_cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(model_cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(asdict(cfg)))
    return out
