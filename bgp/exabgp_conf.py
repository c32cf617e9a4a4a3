"""Render the ExaBGP 5 configuration from a frozen value.

Purely computational; no I/O. The same input always renders the same text (peers sorted by
address), so the speaker can compare texts and skip reloads that would change nothing.

Listening is not in this file: ExaBGP 5.0.15 binds the addresses in the environment variable
``exabgp.tcp.bind`` on ``exabgp.tcp.port`` (see ``speaker.exabgp_env``). Outgoing connections use
``connect <port>`` with each peer's own port: our nodes' ``listenPort`` for sessions between them
(both sides agree on one port, as Calico's ``listenPort`` does), the port in a BGPPeer's
``peerIP`` (179 without one) for a router outside the cluster.

A peer's TCP MD5 password is written base64-encoded with ``md5-base64 true``: ExaBGP's tokeniser
then never sees quotes, ``;`` or spaces from a Secret, and the key bytes are exactly the password's.
The file holding it is written 0600 by the speaker (``hostio.write_private``).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from ipaddress import IPv4Address

from bgp.peers import PeerSpec, password_problem

PROCESS_NAME = "pycalico"
# ExaBGP splits `run` on whitespace and ends statements at ';' - such paths cannot be expressed.
_FORBIDDEN_IN_RUN = set(" \t\n;{}\"'")


@dataclass(frozen=True)
class ExaBGPConfig:
    router_id: IPv4Address
    local_address: IPv4Address
    relay_command: tuple[str, ...]  # argv of the API process (the relay)
    peers: frozenset[PeerSpec] = frozenset()
    hold_time: int = 9
    gr_restart_time: int = 120
    port: int = 179

    def __post_init__(self) -> None:
        if not 3 <= self.hold_time <= 65535:
            raise ValueError(f"hold_time: {self.hold_time} must be 3..65535 (RFC 4271 4.2)")
        if not 0 <= self.gr_restart_time <= 4095:
            raise ValueError(f"gr_restart_time: {self.gr_restart_time} must be 0..4095 (RFC 4724 3)")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} must be 1..65535")
        for arg in self.relay_command:
            if not arg or _FORBIDDEN_IN_RUN & set(arg):
                raise ValueError(f"relay_command: argument {arg!r} is empty or has whitespace/quotes/';'")
        for peer in self.peers:
            problem = None if peer.password is None else password_problem(peer.password)
            if problem is not None:
                raise ValueError(f"peers: the password of {peer.address} ({peer.name}) {problem}")
        addresses = [p.address for p in self.peers]
        if len(addresses) != len(set(addresses)):
            raise ValueError("peers: two sessions to the same address")


def render(cfg: ExaBGPConfig) -> str:
    parts = [_process(cfg)]
    parts += [_neighbor(cfg, peer) for peer in sorted(cfg.peers, key=lambda p: p.address)]
    return "\n".join(parts)


def _process(cfg: ExaBGPConfig) -> str:
    return (
        f"process {PROCESS_NAME} {{\n"
        f"    run {' '.join(cfg.relay_command)};\n"
        f"    encoder json;\n"
        f"}}\n"
    )


def _neighbor(cfg: ExaBGPConfig, peer: PeerSpec) -> str:
    # Bare boolean keywords can mean false in ExaBGP: every boolean is written with its value.
    # manual-eor: we send End-of-RIB ourselves once we re-announced everything after a session
    # comes up; an early automatic EoR makes a graceful-restart helper flush our routes.
    # adj-rib-in false: bgp/rib keeps what peers sent; ExaBGP's copy (an object and an index string
    # per received route) was only memory and CPU we never read.
    return (
        f"neighbor {peer.address} {{\n"
        f"    # {_comment(peer.name)} ({_comment(peer.peer_type)})\n"
        f"    router-id {cfg.router_id};\n"
        f"    local-address {cfg.local_address};\n"
        f"    local-as {peer.local_asn};\n"
        f"    peer-as {peer.asn};\n"
        f"    hold-time {cfg.hold_time};\n"
        f"    passive {'true' if peer.passive else 'false'};\n"
        f"    connect {peer.port};\n"
        f"{_md5(peer.password)}"
        f"    manual-eor true;\n"
        f"    adj-rib-in false;\n"
        f"    adj-rib-out true;\n"
        f"    family {{\n"
        f"        ipv4 unicast;\n"
        f"    }}\n"
        f"    capability {{\n"
        f"        graceful-restart {cfg.gr_restart_time};\n"
        f"        route-refresh enable;\n"
        f"    }}\n"
        f"    api {{\n"
        f"        processes [ {PROCESS_NAME} ];\n"
        f"        neighbor-changes true;\n"
        f"        fsm true;\n"
        f"        receive {{\n"
        f"            parsed true;\n"
        f"            update true;\n"
        f"            open true;\n"
        f"            notification true;\n"
        f"        }}\n"
        f"    }}\n"
        f"}}\n"
    )


def _md5(password: str | None) -> str:
    if password is None:
        return ""
    encoded = base64.b64encode(password.encode()).decode()
    return f"    md5-password {encoded};\n    md5-base64 true;\n"


def _comment(text: str) -> str:
    """Keep a name from ending the comment line early."""
    return "".join(c if c.isprintable() else "?" for c in text)
