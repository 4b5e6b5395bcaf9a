"""`hf` policy backend: a transformers causal LM run in-process (CPU or GPU) by our own batched sampling loop.

    policy = HFPolicy("/path/to/checkpoint")                        # or load_policy("hf:PATH") / load_policy("smollm2-135m")
    outs = policy.generate(prompts, SamplingSpec(n=8, stop=STOP_STRINGS, max_tokens=256), seeds=[...])

Why our own loop instead of `model.generate()`: MCTS asks for `n` samples of the *same* prompt (the trajectory so
far), and on CPU the prompt's prefill is most of the cost. `generate(num_return_sequences=n)` recomputes the prefill
n times and duplicates the prompt's KV cache n times. Here:

- **Each unique prompt is prefilled once** (left-padded micro-batches under a token budget; only the last position's
  logits are computed). Its KV cache is *shared* by its n samples, never copied: decoding uses "cascade" attention,
  i.e. attention over the shared prompt KV (one matmul for all n samples of a prompt) merged by log-sum-exp with
  attention over each sample's own generated tokens. This cuts attention memory traffic and KV memory by ~n
  (duplicated, the prompt KV of 64 rows x 800 tokens made attention cost 1-2 s per decode step on 2 CPU cores, several
  times the matmuls). It is registered as the attention implementation `rstar_cascade`, which falls back to SDPA for
  everything but our decode steps.
- **Prefix cache across calls**: the KV of recent prompts is kept (LRU, `prefix_cache_mb`); a prompt that extends one
  of them (a child node's prompt extends its parent's) computes only its new tokens.
- **Generated tokens** go into preallocated per-row buffers (no per-step `torch.cat` of the whole cache).
- **Finished rows cost nothing**: a row that hits a stop string, EOS or its token limit leaves the batch at once; the
  hole is filled by moving the last live row into it (copying one row, not the batch), and a prompt whose samples
  have all finished leaves the shared prefix the same way.
- **Per-row random streams**: sample j of a prompt with seed s draws from its own `torch.Generator` seeded from
  (s, j), so results do not depend on batch composition (`seeds=`, one per prompt; else `spec.seed + i`; else fresh
  entropy). Greedy when temperature == 0; nucleus (`top_p`) sampling by inverse CDF.
- **Stop strings** are checked on the decoded tail of each sequence (a stop string may span tokens); the returned text
  is cut before the earliest stop string and `stop_reason` names it. EOS ends a row with `stop_reason=None`.
- Rows are processed in chunks of at most `max_batch_size` sequences; prompts longer than the context minus
  `max_tokens` are truncated from the left (counted in `stats.truncated_prompts`).
- Device auto: CUDA with bf16 when available, else CPU with fp32; `torch.inference_mode()` throughout.

Supports decoder models whose attention goes through transformers' `AttentionInterface` (Llama, Qwen2, Mistral,
Phi-3, SmolLM2, ...) without sliding-window layers; others are refused at load time with a clear error.
torch/transformers are imported lazily (inside functions) so importing this module is cheap.
"""

from __future__ import annotations

import contextvars
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.types import Completion, SamplingSpec

ATTN_IMPL = "rstar_cascade"
SMALL_MODEL_PARAMS = 20_000_000  # below this, CPU decoding runs on one thread (see HFPolicy)
THREADS_ENV = "RSTAR_TORCH_THREADS"  # overrides the default torch CPU thread count
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of a prompt seeded `seed` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(position, stop string) of the earliest stop string in `text`; the longest wins a tie. None when absent."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
            best = (i, s)
    return best


@dataclass
class HFGenerationStats:
    """Running counters of an `HFPolicy` (read them for benchmarks; they are not reset between calls)."""

    calls: int = 0
    prompts: int = 0
    unique_prompts: int = 0  # prompts prefilled (identical prompts in one call share one prefill)
    sequences: int = 0
    prompt_tokens: int = 0  # tokens of the unique prompts (after truncation, without padding)
    cached_prompt_tokens: int = 0  # of those, tokens whose KV came from the prefix cache instead of a forward pass
    generated_tokens: int = 0
    truncated_prompts: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        busy = self.prefill_s + self.decode_s
        return self.generated_tokens / busy if busy > 0 else 0.0


@dataclass
class _Row:
    """One sequence being generated: sample `sample` of prompt `prompt`."""

    prompt: int
    sample: int
    seed: int
    ids: list[int] = field(default_factory=list)
    result: Completion | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Prefix cache: recent prompts' KV, reused by the prompts that extend them (a child node's prompt extends its parent's)


@dataclass
class _PrefixEntry:
    key: tuple[int, ...]
    ids: Any  # the same tokens as a numpy array, for fast prefix comparison
    kv: tuple[list[Any], list[Any]]  # keys, values per layer: [Hkv, len, D]


class PrefixCache:
    """An LRU of prompts' KV (at most `budget_tokens` tokens in all), looked up by longest common token prefix.

    In MCTS the prompt of a node is its parent's prompt plus one step, and the parent's prompt was prefilled when the
    parent was expanded, so most of each prompt's prefill can be skipped. Entries are bucketed by their first
    `min_reuse` tokens (the question, in MCTS), so a lookup compares only against prompts of the same problem; a match
    shorter than `min_reuse` tokens is not worth the copy and is ignored.
    """

    def __init__(self, budget_tokens: int, min_reuse: int = 16) -> None:
        self.budget_tokens = budget_tokens
        self.min_reuse = min_reuse
        self.tokens = 0
        self.lookups = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[int, ...], _PrefixEntry] = OrderedDict()
        self._buckets: dict[tuple[int, ...], set[tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: tuple[int, ...]) -> tuple[_PrefixEntry | None, int]:
        """(entry, reusable length): the cached prompt sharing the longest prefix with `ids`, capped at len(ids)-1
        (the last token is always computed: its logits start the generation)."""
        import numpy as np

        self.lookups += 1
        if len(ids) <= self.min_reuse:
            return None, 0
        arr = np.asarray(ids)
        best, best_len = None, 0
        for key in self._buckets.get(ids[: self.min_reuse], ()):
            entry = self._entries[key]
            m = min(len(arr), len(entry.ids))
            diff = np.flatnonzero(arr[:m] != entry.ids[:m])
            common = int(diff[0]) if diff.size else m
            if common > best_len:
                best, best_len = entry, common
        reuse = min(best_len, len(ids) - 1)
        if best is None or reuse < self.min_reuse:
            return None, 0
        self._entries.move_to_end(best.key)
        self.hits += 1
        return best, reuse

    def store(self, ids: tuple[int, ...], keys: list[Any], values: list[Any]) -> None:
        import numpy as np

        if len(ids) <= self.min_reuse or len(ids) > self.budget_tokens:
            return
        if ids in self._entries:
            self._entries.move_to_end(ids)
            return
        self._entries[ids] = _PrefixEntry(ids, np.asarray(ids), (keys, values))
        self._buckets.setdefault(ids[: self.min_reuse], set()).add(ids)
        self.tokens += len(ids)
        while self.tokens > self.budget_tokens:
            old, _ = self._entries.popitem(last=False)
            bucket = self._buckets[old[: self.min_reuse]]
            bucket.discard(old)
            if not bucket:
                del self._buckets[old[: self.min_reuse]]
            self.tokens -= len(old)

    def clear(self) -> None:
        self._entries.clear()
        self._buckets.clear()
        self.tokens = 0


# ----------------------------------------------------------------------------------------------------------------------
# Cascade attention: the decode-step state and the attention function


@dataclass
class _CascadeState:
    """What the attention function needs during one decode step, besides the suffix K/V it receives from the cache.

    prefix_k/v[layer]: [P_cap, Hkv, Lp, D] KV of the chunk's unique prompts (the first `groups` are live);
    prefix_bias: [P_cap, 1, 1, Lp] 0 / -inf for left padding; pad_index: [R] row -> flat slot in a [groups * width]
    query grid (row r is slot `slot[r]` of group `group[r]`).
    """

    prefix_k: list[Any]
    prefix_v: list[Any]
    prefix_bias: Any
    groups: int
    width: int
    pad_index: Any


_ACTIVE: contextvars.ContextVar[_CascadeState | None] = contextvars.ContextVar("rstar_cascade_state", default=None)


def _cascade_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Decode-step attention over [shared prompt KV] + [own generated KV], merged by log-sum-exp; SDPA otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    st = _ACTIVE.get()
    if st is None or query.shape[2] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("attention softcapping is not supported by the cascade decode attention")
    rows, hq, _, dim = query.shape
    hkv = key.shape[1]
    grp = hq // hkv
    scale = scaling if scaling is not None else dim**-0.5
    q = query[:, :, 0, :]  # [R, Hq, D]
    groups, width = st.groups, st.width
    pk = st.prefix_k[module.layer_idx][:groups]
    pv = st.prefix_v[module.layer_idx][:groups]

    # Shared prompt: the queries of a prompt's samples form one matrix against its KV (read once, not n times).
    qp = q.new_zeros(groups * width, hq, dim).index_copy_(0, st.pad_index, q)
    qp = qp.view(groups, width, hkv, grp, dim).permute(0, 2, 1, 3, 4).reshape(groups, hkv, width * grp, dim)
    s_p = torch.matmul(qp, pk.transpose(-1, -2)).float() * scale + st.prefix_bias[:groups]
    lse_p = torch.logsumexp(s_p, dim=-1, keepdim=True)
    o_p = torch.matmul(torch.exp(s_p - lse_p).to(pv.dtype), pv)  # [P, Hkv, W*G, D]
    o_p = o_p.view(groups, hkv, width, grp, dim).permute(0, 2, 1, 3, 4).reshape(groups * width, hq, dim)
    o_p = o_p.index_select(0, st.pad_index)
    lse_p = lse_p.view(groups, hkv, width, grp).permute(0, 2, 1, 3).reshape(groups * width, hq)
    lse_p = lse_p.index_select(0, st.pad_index)

    # Own generated tokens (all live rows have generated the same number, so no padding here).
    qs = q.reshape(rows, hkv, grp, dim)
    s_s = torch.matmul(qs, key.transpose(-1, -2)).float() * scale  # [R, Hkv, G, t]
    lse_s = torch.logsumexp(s_s, dim=-1, keepdim=True)
    o_s = torch.matmul(torch.exp(s_s - lse_s).to(value.dtype), value).reshape(rows, hq, dim)
    lse_s = lse_s.reshape(rows, hq)

    w = torch.sigmoid(lse_p - lse_s).unsqueeze(-1)
    out = o_p.float() * w + o_s.float() * (1.0 - w)
    return out.to(query.dtype).view(rows, 1, hq, dim), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPL, _cascade_attention)


def _suffix_cache(num_layers: int, rows: int, capacity: int) -> Any:
    """A transformers `Cache` whose layers keep each row's generated-token K/V in a growable preallocated buffer."""
    from transformers.cache_utils import Cache, DynamicLayer

    class SuffixLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.length = 0
            self.rows = rows
            self.kbuf: Any = None
            self.vbuf: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            t = key_states.shape[-2]
            if self.kbuf is None:
                self.is_initialized = True
                self.device = key_states.device
                b, h, _, d = key_states.shape
                self.kbuf = key_states.new_empty(b, h, max(capacity, t), d)
                self.vbuf = value_states.new_empty(b, h, max(capacity, t), d)
            elif self.length + t > self.kbuf.shape[2]:  # grow (rare: capacity doubles)
                cap = max(2 * self.kbuf.shape[2], self.length + t)
                for name in ("kbuf", "vbuf"):
                    old = getattr(self, name)
                    new = old.new_empty(old.shape[0], old.shape[1], cap, old.shape[3])
                    new[:, :, : self.length].copy_(old[:, :, : self.length])
                    setattr(self, name, new)
            n = self.rows
            self.kbuf[:n, :, self.length : self.length + t].copy_(key_states)
            self.vbuf[:n, :, self.length : self.length + t].copy_(value_states)
            self.length += t
            self.keys = self.kbuf[:n, :, : self.length]
            self.values = self.vbuf[:n, :, : self.length]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def move_rows(self, dst: Any, src: Any, rows_left: int) -> None:
            if self.kbuf is not None and len(dst):
                self.kbuf[dst, :, : self.length] = self.kbuf[src, :, : self.length]
                self.vbuf[dst, :, : self.length] = self.vbuf[src, :, : self.length]
            self.rows = rows_left

    return Cache(layers=[SuffixLayer() for _ in range(num_layers)])


# ----------------------------------------------------------------------------------------------------------------------
# The policy


class HFPolicy:
    """A `PolicyLM` running a transformers causal LM in-process. See the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        model_id: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_size: int | None = None,
        prefill_tokens: int = 8192,
        max_model_len: int | None = None,
        num_threads: int | None = None,
        prefix_cache_mb: int = 2048,
    ) -> None:
        """Load the model and tokenizer from a `save_pretrained` folder.

        device: "cuda", "cpu", ... (default: cuda when available). dtype: "float32", "bfloat16", "float16" (default:
        bf16 on CUDA, fp32 on CPU). max_batch_size: sequences decoded together (default 256 on CPU, 512 on CUDA; with
        the prompt KV shared a row costs little memory, and on CPU tokens/s still grows from 64 to 256 rows).
        prefill_tokens: padded query tokens per prefill forward pass. max_model_len: context length (default: the
        model's `max_position_embeddings`). num_threads: torch CPU threads (default: $RSTAR_TORCH_THREADS, else the
        CPUs this process may use, one for models under 20M parameters; torch's thread count is process-wide). prefix_cache_mb: memory for the
        KV of recent prompts, reused by prompts that extend them (0 turns the prefix cache off).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"no transformers model folder at {self.path} (config.json missing)")
        self._model_id = model_id or f"hf:{self.path}"
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is None:
            tdtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        _register_attention()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=tdtype, attn_implementation="sdpa")
        cfg = model.config
        if num_threads is None and os.environ.get(THREADS_ENV, "").strip():
            num_threads = int(os.environ[THREADS_ENV])
        if num_threads is None and self.device.type == "cpu":
            # One thread per CPU this process may use; a tiny model's ops are too small to split (one thread). On a
            # machine shared with other busy processes every parallel op waits for a descheduled thread: two threads
            # then ran up to 10x slower than one, so set RSTAR_TORCH_THREADS=1 (or num_threads=1) there.
            allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
            num_threads = 1 if small else min(torch.get_num_threads(), allowed)
        if num_threads and num_threads != torch.get_num_threads():
            torch.set_num_threads(num_threads)
        if getattr(cfg, "use_sliding_window", False) or any(
            t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
        ):
            raise NotImplementedError(
                f"{self.path}: models with sliding-window / non-full attention layers are not supported by the hf "
                "backend; serve them with vLLM and use the openai backend"
            )
        if not model._can_set_attn_implementation():
            raise NotImplementedError(f"{type(model).__name__} does not route attention through AttentionInterface")
        model.set_attn_implementation(ATTN_IMPL)
        self.model: Any = model.to(self.device).eval()
        self.dtype = tdtype
        self.num_layers = int(cfg.num_hidden_layers)
        self.max_model_len = int(max_model_len or getattr(cfg, "max_position_embeddings", 0) or 4096)
        self.max_batch_size = int(max_batch_size or (512 if self.device.type == "cuda" else 256))
        if self.max_batch_size < 1 or prefill_tokens < 1:
            raise ValueError("max_batch_size and prefill_tokens must be >= 1")
        self.prefill_tokens = int(prefill_tokens)
        eos: set[int] = set()
        for src in (getattr(model, "generation_config", None), cfg):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            eos.update([e] if isinstance(e, int) else list(e or []))
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (min(eos) if eos else 0))
        bos = self.tokenizer.bos_token_id
        self._empty_prompt_ids = [int(bos if bos is not None else self.pad_token_id)]
        self.stats = HFGenerationStats()
        self._lock = threading.Lock()
        heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        bytes_per_token = self.num_layers * 2 * heads * head_dim * torch.tensor([], dtype=tdtype).element_size()
        budget = prefix_cache_mb * 2**20 // bytes_per_token
        self.prefix_cache: PrefixCache | None = PrefixCache(budget) if budget > 0 else None

    @property
    def model_id(self) -> str:
        return self._model_id

    def __repr__(self) -> str:
        return f"HFPolicy({str(self.path)!r}, device={self.device}, dtype={self.dtype})"

    # -- public API ----------------------------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """`spec.n` completions per prompt, in prompt order. `seeds`: one per prompt (see the module docstring)."""
        import torch

        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        if seeds is not None:
            prompt_seeds = [int(s) for s in seeds]
        elif spec.seed is not None:
            prompt_seeds = [spec.seed + i for i in range(len(prompts))]
        else:
            prompt_seeds = [secrets.randbits(63) for _ in prompts]

        with self._lock, torch.inference_mode():
            max_new = max(1, min(spec.max_tokens, self.max_model_len - 1))
            keep = self.max_model_len - max_new
            encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
            token_ids: list[tuple[int, ...]] = []
            for ids in encoded:
                ids = list(ids) or self._empty_prompt_ids
                if len(ids) > keep:  # keep the end (the newest steps), and a leading BOS the tokenizer added
                    bos = self.tokenizer.bos_token_id
                    head = [ids[0]] if bos is not None and ids[0] == bos and keep > 1 else []
                    ids = head + ids[len(ids) - (keep - len(head)) :]
                    self.stats.truncated_prompts += 1
                token_ids.append(tuple(ids))
            # Identical prompts share one prefill; longest first so that chunks pad little.
            unique: dict[tuple[int, ...], list[int]] = {}
            for i, ids in enumerate(token_ids):
                unique.setdefault(ids, []).append(i)
            rows_by_prompt = {
                i: [_Row(i, j, sample_seed(prompt_seeds[i], j)) for j in range(spec.n)] for i in range(len(prompts))
            }
            groups = sorted(unique.items(), key=lambda kv: -len(kv[0]))
            self.stats.calls += 1
            self.stats.prompts += len(prompts)
            self.stats.sequences += len(prompts) * spec.n

            chunk: list[tuple[tuple[int, ...], list[_Row]]] = []
            filled = 0
            for ids, idxs in groups:
                group_rows = [r for i in idxs for r in rows_by_prompt[i]]
                while group_rows:
                    take = group_rows[: self.max_batch_size - filled]
                    group_rows = group_rows[len(take) :]
                    chunk.append((ids, take))
                    filled += len(take)
                    if filled >= self.max_batch_size:
                        self._run_chunk(chunk, spec, max_new)
                        chunk, filled = [], 0
            if chunk:
                self._run_chunk(chunk, spec, max_new)

        out: list[list[Completion]] = []
        for i in range(len(prompts)):
            done = [r.result for r in rows_by_prompt[i]]
            assert all(c is not None for c in done)
            out.append([c for c in done if c is not None])
        return out

    # -- one chunk: prefill its unique prompts once, then decode all its rows together ----------------------------------

    def _prefill(self, prompts: list[tuple[int, ...]]) -> tuple[list[Any], list[Any], Any, Any]:
        """KV of a chunk's unique prompts, reusing cached prefixes: per layer [P, Hkv, T, D] (left-padded to the
        longest prompt T), the [P, T] key-valid mask, and the last position's logits [P, V]."""
        import torch

        hits = [self.prefix_cache.lookup(p) if self.prefix_cache else (None, 0) for p in prompts]
        # Micro-batches of prompts with similar numbers of tokens left to compute, under the token budget.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) - hits[i][1])
        kv: list[tuple[list[Any], list[Any]]] = [([], [])] * len(prompts)
        logits: list[Any] = [None] * len(prompts)
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order):
                n_max = len(prompts[order[stop]]) - hits[order[stop]][1]
                if (stop + 1 - start) * n_max > self.prefill_tokens:
                    break
                stop += 1
            batch = order[start:stop]
            for i, (k, v, lg) in zip(
                batch, self._prefill_micro([prompts[i] for i in batch], [hits[i] for i in batch]), strict=True
            ):
                kv[i], logits[i] = (k, v), lg
            start = stop
        if self.prefix_cache is not None:
            for p, (k, v) in zip(prompts, kv, strict=True):
                self.prefix_cache.store(p, k, v)
        self.stats.cached_prompt_tokens += sum(c for _, c in hits)
        # The chunk's shared prefix: each prompt right-aligned (left padding), pads zeroed (masked, but must be finite).
        width = max(len(p) for p in prompts)
        valid = torch.zeros((len(prompts), width), dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            valid[i, width - len(p) :] = True
        keys: list[Any] = []
        values: list[Any] = []
        for layer in range(self.num_layers):
            for src, dst in ((0, keys), (1, values)):
                first = kv[0][src][layer]
                buf = first.new_zeros(len(prompts), first.shape[0], width, first.shape[2])
                for i, p in enumerate(prompts):
                    buf[i, :, width - len(p) :] = kv[i][src][layer]
                dst.append(buf)
        return keys, values, valid, torch.stack(logits)

    def _prefill_micro(
        self, prompts: list[tuple[int, ...]], hits: list[tuple[Any, int]]
    ) -> list[tuple[list[Any], list[Any], Any]]:
        """One forward pass over the prompts' uncached tokens, attending to their cached prefixes.

        Row r holds [pad | cached prefix (c_r) | pad | new tokens (n_r)] with explicit positions and a 4D mask, so
        prompts with different cached lengths share the pass. Returns, per prompt, its whole KV per layer
        ([Hkv, len, D], contiguous) and its last position's logits.
        """
        import torch
        from transformers import DynamicCache

        b = len(prompts)
        cs = [c for _, c in hits]
        ns = [len(p) - c for p, c in zip(prompts, cs, strict=True)]
        cmax, nmax = max(cs), max(ns)
        ids = torch.full((b, nmax), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((b, nmax), dtype=torch.long)
        new_valid = torch.zeros((b, nmax), dtype=torch.bool)
        past_valid = torch.zeros((b, cmax), dtype=torch.bool)
        for r, (p, c, n) in enumerate(zip(prompts, cs, ns, strict=True)):
            ids[r, nmax - n :] = torch.tensor(p[c:], dtype=torch.long)
            pos[r, nmax - n :] = torch.arange(c, c + n)
            new_valid[r, nmax - n :] = True
            past_valid[r, cmax - c :] = True
        ids, pos, new_valid, past_valid = (t.to(self.device) for t in (ids, pos, new_valid, past_valid))
        causal = torch.ones(nmax, nmax, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(nmax, dtype=torch.bool, device=self.device)
        # Pad queries attend to themselves so that no row of the softmax is empty (NaN would leak into values).
        own = (causal & new_valid[:, None, None, :]) | eye
        mask = torch.cat([past_valid[:, None, None, :].expand(b, 1, nmax, cmax), own], dim=-1)
        if cmax:
            past = []
            for layer in range(self.num_layers):
                pair = []
                for src in (0, 1):
                    ref = hits[cs.index(cmax)][0].kv[src][layer]
                    buf = ref.new_zeros(b, ref.shape[0], cmax, ref.shape[2])
                    for r, (entry, c) in enumerate(hits):
                        if c:
                            buf[r, :, cmax - c :] = entry.kv[src][layer][:, :c]
                    pair.append(buf)
                past.append((pair[0], pair[1]))
            cache: Any = DynamicCache(past, config=self.model.config)
        else:
            cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, logits_to_keep=1)
        last = out.logits[:, -1, :].float()
        results = []
        for r, (c, n) in enumerate(zip(cs, ns, strict=True)):
            k_r, v_r = [], []
            for layer in range(self.num_layers):
                lk, lv = cache.layers[layer].keys[r], cache.layers[layer].values[r]
                k_r.append(torch.cat([lk[:, cmax - c : cmax], lk[:, cmax + nmax - n :]], dim=1))
                v_r.append(torch.cat([lv[:, cmax - c : cmax], lv[:, cmax + nmax - n :]], dim=1))
            results.append((k_r, v_r, last[r]))
        return results

    def _run_chunk(self, chunk: list[tuple[tuple[int, ...], list[_Row]]], spec: SamplingSpec, max_new: int) -> None:
        import torch

        t0 = time.perf_counter()
        prompts = [ids for ids, _ in chunk]
        pk, pv, valid, first_logits = self._prefill(prompts)
        self.stats.unique_prompts += len(prompts)
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        t1 = time.perf_counter()
        self.stats.prefill_s += t1 - t0

        rows: list[_Row] = [r for _, rs in chunk for r in rs]
        group = torch.tensor([g for g, (_, rs) in enumerate(chunk) for _ in rs], dtype=torch.long)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        position = lens[group].clone()  # position of the token each row feeds next
        uniforms = None
        if not spec.greedy:
            uniforms = torch.stack(
                [torch.rand(max_new, generator=torch.Generator().manual_seed(r.seed)) for r in rows]
            )  # [R, max_new]; row r's stream depends only on (prompt seed, sample index)
        bias = torch.zeros(valid.shape, dtype=torch.float32, device=self.device).masked_fill_(~valid, float("-inf"))
        state = _CascadeState(pk, pv, bias[:, None, None, :], len(prompts), 1, torch.zeros(0, dtype=torch.long))
        cache = _suffix_cache(self.num_layers, len(rows), min(max_new, 128))
        logits = first_logits.index_select(0, group.to(self.device))
        stop_window = max((len(s) for s in spec.stop), default=0) + 8
        live = list(range(len(rows)))  # batch slot -> index into rows

        for step in range(max_new):
            u = None if uniforms is None else uniforms[torch.tensor(live), step].to(self.device)
            tokens = _sample(logits, spec, u).tolist()
            finished: list[int] = []
            for slot, tok in enumerate(tokens):
                row = rows[live[slot]]
                row.ids.append(int(tok))
                if (result := self._check_finished(row, spec, max_new, stop_window)) is not None:
                    row.result = result
                    finished.append(slot)
            self.stats.generated_tokens += len(tokens)
            if len(finished) == len(live):
                break
            fed = torch.tensor(tokens, dtype=torch.long)
            if finished:
                # Fill each hole left by a finished row with the last live row: one row copied per finished row.
                dead = set(finished)
                n_left = len(live) - len(dead)
                movers = [s for s in range(n_left, len(live)) if s not in dead]
                holes = [s for s in finished if s < n_left]
                order = list(range(len(live)))
                for h, m in zip(holes, movers, strict=True):
                    order[h] = m
                order = order[:n_left]
                live = [live[s] for s in order]
                idx = torch.tensor(order, dtype=torch.long)
                fed, group, position = fed[idx], group[idx], position[idx]
                dst, src = torch.tensor(holes, dtype=torch.long), torch.tensor(movers, dtype=torch.long)
                for layer in cache.layers:
                    layer.move_rows(dst.to(self.device), src.to(self.device), n_left)
                # Prompts whose samples all finished leave the shared prefix (the last live prompt takes the slot).
                alive_groups = set(group.tolist())
                if len(alive_groups) < state.groups:
                    remap = {g: g for g in range(state.groups)}
                    n_groups = len(alive_groups)
                    g_movers = [g for g in range(n_groups, state.groups) if g in alive_groups]
                    g_holes = [g for g in range(n_groups) if g not in alive_groups]
                    for h, m in zip(g_holes, g_movers, strict=True):
                        for tensors in (pk, pv):
                            for t in tensors:
                                t[h].copy_(t[m])
                        state.prefix_bias[h].copy_(state.prefix_bias[m])
                        remap[m] = h
                    group = torch.tensor([remap[g] for g in group.tolist()], dtype=torch.long)
                    state.groups = n_groups
            # Query grid: row r is slot k of its group; the grid is groups x width (width = most rows of one group).
            counts: dict[int, int] = {}
            slots = []
            for g in group.tolist():
                slots.append(counts.get(g, 0))
                counts[g] = slots[-1] + 1
            state.width = max(counts.values())
            state.pad_index = (group * state.width + torch.tensor(slots, dtype=torch.long)).to(self.device)
            token_ctx = _ACTIVE.set(state)
            try:
                out = self.model(
                    input_ids=fed[:, None].to(self.device),
                    position_ids=position[:, None].to(self.device),
                    cache=cache,
                    attention_mask=None,
                )
            finally:
                _ACTIVE.reset(token_ctx)
            logits = out.logits[:, -1, :].float()
            position = position + 1
        else:
            for r in live:  # safety net: the finish check already ends every row at max_new tokens
                if rows[r].result is None:
                    rows[r].result = self._finish(rows[r], "length", None, None)
        self.stats.decode_s += time.perf_counter() - t1

    # -- finishing ---------------------------------------------------------------------------------------------------

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _finish(self, row: _Row, finish: str, stop: str | None, text: str | None) -> Completion:
        if text is None:
            text = self._decode(row.ids)
        return Completion(
            text=text,
            finish_reason="length" if finish == "length" else "stop",
            stop_reason=stop,
            num_tokens=len(row.ids),
        )

    def _check_finished(self, row: _Row, spec: SamplingSpec, max_new: int, window: int) -> Completion | None:
        tok = row.ids[-1]
        if tok in self.eos_token_ids:
            return self._finish(row, "stop", None, self._decode(row.ids[:-1]))
        if spec.stop and any(s in self._decode(row.ids[-window:]) for s in spec.stop):
            full = self._decode(row.ids)
            hit = find_stop(full, spec.stop)
            if hit is not None:
                return self._finish(row, "stop", hit[1], full[: hit[0]])
        if len(row.ids) >= max_new:
            return self._finish(row, "length", None, None)
        return None


def _sample(logits: Any, spec: SamplingSpec, u: Any) -> Any:
    """One token per row: argmax when greedy, else inverse-CDF sampling with the row's uniform `u` (top_p applied)."""
    import torch

    if spec.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / spec.temperature, dim=-1)
    u = u.clamp(min=1e-12)
    if spec.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(dim=-1)
        sp = sp.masked_fill((cum - sp) >= spec.top_p, 0.0)  # keep the smallest prefix with mass >= top_p
        cum = sp.cumsum(dim=-1)
        idx = (cum < u[:, None] * cum[:, -1:]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)
        return si.gather(-1, idx[:, None])[:, 0]
    cum = probs.cumsum(dim=-1)
    return (cum < u[:, None] * cum[:, -1:]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)
