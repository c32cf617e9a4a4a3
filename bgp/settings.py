"""The agent's BGP settings from its environment (``PYCALICO_BGP_*``), each validated with the
variable named. Reads the process environment by default; nothing else.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from bgp.speaker_core import DEFAULT_MAX_PREFIXES


def max_prefixes_from_env(env: Mapping[str, str] = os.environ) -> int | None:
    """PYCALICO_BGP_MAX_PREFIXES: the per-peer limit (0: none; default DEFAULT_MAX_PREFIXES)."""
    text = env.get("PYCALICO_BGP_MAX_PREFIXES", "").strip()
    if not text:
        return DEFAULT_MAX_PREFIXES
    if not text.isdigit():
        raise ValueError(f"PYCALICO_BGP_MAX_PREFIXES: {text!r} is not a non-negative integer")
    return int(text) or None


def origin_validation_from_env(env: Mapping[str, str] = os.environ) -> bool:
    """PYCALICO_BGP_ORIGIN_VALIDATION: true (default) or false. Off only where BGP brings pool
    prefixes no IPAM block records (bench.bgp_convergence: 100k /26s from one BIRD)."""
    text = env.get("PYCALICO_BGP_ORIGIN_VALIDATION", "true").strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"PYCALICO_BGP_ORIGIN_VALIDATION: {text!r} is not true or false")
    return text == "true"


def stops_for_good_from_env(env: Mapping[str, str] = os.environ) -> bool:
    """PYCALICO_BGP_STOP: ``graceful`` (default) or ``cease``. What a signalled agent (SIGTERM,
    SIGINT) does to its BGP sessions: ``graceful`` takes every stop for a restart (peers keep our
    routes by graceful restart, unless our Node is gone from the datastore: then the node is
    leaving and they get a Cease); ``cease`` sends every session a Cease on every stop (a node
    that never comes back, or peers that should not wait for it)."""
    text = env.get("PYCALICO_BGP_STOP", "graceful").strip().lower()
    if text not in ("graceful", "cease"):
        raise ValueError(f"PYCALICO_BGP_STOP: {text!r} is not graceful or cease")
    return text == "cease"
