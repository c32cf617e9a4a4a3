"""``pycalicoctl``: calicoctl's resource verbs, per-node inspection, and the lab.

Exit codes: 0 success, 1 the operation failed (e.g. an unreachable peer, a failed ping), 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ctl import node as node_cmds
from ctl import resources as res_cmds

# lab.lab.ENCAPS's keys (a unit test keeps them equal): importing lab.lab here would load the lab's
# dependencies for every pycalicoctl command.
LAB_ENCAPS = ("none", "vxlan", "vxlan-crosssubnet", "ipip", "ipip-crosssubnet")
RR_CLUSTER_ID = "244.0.0.1"  # lab.topology.RR_CLUSTER_ID (the parser does not import the lab; a unit test ties them)


def _datastore_args(p: argparse.ArgumentParser) -> None:
    # Defaults come from ctl.config (flags, --config file, environment, calicoctl.cfg), not here.
    p.add_argument("--datastore-type", help="etcdv3 | kubernetes (env DATASTORE_TYPE; default: "
                   "etcdv3 if etcd endpoints are set, else kubernetes)")
    p.add_argument("--etcd-endpoints", help="env ETCD_ENDPOINTS")
    p.add_argument("--kubeconfig", help="for the kubernetes datastore (env KUBECONFIG)")
    p.add_argument("--config", help="a CalicoAPIConfig file (default: /etc/calico/calicoctl.cfg)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycalicoctl")
    p.add_argument("--lab", metavar="NAME",
                   help="talk to the datastore of lab NAME (the command runs inside its fabric "
                        "namespace, where the lab's etcd listens)")
    sub = p.add_subparsers(dest="cmd", required=True)

    for verb in ("apply", "create", "replace"):
        v = sub.add_parser(verb, help=f"{verb} resources from YAML/JSON (calicoctl syntax)")
        v.add_argument("-f", "--filename", required=True, help="file, or - for stdin")
        _datastore_args(v)
    d = sub.add_parser("delete", help="delete resources by file or by kind and name")
    d.add_argument("kind", nargs="?")
    d.add_argument("name", nargs="?")
    d.add_argument("-f", "--filename")
    d.add_argument("-n", "--namespace")
    d.add_argument("--force", action="store_true",
                   help="delete an IPPool even though addresses are still allocated from it")
    _datastore_args(d)
    g = sub.add_parser("get", help="list resources")
    g.add_argument("kind")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", default="ps", choices=["ps", "wide", "yaml", "json"])
    g.add_argument("-n", "--namespace")
    _datastore_args(g)

    n = sub.add_parser("node", help="inspect a node's agent").add_subparsers(dest="node_cmd",
                                                                               required=True)
    for name, helptext in (("status", "BGP sessions, as calicoctl node status"),
                           ("routes", "every kernel route the agent owns, its reason and state"),
                           ("diags", "a tarball of the node's state, config, logs and ip output")):
        c = n.add_parser(name, help=helptext)
        c.add_argument("--node", help="node name (default: this host's)")
    n.choices["diags"].add_argument("--dir", default="/tmp", help="where to write the tarball")
    n.choices["status"].add_argument("-o", "--output", default="ps", choices=["ps", "json"],
                                     help="json: the agent's status as it sends it")

    i = sub.add_parser("ipam", help="IP address management").add_subparsers(dest="ipam_cmd",
                                                                           required=True)
    show = i.add_parser("show", help="addresses in use per pool (and per block)")
    show.add_argument("--show-blocks", action="store_true")
    _datastore_args(show)

    lab = sub.add_parser("lab", help="the multi-node lab in network namespaces")
    ls = lab.add_subparsers(dest="lab_cmd", required=True)
    u = ls.add_parser("up")
    u.add_argument("--name", required=True)
    u.add_argument("--nodes", type=int, default=3)
    u.add_argument("--pods-per-node", type=int, default=2)
    u.add_argument("--datastore", choices=["kubernetes", "etcdv3"], default="kubernetes",
                   help="kubernetes: the API server stand-in over the lab's etcd (default)")
    u.add_argument("--encap", choices=LAB_ENCAPS, default="none",
                   help="the pool's encapsulation (default none); *-crosssubnet puts the nodes on "
                        "two subnets behind a router")
    u.add_argument("--route-reflectors", type=int, default=0, metavar="K",
                   help=f"K extra nodes as route reflectors (cluster ID {RR_CLUSTER_ID}, label "
                        "route-reflector=true), the mesh off, and one BGPPeer from every node to them")
    se = ls.add_parser("set-encap", help="change the lab's pools to another encapsulation in place "
                                         "(on the same topology)")
    se.add_argument("--name", required=True)
    se.add_argument("mode", metavar="MODE", choices=LAB_ENCAPS, help=", ".join(LAB_ENCAPS))
    ah = ls.add_parser("add-host", help="an extra namespace on the lab's L2 segment (an external "
                                        "router, a client); prints its address and the datastore")
    ah.add_argument("--name", required=True)
    ah.add_argument("host", metavar="HOST", help="1-6 lowercase letters/digits")
    la = ls.add_parser("apply", help="apply resources to the lab's datastore (as --lab L apply)")
    la.add_argument("--name", required=True)
    la.add_argument("-f", "--filename", required=True)
    for name in ("ping", "down", "kubeconfig"):
        ls.add_parser(name).add_argument("--name", required=True)
    r = ls.add_parser("restart")
    r.add_argument("--name", required=True)
    r.add_argument("--node", required=True)
    r.add_argument("--signal", choices=["KILL", "TERM"], default="KILL",
                   help="KILL: a crash (default); TERM: a rolling update")
    demo = ls.add_parser("demo")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--datastore", choices=["kubernetes", "etcdv3"], default="kubernetes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.lab:
            return res_cmds.reexec_in_lab(args.lab, list(argv if argv is not None else sys.argv[1:]))
        if args.cmd == "node":
            if args.node_cmd == "diags":
                return node_cmds.diags(args.node, args.dir)
            return node_cmds.status(args.node, args.output) if args.node_cmd == "status" \
                else node_cmds.routes(args.node)
        if args.cmd == "lab":
            from ctl import labcmd

            return labcmd.run(args)
        return res_cmds.run(args)
    except res_cmds.UsageError as exc:
        print(f"pycalicoctl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
