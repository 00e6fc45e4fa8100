"""Seeds split by purpose: every use of randomness draws from its own stream of (seed, purpose)."""
from __future__ import annotations

import hashlib
import json

import torch


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from (seed, purpose), so each use of randomness has its own stream."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, purpose))
    return g


def derive_seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(json.dumps([seed, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
