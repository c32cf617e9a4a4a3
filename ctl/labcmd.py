"""``pycalicoctl lab ...``: the multi-node lab (see lab/lab.py)."""
from __future__ import annotations

import sys

from ctl import node as node_cmds
from lab import lab


def run(args) -> int:
    try:
        if args.lab_cmd == "up":
            lab.up(args.name, args.nodes, args.pods_per_node, datastore=args.datastore,
                   encap=args.encap, route_reflectors=args.route_reflectors)
            return 0
        if args.lab_cmd == "set-encap":
            lab.set_encap(args.name, args.mode)
            return 0
        if args.lab_cmd == "add-host":
            ns, addr = lab.add_host(args.name, args.host)
            print(f"namespace {ns}\naddress {addr}")
            for key, value in lab.LabState.load(args.name).datastore_env().items():
                print(f"{key}={value}")
            return 0
        if args.lab_cmd == "apply":
            from ctl.resources import reexec_in_lab
            return reexec_in_lab(args.name, ["apply", "-f", args.filename])
        if args.lab_cmd == "kubeconfig":
            print(lab.kubeconfig(args.name), end="")
            return 0
        if args.lab_cmd == "ping":
            return 0 if lab.ping(args.name) else 1
        if args.lab_cmd == "restart":
            lab.restart(args.name, args.node, args.signal)
            return 0
        if args.lab_cmd == "down":
            lab.down(args.name)
            return 0
        if args.lab_cmd == "demo":
            return demo(args.name, args.datastore)
    except lab.LabError as exc:
        print(f"pycalicoctl lab: {exc}", file=sys.stderr)
        return 1
    return 2


def demo(name: str, datastore: str = "kubernetes") -> int:
    """up 3 nodes x 2 pods, ping every pair, show node1's BGP status and routes, down."""
    lab.down(name)  # a demo interrupted earlier must not block this one
    try:
        print(f"== lab up --name {name} --nodes 3 --pods-per-node 2 --datastore {datastore}")
        lab.up(name, 3, 2, datastore=datastore)
        print(f"\n== lab ping --name {name}")
        ok = lab.ping(name)
        print(f"\n== node status --node {name}-node1")
        node_cmds.status(f"{name}-node1")
        print(f"== node routes --node {name}-node1")
        node_cmds.routes(f"{name}-node1")
        return 0 if ok else 1
    finally:
        print(f"\n== lab down --name {name}")
        lab.down(name)
