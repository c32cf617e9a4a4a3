"""How the ExaBGP child is started and watched: its command line, its environment, its API relay,
its log, and who may speak for it.

Does I/O (reads /proc and PATH, renames the log); ``speaker`` runs the child with these.

- The child gets PR_SET_PDEATHSIG=SIGKILL through setpriv (util-linux), not a preexec_fn: it
  never outlives the agent, even a SIGKILLed one, and no Python runs between fork and exec in a
  process whose gRPC and syncer threads may hold locks.
- The relay is ``socat`` (``relay_command``), ExaBGP's API process, joining its pipes to
  ``exabgp.sock``; its parent is the ExaBGP child, which is what ``parent_pid`` lets the speaker
  check before it accepts a connection.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
from ipaddress import IPv4Address
from pathlib import Path

from bgp import exabgp_main

LOG_MAX_BYTES = 16 * 2**20


def argv(run_dir: Path, netns: str | None) -> list[str]:
    """The child's command line: ExaBGP's own __main__ without OpenSSL loaded (``exabgp_main``;
    4 MB per node), under setpriv, in ``netns`` if given (``ip netns exec`` execs: the PID stays
    ExaBGP's)."""
    args = ["setpriv", "--pdeathsig", "KILL", "--",
            sys.executable, exabgp_main.__file__, "server", str(run_dir / "exabgp.conf")]
    return args if netns is None else ["ip", "netns", "exec", netns, *args]


def relay_command(sock_path: Path) -> tuple[str, ...]:
    """The API process ExaBGP runs: ``socat`` joining its stdin/stdout to ``exabgp.sock``.

    socat, not a Python relay: 2.5 MB RSS per node where an interpreter took 12 (issue 7's memory
    budget), and it does what the relay did: both directions independently (a blocked write one way
    never stops the other), and exit as soon as either side closes (ExaBGP then exits:
    ``exabgp.api.terminate``). Its parent is the ExaBGP child, which is what the speaker checks.
    """
    socat = shutil.which("socat")
    if socat is None:
        raise FileNotFoundError("socat: not found on PATH; ExaBGP's API relay needs it (Debian package socat)")
    if any(c in str(sock_path) for c in ",:!"):  # socat's address syntax would split the path there
        raise ValueError(f"run_dir: {sock_path.parent} has ',', ':' or '!', which socat cannot take")
    return (socat, "-b65536", "STDIO", f"UNIX-CONNECT:{sock_path}")


def exabgp_env(local_address: IPv4Address, port: int) -> dict[str, str]:
    """ExaBGP settings that cannot be put in its config file (see LIBRARY-NOTES)."""
    return {
        "exabgp.daemon.user": "root",
        "exabgp.daemon.drop": "false",
        "exabgp.daemon.daemonize": "false",
        "exabgp.api.cli": "false",
        "exabgp.api.ack": "true",
        "exabgp.api.compact": "true",  # an IPv4 NLRI as "P", not {"nlri": "P"}: shorter lines
        "exabgp.api.respawn": "false",
        "exabgp.api.terminate": "true",  # no relay, no agent: exit, and let the speaker restart us
        "exabgp.log.destination": "stdout",
        # Not one line per keepalive, counter change or API command (100k routes were 100k lines):
        # the log keeps sessions, reloads and errors; what the speaker does is in the agent's log.
        "exabgp.log.statistics": "false",
        "exabgp.log.processes": "false",
        "exabgp.tcp.bind": str(local_address),  # listen for passive peers on our address
        "exabgp.tcp.port": str(port),
    }


def rotate_log(path: Path, max_bytes: int) -> bool:
    """Before ExaBGP (re)starts: a log over ``max_bytes`` becomes ``<name>.1`` (replacing the last
    one), so a node keeps at most two, whatever the uptime and the number of restarts."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    os.replace(path, path.with_name(path.name + ".1"))
    return True


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` from /proc (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    return int(stat.rpartition(")")[2].split()[1])


async def exits_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), seconds)
    except TimeoutError:
        return False
    return True
