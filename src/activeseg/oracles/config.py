"""The ``oracle`` section of a run config: who labels, and how the annotation server is guarded (its bearer token
kept only as a hash, the largest upload). Part of the run config tree of :mod:`activeseg.config`, which re-exports it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from activeseg.validation import require

MAX_UPLOAD_MB = 4096.0
"""The largest ``oracle.max_upload_mb``."""
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class OracleConfig:
    """Who labels the queried volumes: ground truth revealed at once (benchmarks), or a person (see ``human.py``)."""

    kind: Literal["simulated", "human"] = "simulated"
    advance: Literal["all", "manual"] = "all"
    """Human oracle: the next round starts once every queried label has arrived (``all``; the user may still
    accept a partial set explicitly), or when the user says so, with the labels that have arrived (``manual``)."""
    token: str | None = None
    """Bearer token of ``activeseg serve`` (at least 16 characters). Only its sha256 is kept: the loaded config holds
    ``token_sha256`` and ``token: null``, so a run's config.yaml never holds the token itself. Default: the token
    from ``--token-file`` or ``$ACTIVESEG_TOKEN``, else the one ``serve`` generated for the run."""
    token_sha256: str | None = None
    """The sha256 (hex) of the bearer token; set from ``token``, or directly."""
    max_upload_mb: float = 1024.0
    """Largest label upload the server accepts (it also refuses anything larger than a label of the image can be).
    The default admits an uncompressed label of a clinical scan (512×512×300 voxels: 79 MB as uint8, 157 MB as
    int16); the viewer sends gzip, a few MB."""

    def __post_init__(self) -> None:
        require(self.token is None or len(self.token) >= 16, "oracle.token", "must be at least 16 characters")
        require(
            self.token_sha256 is None or bool(_SHA256_HEX.match(self.token_sha256)),
            "oracle.token_sha256",
            "must be 64 lower-case hex digits (the sha256 of the token)",
        )
        if self.token is not None:
            digest = hashlib.sha256(self.token.encode()).hexdigest()
            require(
                self.token_sha256 in (None, digest), "oracle.token", "does not match oracle.token_sha256; set only one"
            )
            object.__setattr__(self, "token_sha256", digest)
            object.__setattr__(self, "token", None)
        require(0 < self.max_upload_mb <= MAX_UPLOAD_MB, "oracle.max_upload_mb", f"must be in (0, {MAX_UPLOAD_MB:g}]")
