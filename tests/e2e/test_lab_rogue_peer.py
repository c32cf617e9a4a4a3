"""The rogue mesh peer of issue 9 against real agents: a BIRD on a lab host, registered as a Node
(so every node's full mesh peers with it), announces node2's pod as a /32, a /16 and a /17
aggregate and 20,000 /32s. No node programs any of it, each counts it by reason in
``pycalicoctl node status``, and the pods keep talking to each other."""
from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from bgp.rib import ORIGIN_HOLD
from felix.status import query
from tests import helpers
from tests.helpers import ctl, wait_for

LAB = f"r{secrets.token_hex(2)}"
FLOOD = 20_000
ROGUE_CONF = """\
router id {me};
protocol device {{}}
protocol static originated {{
    ipv4;
{routes}
}}
{sessions}
"""
SESSION = """\
protocol bgp mesh_{i} {{
    local {me} as 64512;
    neighbor {node} as 64512;
    direct;
    hold time 9;
    ipv4 {{ import none; export where source = RTS_STATIC; next hop self; }};
}}
"""


def _dropped(counters: dict) -> int:
    return sum(v for k, v in counters.items()
               if k.startswith("rejected_origin_") or k == "rejected_own_block")


def kernel_routes(ns: str) -> list[str]:
    return subprocess.run(["ip", "-n", ns, "route", "show", "proto", "80"], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def pings(src: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", src, "ping", "-c1", "-W2", ip],
                          capture_output=True).returncode == 0


def test_a_rogue_mesh_peer_is_counted_and_never_programmed(tmp_path):
    bird = None
    try:
        ctl("lab", "up", "--name", LAB, "--nodes", "2", "--pods-per-node", "1",
            "--datastore", "etcdv3")
        state = helpers.lab_state(LAB)
        node1, node2 = sorted(state["nodes"])
        [pod1] = [p for p in state["pods"] if p["node"] == node1]
        [pod2] = [p for p in state["pods"] if p["node"] == node2]
        out = ctl("lab", "add-host", "--name", LAB, "rog").stdout
        me = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)["address"]
        me_ip = me.split("/")[0]
        flood = [f"10.244.{128 + i // 256}.{i % 256}/32" for i in range(FLOOD)]
        announced = [f"{pod2['ip']}/32", "10.244.0.0/16", "10.244.0.0/17", *flood]
        conf = tmp_path / "bird.conf"
        conf.write_text(ROGUE_CONF.format(
            me=me_ip, routes="\n".join(f"    route {p} blackhole;" for p in announced),
            sessions="".join(SESSION.format(i=i, me=me_ip, node=addr.split("/")[0])
                             for i, addr in enumerate(sorted(state["nodes"].values())))))
        subprocess.run(["bird", "-p", "-c", str(conf)], check=True)
        bird = subprocess.Popen(["ip", "netns", "exec", f"{LAB}-h-rog", "bird", "-f", "-c", str(conf),
                                 "-s", str(tmp_path / "bird.ctl")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = tmp_path / "rogue.json"  # a Node: every agent's mesh now includes the rogue host
        node.write_text(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                                    "metadata": {"name": "rogue"},
                                    "spec": {"bgp": {"ipv4Address": me}}}))
        ctl("lab", "apply", "--name", LAB, "-f", str(node))

        for name in (node1, node2):
            wait_for(lambda: query(name, "status")["counters"].get("received", 0) >= len(announced),
                     timeout=90, what=f"{name} receiving every rogue announcement")
            # the stolen /32: a mismatch at node1, inside its own block at node2 (the pod's owner)
            stolen = "rejected_origin_mismatch" if name == node1 else "rejected_own_block"
            # origin rejections are counted once their hold is over (bgp.rib ORIGIN_HOLD)
            counters = wait_for(lambda: (c := query(name, "status")["counters"]) and _dropped(c)
                                >= len(announced) and c, timeout=ORIGIN_HOLD + 30,
                                what=f"{name} counting every rogue announcement")
            assert counters.get(stolen, 0) >= 1, counters
            assert not [r for r in kernel_routes(name) if f"via {me_ip}" in r], kernel_routes(name)
            status = ctl("node", "status", "--node", name, check=False).stdout
            assert "Dropped BGP input: " in status and "rejected_origin_unknown=" in status, status
        # node1 still sends node2's pod to node2, not to the rogue
        got = subprocess.run(["ip", "-n", node1, "route", "get", pod2["ip"]], capture_output=True,
                             text=True, check=True).stdout
        assert me_ip not in got, got
        wait_for(lambda: pings(pod1["netns"], pod2["ip"]), timeout=30, what="pod1 reaching pod2")
    finally:
        if bird is not None:
            bird.terminate()
            bird.wait(timeout=10)
        subprocess.run([helpers.CTL, "lab", "down", "--name", LAB], capture_output=True, timeout=120)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-v"]))
