"""Sizes in configuration: `20GiB`, `500MB`, `1.5G` or a number of bytes."""

from __future__ import annotations

import math
import re

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtpe])(i)?)?b?", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str | int) -> int:
    """Parse a size such as `20GiB`, `500MB`, `1.5G` or `1048576` into bytes.

    `KiB`, `MiB`, `GiB`, `TiB` (and `Ki`, `Mi`...) are powers of 1024; `kB`, `MB`, `GB`,
    `TB` (and `k`, `M`, `G`, `T`) powers of 1000; a bare number counts bytes.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"invalid size {text!r}: must be positive")
        return text
    m = _SIZE_RE.fullmatch(str(text).strip())
    if m is None:
        raise ValueError(f"invalid size {text!r}: expected for example 20GiB, 500MB or 1048576")
    number, prefix, binary = m.groups()
    base = 1024 if binary else 1000
    size = float(number) * base ** _SIZE_POWERS[prefix.lower()] if prefix else float(number)
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"invalid size {text!r}: must be at least one byte")
    return int(size)
