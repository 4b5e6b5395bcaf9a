"""Overfit a tiny model on a few texts so that greedy decoding reproduces them (deterministic stop / EOS tests).

    path = overfit_tiny(tmp_path / "m", ["Q: 2+3\\nx = 2 + 3\\n<end_of_step>\\n..."], steps=150)

Starts from `rstar.models.tiny.build_tiny_model` (random weights), trains on the texts with EOS appended, saves a
`save_pretrained` folder. ~1-2 s for a handful of short texts on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rstar.models.tiny import TinyModelConfig, build_tiny_model


def overfit_tiny(out_dir: Path, texts: Sequence[str], *, steps: int = 200, lr: float = 1e-2, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_model(out_dir.parent / f"{out_dir.name}-base", TinyModelConfig(seed=seed))
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        rows = [[*tok(t).input_ids, tok.eos_token_id] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
