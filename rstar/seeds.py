"""The one way the project turns identifying values into a sampling seed.

Every random choice that must be reproducible (an MCTS expansion, an evaluation sample, a fake model's output) is
seeded by `stable_seed(run seed, what is being sampled...)`: a hash, not a counter, so a result does not depend on
which other problems share its batch, on their order, or on the process (`hash()` is salted per process).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 31  # fits every consumer: torch generators, numpy, random.Random, and vLLM's per-request seed (int32)


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any values (their `str`, joined by the unit separator), stable across processes."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & (
        (1 << SEED_BITS) - 1
    )
