"""CNI error codes (spec 1.0 section "Error") and the error result every failure prints."""
from __future__ import annotations

import json
from typing import Any

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# 100+ are plugin-specific (the spec reserves 1-99).
POOL_EXHAUSTED = 100
DATAPLANE_FAILURE = 101
DELEGATE_FAILURE = 102
CHECK_FAILED = 103
UNEXPECTED = 999


class CNIError(Exception):
    """A failure reported to the runtime as ``{"cniVersion", "code", "msg", "details"}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"[{code}] {msg}" + (f": {details}" if details else ""))
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_json(cls, text: str, what: str) -> CNIError:
        """Parse a delegated plugin's error output; anything unparsable is a DELEGATE_FAILURE."""
        try:
            data = json.loads(text)
            return cls(int(data["code"]), str(data["msg"]), str(data.get("details", "")))
        except (ValueError, KeyError, TypeError):
            return cls(DELEGATE_FAILURE, f"{what} failed without a CNI error result", text[-2000:])
