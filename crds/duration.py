"""Go duration strings as Calico writes them (``120s``, ``2m``, ``1m30s``, ``1.5h``, ``500ms``).

Purely computational; no I/O.

>>> parse_duration("120s"), parse_duration("2m0s"), parse_duration("1h30m"), parse_duration("250ms")
(120.0, 120.0, 5400.0, 0.25)
"""
from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration; ValueError naming the text if it is not one (or is negative)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration string such as '120s' or '2m'")
    rest, total = text.strip(), 0.0
    if rest == "0":
        return 0.0
    if not rest or rest.startswith(("-", "+")):
        raise ValueError(f"{text!r} is not a non-negative duration such as '120s' or '2m'")
    pos = 0
    while pos < len(rest):
        match = _PART.match(rest, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as '120s', '2m' or '1m30s'")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total
