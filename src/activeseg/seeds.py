"""Named seeds drawn from a run seed: every use of randomness gets its own, recorded before it is used."""

from __future__ import annotations

import hashlib

ROUND_STAGES = ("train", "mc_dropout", "select")


def derive_seed(seed: int, *path: object) -> int:
    """A 63-bit seed for one named use of the run seed, e.g. ``derive_seed(0, "train", 3)``."""
    digest = hashlib.sha256("/".join(map(str, (seed, *path))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def round_seeds(seed: int, round_index: int) -> dict[str, int]:
    """All randomness of a round, drawn before the round starts. Strategy-independent, so runs are paired."""
    return {stage: derive_seed(seed, stage, round_index) for stage in ROUND_STAGES}
