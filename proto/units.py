"""Parsing of the sizes (`512MiB`) and durations (`500ms`) every command line accepts."""
from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2,
               "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4,
               "tb": 1000**4, "tib": 1 << 40}
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, units: dict[str, int] | None = None) -> int:
    """Bytes in `text`: a plain integer or a number with a unit (KiB, MiB, GiB, KB, ...).
    units: another table of lower-case unit -> bytes (Mooncake's, where "GB" is 2**30)."""
    if isinstance(text, int):
        return text
    units = _SIZE_UNITS if units is None else units
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in units:
        raise ValueError(f"not a size: {text!r} (try 512MiB or 4GiB)")
    return int(float(match.group(1)) * units[unit])


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`: a number of seconds or a number with a unit (us, ms, s, m, h)."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _DURATION_UNITS:
        raise ValueError(f"not a duration: {text!r} (try 500ms or 10s)")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def human_size(n: int) -> str:
    """A size for tables people read: in its largest binary unit, whole when exact (64MiB),
    else to one decimal (1.5GiB, where format_size, exact for parsing back, says 1536MiB)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n // scale}{unit}" if n % scale == 0 else f"{n / scale:.1f}{unit}"
    return f"{n}B"
