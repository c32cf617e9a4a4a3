"""``pycalicoctl node status|routes``: read a node's live state from its agent's status socket."""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from ctl import output
from ctl.documents import UsageError
from felix.status import query, socket_path

_STATUS_TIMEOUT = 5.0
ESTABLISHED = "Established"  # a peer's ``state`` in the agent's status once its session is up


def _node_name(node: str | None) -> str:
    return node or socket.gethostname()


def _ask(node: str, topic: str):
    """The agent's answer, or None after one line on stderr saying why there is none."""
    try:
        path = socket_path(node)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        return query(node, topic, timeout=_STATUS_TIMEOUT, path=path)
    except (FileNotFoundError, ConnectionRefusedError):
        print("Calico process is not running.")
        problem = "no agent answers; is pycalico-node running on this host?"
    except PermissionError:
        problem = f"permission denied on {path} (the status socket is root-only; run as root)"
    except TimeoutError:
        problem = (f"the agent accepted on {path} but did not answer within {_STATUS_TIMEOUT:g}s "
                   "(stopped or hung?)")
    except (OSError, RuntimeError) as exc:
        problem = str(exc)
    print(f"pycalicoctl: node {node}: {problem}", file=sys.stderr)
    return None


def status(node: str | None, out: str = "ps") -> int:
    """calicoctl's ``node status`` (``out="json"``: the agent's status as it sends it); 0 when
    every IPv4 session is Established and the datastore connected."""
    name = _node_name(node)
    st = _ask(name, "status")
    if st is None:
        return 1
    peers = [p for p in st.get("peers", []) if ":" not in p["address"]]
    healthy = all(established(p) for p in peers) and datastore_connected(st)
    if out == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0 if healthy else 1
    print("Calico process is running.\n")
    print("IPv4 BGP status")
    if peers:
        rows = [[p["address"], p["peer_type"], "up" if established(p) else "start",
                 output.since(p["since"]), p["info"]]
                for p in sorted(peers, key=lambda p: tuple(int(x) for x in p["address"].split(".")))]
        print(output.boxed(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows))
    else:
        print("No IPv4 peers found.")
    print("\nIPv6 BGP status\nNo IPv6 peers found.\n")
    for line in health_lines(st):
        print(line)
    return 0 if healthy else 1


def established(peer: dict) -> bool:
    """The session is up: calicoctl's STATE column says ``up`` (BIRD's protocol state), else
    ``start``; the BGP state and the reason are in INFO (``Active Socket: ...``). An agent that
    sends ExaBGP's state names says ``up``."""
    return peer["state"] in (ESTABLISHED, "up")


def datastore_connected(st: dict) -> bool:
    """False only when the agent says so: agents older than the ``datastore`` field count as fine."""
    return (st.get("datastore") or {}).get("state", "connected") == "connected"


def health_lines(st: dict) -> list[str]:
    """The agent's health after the BGP tables, one short line each; fields an older agent does
    not send are left out. States that need attention are upper-case."""
    lines = []
    if not st.get("datastore_in_sync", True):
        lines.append("Warning: the agent is not yet in sync with the datastore.")
    for label, key, good in (("Datastore", "datastore", "connected"),
                             ("BGP speaker", "bgp_speaker", "running")):
        if st.get(key):
            lines.append(f"{label}: {_state_line(st[key], good)}")
    if st.get("reconcile_errors"):
        lines.append(_errors_line(st))
    counters = st.get("counters", {})
    rejected = {k: v for k, v in counters.items()
                if v and (k.startswith("rejected_") or k == "malformed")}
    if rejected:
        lines.append("Dropped BGP input: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))
    others = {k: v for k, v in counters.items() if v and k not in rejected and k != "received"}
    if counters.get("received") or others:
        lines.append(f"BGP prefixes received: {counters.get('received', 0)}"
                     + "".join(f", {k}={v}" for k, v in sorted(others.items())))
    return lines


def _state_line(part: dict, good: str) -> str:
    state = str(part.get("state", "unknown"))
    text = state if state == good else state.upper()
    if part.get("since"):
        text += f" since {output.since(part['since'])}"
    if part.get("reason"):
        text += f" ({_one_line(part['reason'])})"
    return text


def _errors_line(st: dict) -> str:
    text = f"Reconcile errors: {st['reconcile_errors']}"
    if st.get("reconciles") is not None:
        text += f" of {st['reconciles']} reconciles"
    last = st.get("last_error") or {}
    if last.get("message"):
        when = f" at {output.since(last['since'])}" if last.get("since") else ""
        text += f" (last{when}: {_one_line(last['message'])})"
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def routes(node: str | None) -> int:
    name = _node_name(node)
    rows_in = _ask(name, "routes")
    if rows_in is None:
        return 1
    rows = []
    for r in rows_in:
        rows.append([r["dst"], r["type"], route_target(r), r["reason"], route_state(r)])
    print(f"Routes owned by the agent on {name}:")
    print(output.columns(["DESTINATION", "TYPE", "TARGET", "REASON", "KERNEL"], rows))
    out_of_sync = sum(1 for r in rows_in if route_state(r) != "ok")
    print(f"\n{len(rows_in)} routes, {out_of_sync} not matching the kernel")
    st = _ask(name, "status")
    st = st if isinstance(st, dict) else {}
    waiting = st.get("unroutable") or {}
    if waiting:  # e.g. a remote node without a VTEP yet: no route rather than a broken one
        print("\nNot routed yet:")
        print(output.columns(["DESTINATION", "WHY"], sorted([d, w] for d, w in waiting.items())))
    for why in sorted((st.get("encap_problems") or {}).values()):
        print(f"Encapsulation: {_one_line(why)}")
    return 0 if out_of_sync == 0 and not waiting else 1


def route_target(r: dict) -> str:
    """``via <gw>``, ``dev <dev>``, or ``via <gw> dev <tunnel>`` for IPIP / VXLAN routes."""
    parts = []
    if r.get("gateway"):
        parts.append(f"via {r['gateway']}")
    if r.get("dev"):
        parts.append(f"dev {r['dev']}")
    return " ".join(parts)


def route_state(r: dict) -> str:
    """The agent's own word (ok | missing | differs | not-desired); an agent too old to send one
    only says whether the route is in sync, and no guess is made from the reason text."""
    return r.get("state") or ("ok" if r["in_sync"] else "out-of-sync")


def diags(node: str | None, out_dir: str) -> int:
    """Write the node's diagnostics tarball and print its path (what cannot be collected is
    listed inside it, in errors.txt)."""
    from ctl import diags as diags_mod

    name = _node_name(node)
    directory = Path(out_dir)
    if not directory.is_dir():
        raise UsageError(f"--dir: {out_dir} is not a directory")
    try:
        path, missing = diags_mod.collect(name, directory)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print(f"pycalicoctl: node {name}: cannot write the diagnostics: {exc}", file=sys.stderr)
        return 1
    print(f"Diagnostics for node {name} written to {path}")
    if missing:
        print(f"pycalicoctl: node {name}: {len(missing)} part(s) could not be collected "
              f"({'; '.join(missing)}); see errors.txt in the tarball", file=sys.stderr)
    return 0
