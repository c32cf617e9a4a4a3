"""``pycalicoctl node status|routes``: read a node's live state from its agent's status socket."""
from __future__ import annotations

import socket
import sys

from ctl import output
from felix.status import query


def _node_name(node: str | None) -> str:
    return node or socket.gethostname()


def _ask(node: str, topic: str):
    try:
        return query(node, topic)
    except (FileNotFoundError, ConnectionRefusedError):
        print("Calico process is not running.")
        print(f"(no agent answers for node {node!r}; is pycalico-node running on this host?)",
              file=sys.stderr)
        return None


def status(node: str | None) -> int:
    name = _node_name(node)
    st = _ask(name, "status")
    if st is None:
        return 1
    print("Calico process is running.\n")
    peers = [p for p in st["peers"] if ":" not in p["address"]]
    print("IPv4 BGP status")
    if peers:
        rows = [[p["address"], p["peer_type"], p["state"], output.since(p["since"]), p["info"]]
                for p in sorted(peers, key=lambda p: tuple(int(x) for x in p["address"].split(".")))]
        print(output.boxed(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows))
    else:
        print("No IPv4 peers found.")
    print("\nIPv6 BGP status\nNo IPv6 peers found.\n")
    if not st["datastore_in_sync"]:
        print("Warning: the agent is not yet in sync with the datastore.")
    rejected = {k: v for k, v in st.get("counters", {}).items() if v}
    if rejected:
        print("Dropped BGP input: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))
    return 0 if all(p["state"] == "up" for p in peers) else 1


def routes(node: str | None) -> int:
    name = _node_name(node)
    rows_in = _ask(name, "routes")
    if rows_in is None:
        return 1
    rows = []
    for r in rows_in:
        target = f"via {r['gateway']}" if r["gateway"] else (f"dev {r['dev']}" if r["dev"] else "")
        rows.append([r["dst"], r["type"], target, r["reason"], _kernel_state(r)])
    print(f"Routes owned by the agent on {name}:")
    print(output.columns(["DESTINATION", "TYPE", "TARGET", "REASON", "KERNEL"], rows))
    out_of_sync = sum(1 for r in rows_in if not r["in_sync"])
    print(f"\n{len(rows_in)} routes, {out_of_sync} not matching the kernel")
    return 0 if out_of_sync == 0 else 1


def _kernel_state(r: dict) -> str:
    if r["in_sync"]:
        return "ok"
    if r["kernel"] is None:
        return "missing"
    if r["reason"].startswith("stale") or r["reason"] == "":
        return "not desired"
    return "differs"
