"""Tiny Qwen2-style causal LMs with a byte-level BPE tokenizer, built offline in seconds.

These machines cannot reach the Hugging Face hub, and tests must not wait on a 135M-parameter model, so tests, the
CI regression run and quick demos build their models here:

    path = build_tiny_model("/tmp/tiny", seed=0)              # a save_pretrained folder
    model = AutoModelForCausalLM.from_pretrained(path)         # loads like any hub model

The tokenizer is trained on a small corpus of our own step format (see `rstar.verify.steps`) plus digits and math
words, so a trajectory is a few hundred tokens, not thousands of bytes. The model is randomly initialised: it learns
whatever it is trained on, which is what the training and regression tests need. torch/transformers/tokenizers are
imported inside the functions, as in every adapter module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rstar.verify.steps import END_OF_ANSWER, END_OF_CODE, END_OF_STEP, build_prompt

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


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


def build_tokenizer(vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `_corpus()`; any text round-trips through it exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
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
    tokenizer = build_tokenizer(cfg.vocab_size)
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
