"""Quantities as people write and read them: ``100M``, ``128GiB``, ``15%``, ``25-50``; ``24 M``,
``1.29 MiB``. The parsers serve ``roost capacity``'s flags; they raise ValueError, which the
command line turns into a usage error."""

from __future__ import annotations

import math

GIB = 1024**3
MIB = 1024**2


# -- parsing -------------------------------------------------------------------------------

_COUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_BYTE_SUFFIXES = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_count(text: str) -> float:
    """``"100M"``, ``"1.5e8"``, ``"160_000_000"``, ``"24k"`` -> a number."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    scale = _COUNT_SUFFIXES.get(cleaned[-1:].lower())
    if scale is not None:
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned) * (scale or 1)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative number: {text!r}")
    return value


def parse_bytes(text: str) -> int:
    """``"1.3MB"``, ``"128GiB"``, ``"512 MiB"``, ``"1365213"`` -> bytes."""
    cleaned = text.strip().replace("_", "").replace(",", "").replace(" ", "").lower()
    for suffix in sorted(_BYTE_SUFFIXES, key=len, reverse=True):
        if cleaned.endswith(suffix):
            number, scale = cleaned[: -len(suffix)], _BYTE_SUFFIXES[suffix]
            break
    else:
        number, scale = cleaned, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 1.3MB, 128GiB or a number of bytes)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative size: {text!r}")
    return round(value)


def parse_share(text: str) -> float:
    """``"15%"`` or ``"0.15"`` -> 0.15."""
    cleaned = text.strip()
    try:
        value = float(cleaned[:-1]) / 100 if cleaned.endswith("%") else float(cleaned)
    except ValueError:
        raise ValueError(f"not a share: {text!r} (try 15% or 0.15)") from None
    if not 0 <= value <= 1:
        raise ValueError(f"a share is between 0 and 1 (0% and 100%): {text!r}")
    return value


def parse_range(text: str) -> tuple[float, float]:
    """``"25-50"`` -> (25, 50); ``"40"`` -> (40, 40)."""
    low_text, sep, high_text = text.strip().partition("-")
    low = parse_count(low_text)
    high = parse_count(high_text) if sep else low
    if low <= 0 or high < low:
        raise ValueError(f"not a range LOW-HIGH of positive numbers: {text!r}")
    return low, high


# -- formatting ----------------------------------------------------------------------------


def format_count(value: float) -> str:
    """A count as people say it: 24 M, 480 K, 160 M."""
    for scale, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_bytes(value: float) -> str:
    for scale, unit in ((1024**5, "PiB"), (1024**4, "TiB"), (GIB, "GiB"), (MIB, "MiB")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    if value >= 1024:
        return f"{value / 1024:.3g} KiB"
    return f"{value:.0f} B"
