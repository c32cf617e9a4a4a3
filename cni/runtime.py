"""Run one CNI invocation: read stdin and env, dispatch, print the result or the error JSON.

Exceptions are classified once here: permanent configuration problems, "try again later" (code 11:
the datastore is unreachable or we lost every compare-and-swap race), exhaustion, and unexpected
failures (999, with the exception in ``details``). stdout carries only the result; logs go to stderr
or to ``log_file_path`` (created 0600, its directory 0700 if missing, whatever the umask: CNI_ARGS
and pod names are not for every local user).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import hostio

from cni.config import SUPPORTED_VERSIONS, Invocation, NetConf, cni_version_of, parse_env, parse_netconf
from cni.errors import (
    INVALID_CONFIG, IO_FAILURE, POOL_EXHAUSTED, TRY_AGAIN_LATER, UNEXPECTED, CNIError,
)
from datastore import Conflict, Unavailable
from felix.logs import FieldsFormatter
from ipam import IPAMError, PoolExhausted, RetriesExhausted

log = logging.getLogger("cni")

Handler = Callable[[Invocation, NetConf], "dict[str, Any] | None"]


def run(handlers: Mapping[str, Handler], *, stdin: bytes | None = None,
        env: Mapping[str, str] | None = None, stdout: TextIO | None = None,
        configure_logging: bool = True) -> int:
    """Exit status 0 on success (result, if any, printed), 1 with an error JSON otherwise.

    ``configure_logging`` owns the root logger (the process is ours); tests pass False.
    """
    env = os.environ if env is None else env
    stdout = stdout or sys.stdout
    raw = sys.stdin.buffer.read() if stdin is None else stdin
    version = cni_version_of(raw)
    try:
        inv = parse_env(env)
        if inv.command == "VERSION":
            _emit(stdout, {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0
        conf = parse_netconf(raw)
        if configure_logging:
            _setup_logging(conf)
        # Not "args": an extra key that is a LogRecord attribute fails the call (KeyError).
        log.info("cni %s", inv.command, extra={"container": inv.container_id,
                                               "cni_args": dict(inv.args)})
        result = handlers[inv.command](inv, conf)
    except Exception as exc:  # noqa: BLE001 — every failure must become an error result
        err = classify(exc)
        log.log(logging.ERROR if err.code == UNEXPECTED else logging.WARNING, "cni failed: %s", err,
                exc_info=err.code == UNEXPECTED)
        _emit(stdout, err.to_json(version))
        return 1
    if result is not None:
        _emit(stdout, result)
    return 0


def classify(exc: Exception) -> CNIError:
    if isinstance(exc, CNIError):
        return exc
    if isinstance(exc, (RetriesExhausted, Unavailable, Conflict)):
        return CNIError(TRY_AGAIN_LATER, "datastore busy or unreachable, try again later", str(exc))
    if isinstance(exc, PoolExhausted):
        return CNIError(POOL_EXHAUSTED, "no free IP address", str(exc))
    if isinstance(exc, IPAMError):  # NoEligiblePool and friends: the configuration names them
        return CNIError(INVALID_CONFIG, "IPAM configuration error", str(exc))
    return CNIError(UNEXPECTED, f"unexpected {type(exc).__name__}", str(exc))


def _emit(stdout: TextIO, data: dict[str, Any]) -> None:
    stdout.write(json.dumps(data, indent=1) + "\n")
    stdout.flush()


def _setup_logging(conf: NetConf) -> None:
    handler = _PrivateFileHandler(conf.log_file_path) if conf.log_file_path else (
        logging.StreamHandler(sys.stderr))
    handler.setFormatter(FieldsFormatter(f"%(asctime)s [%(levelname)s] {os.getpid()} %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping()[conf.log_level])


class _PrivateFileHandler(logging.FileHandler):
    """Appends to ``path``, created 0600 through ``hostio`` (never via a symlink), whatever the umask."""

    def __init__(self, path: str) -> None:
        try:
            if not Path(path).parent.exists():  # never chmod an existing directory such as /var/log
                hostio.private_dir(Path(path).parent)
            super().__init__(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"log_file_path: cannot open {path}", str(exc)) from None

    def _open(self):  # logging.FileHandler's hook: open(path, "a") would follow the umask
        return os.fdopen(hostio.open_private(self.baseFilename, append=True), "a",
                         encoding=self.encoding)
