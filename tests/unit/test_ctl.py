"""pycalicoctl: calicoctl's output shapes, and validation before anything is stored."""
import argparse
import io
import ipaddress
import json
import sys
from datetime import datetime
from ipaddress import IPv4Address

import pytest
import yaml

from bgp.core import PeerSession
from bgp.peers import PeerSpec
from crds import load
from ctl import documents, output, resources
from ctl import node as node_cmds
from felix.agent import _peer_dict
from felix.status import socket_path
from datastore.memory import MemoryDatastore


def pool(name, cidr, **spec):
    return load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
                 "spec": {"cidr": cidr, **spec}})


def stdin(text: str) -> io.TextIOWrapper:
    """A stand-in for sys.stdin with the byte buffer underneath, as the real one has."""
    return io.TextIOWrapper(io.BytesIO(text.encode()))


def test_get_ippool_wide_matches_calicoctl_columns():
    headers, rows = output.resource_rows(
        "IPPool", [pool("default-ipv4-ippool", "10.244.0.0/16", natOutgoing=True)], wide=True)
    text = output.columns(headers, rows).splitlines()
    assert text[0].split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "SELECTOR"]
    assert text[1].split() == ["default-ipv4-ippool", "10.244.0.0/16", "true", "Never", "Never",
                               "false", "all()"]


def test_get_nodes_wide_shows_inherited_asn_in_parentheses():
    n1 = load({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n1"},
               "spec": {"bgp": {"ipv4Address": "192.168.40.180/24"}}})
    n2 = load({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n2"},
               "spec": {"bgp": {"ipv4Address": "192.168.40.181/24", "asNumber": 64513}}})
    headers, rows = output.resource_rows("Node", [n1, n2], wide=True)
    assert headers == ["NAME", "ASN", "IPV4", "IPV6"]
    assert rows == [["n1", "(64512)", "192.168.40.180/24", ""], ["n2", "64513", "192.168.40.181/24", ""]]


def test_boxed_table_like_node_status():
    text = output.boxed(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
                        [["192.168.40.181", "node-to-node mesh", "up", "07:41:45", "Established"]])
    lines = text.splitlines()
    assert lines[0] == lines[2] == lines[4] and lines[0].startswith("+--")
    assert lines[3] == "| 192.168.40.181 | node-to-node mesh | up    | 07:41:45 | Established |"


def test_overlapping_pool_rejected_before_anything_is_stored():
    ds = MemoryDatastore()
    ds.create(pool("a", "10.244.0.0/16"))
    with pytest.raises(resources.UsageError, match=r"IPPool b: spec.cidr: .* overlaps IPPool a"):
        resources.write(ds, "apply", [pool("c", "10.250.0.0/16"), pool("b", "10.244.128.0/17")])
    assert [p.name for p in ds.list("IPPool").items] == ["a"]  # c was not written either


def test_pool_cidr_and_blocksize_are_immutable():
    ds = MemoryDatastore()
    ds.create(pool("a", "10.244.0.0/16"))
    with pytest.raises(resources.UsageError, match="spec.blockSize: cannot be changed"):
        resources.write(ds, "apply", [pool("a", "10.244.0.0/16", blockSize=24)])
    assert resources.write(ds, "apply", [pool("a", "10.244.0.0/16", natOutgoing=True)]) == 0
    assert ds.get("IPPool", "a").spec.nat_outgoing


def test_bad_yaml_document_names_field(monkeypatch):
    doc = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, blockSize: 40}
"""
    monkeypatch.setattr(sys, "stdin", stdin(doc))
    with pytest.raises(resources.UsageError, match="spec.blockSize: must be between 20 and 32"):
        resources.read_documents("-")


def test_list_documents_are_expanded(monkeypatch):
    doc = """
apiVersion: projectcalico.org/v3
kind: IPPoolList
items:
- {apiVersion: projectcalico.org/v3, kind: IPPool, metadata: {name: a}, spec: {cidr: 10.1.0.0/16}}
- {apiVersion: projectcalico.org/v3, kind: IPPool, metadata: {name: b}, spec: {cidr: 10.2.0.0/16}}
"""
    monkeypatch.setattr(sys, "stdin", stdin(doc))
    assert [r.name for r in resources.read_documents("-")] == ["a", "b"]


def block(cidr, used, node="n1"):
    size = ipaddress.ip_network(cidr).num_addresses
    return load({"apiVersion": "projectcalico.org/v3", "kind": "IPAMBlock",
                 "metadata": {"name": cidr.replace(".", "-").replace(":", "-").replace("/", "-")},
                 "spec": {"cidr": cidr, "affinity": f"host:{node}",
                          "allocations": list(range(used)) + [None] * (size - used)}})


def test_ipam_show_counts_per_pool_and_block():
    blocks = [block("10.244.0.0/26", 2), block("10.9.0.0/26", 2)]
    headers, rows = output.ipam_rows([pool("default", "10.244.0.0/16")], blocks, show_blocks=True)
    assert headers == ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    assert rows == [["IP Pool", "10.244.0.0/16", "65536", "2 (0%)", "65534 (100%)"],
                    ["Block", "10.244.0.0/26", "64", "2 (3%)", "62 (97%)"],
                    ["Block (no pool)", "10.9.0.0/26", "64", "2 (3%)", "62 (97%)"]]


def test_ipam_show_never_hides_blocks_of_a_deleted_pool():
    """Issue 5, 3c: addresses still held by pods after their pool was deleted stay visible."""
    blocks = [block("10.244.0.0/26", 1), block("10.80.0.0/26", 3), block("fd00::/122", 1)]
    pools = [pool("default", "10.244.0.0/16"), pool("v6", "fd00::/64")]
    _, rows = output.ipam_rows(pools, blocks, show_blocks=False)
    assert [r[:2] for r in rows] == [["IP Pool", "10.244.0.0/16"], ["IP Pool", "fd00::/64"],
                                     ["Block (no pool)", "10.80.0.0/26"]]
    assert rows[-1][3] == "3 (5%)"
    assert [b.spec.cidr for b in output.blocks_in_no_pool(pools, blocks)] == ["10.80.0.0/26"]


def test_ipam_show_warns_on_stderr_about_blocks_in_no_pool(capsys):
    ds = MemoryDatastore()
    ds.create(pool("default", "10.244.0.0/16"))
    for b in (block("10.244.0.0/26", 1), block("10.80.0.0/26", 3)):
        ds.create(b)
    assert resources.ipam_show(ds, show_blocks=False) == 0
    out, err = capsys.readouterr()
    assert "Block (no pool) | 10.80.0.0/26" in out
    assert err.strip().splitlines() == [
        "Warning: 3 address(es) allocated in 1 IPAM block(s) inside no IP pool (10.80.0.0/26); "
        "was their pool deleted?"]


# --- issue 5, 4a: the documents of one file are checked against each other -----------------------

def test_overlapping_pools_in_one_file_are_rejected_and_nothing_is_stored():
    ds = MemoryDatastore()
    outer = pool("outer", "10.80.0.0/16", blockSize=24)
    inner = pool("inner", "10.80.0.0/24", blockSize=26)
    with pytest.raises(resources.UsageError) as exc:
        resources.write(ds, "apply", [pool("fine", "10.90.0.0/16"), outer, inner])
    assert str(exc.value) == ("IPPool inner: spec.cidr: 10.80.0.0/24 overlaps IPPool outer "
                              "(10.80.0.0/16) in the same file")
    assert ds.list("IPPool").items == []


def test_same_resource_twice_in_one_file_is_rejected():
    ds = MemoryDatastore()
    with pytest.raises(resources.UsageError, match=r"IPPool a: metadata.name: .* twice in the same file"):
        resources.write(ds, "apply", [pool("a", "10.1.0.0/16"), pool("a", "10.2.0.0/16")])
    assert ds.list("IPPool").items == []


# --- issue 5, 3b: a pool with allocations is not deleted without --force ---------------------------

def delete_args(**kw):
    return argparse.Namespace(**{"kind": "ippool", "name": None, "filename": None, "namespace": None,
                                 "force": False, **kw})


def test_deleting_a_pool_with_allocations_is_refused(capsys):
    ds = MemoryDatastore()
    ds.create(pool("busy", "10.80.0.0/16"))
    ds.create(pool("idle", "10.81.0.0/16"))
    ds.create(block("10.80.1.0/26", 3))
    ds.create(block("10.81.0.0/26", 0))  # a block with nothing allocated does not count
    assert resources.delete(ds, delete_args(name="busy")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pycalicoctl: IPPool busy: 3 address(es) still allocated from 10.80.0.0/16; "
                   "nothing deleted (release them first, or delete with --force)"]
    assert {p.name for p in ds.list("IPPool").items} == {"busy", "idle"}
    # a file naming both: nothing at all is deleted
    items = [pool("idle", "10.81.0.0/16"), pool("busy", "10.80.0.0/16")]
    assert resources.delete(ds, delete_args(kind=None), items) == 1
    assert {p.name for p in ds.list("IPPool").items} == {"busy", "idle"}
    assert resources.delete(ds, delete_args(name="idle")) == 0
    assert resources.delete(ds, delete_args(name="busy", force=True)) == 0
    assert ds.list("IPPool").items == []


def test_get_namespaced_kind_by_name_needs_a_namespace():
    args = argparse.Namespace(kind="workloadendpoint", name="x", namespace=None, output="ps")
    with pytest.raises(resources.UsageError, match=r"-n/--namespace: WorkloadEndpoint is namespaced"):
        resources.get(MemoryDatastore(), args)


# --- issue 5, 9: YAML alias bombs are refused before they are expanded ------------------------------

def alias_bomb(levels: int = 9) -> str:
    """Billion laughs under ``metadata``, where extra fields used to be kept (and serialised)."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: bomb\n"
            + "\n".join(lines) + "\nspec: {cidr: 10.1.0.0/16}\n")


def test_alias_bomb_is_refused_without_expanding_it():
    with pytest.raises(resources.UsageError) as exc:
        documents.parse("---\n" + alias_bomb(), "bomb.yaml")  # 9**9 nodes if expanded
    assert str(exc.value) == ("bomb.yaml: document 1: YAML aliases expand it by more than 10000 "
                              "nodes; refusing to load it")


def test_recursive_alias_is_refused():
    with pytest.raises(resources.UsageError, match=r"f.yaml: document 2: a YAML alias refers to a "
                                                   r"node that contains it"):
        documents.parse("a: 1\n---\nx: &x [*x]\n", "f.yaml")


def test_a_few_aliases_are_still_fine():
    text = "a: &l {app: web}\nb: *l\nc: [*l, *l]\n"
    assert documents.parse(text, "f.yaml") == [{"a": {"app": "web"}, "b": {"app": "web"},
                                                "c": [{"app": "web"}, {"app": "web"}]}]
    assert documents.expanded_size(next(iter(yaml.compose_all(text))), "f") == (17, 8)


@pytest.mark.parametrize("text, message", [
    ("a: [1\n", "f.yaml: YAML error at line 2, column 1: while parsing a flow sequence: expected "
                "',' or ']', but got '<stream end>'"),
    ("[" * 5000 + "]" * 5000, "f.yaml: YAML nested too deeply"),
    ("3\n", "f.yaml: resource 1: a resource must be a mapping, not int"),
    ("kind: IPPoolList\nitems: 3\n", "f.yaml: document 1: items: must be a list"),
])
def test_unusable_yaml_is_one_line_naming_the_file(text, message):
    with pytest.raises(resources.UsageError) as exc:
        documents.parse(text, "f.yaml")
    assert str(exc.value) == message


@pytest.mark.parametrize("text", ["", "---\n", "---\n---\n# nothing\n"])
def test_empty_input_has_no_documents(text):
    assert documents.parse(text, "f.yaml") == []


# --- node status / routes: what the agent sends, rendered --------------------------------------------

TODAY = datetime.now().astimezone().replace(hour=10, minute=1, second=2, microsecond=0)


def status_reply(**extra):
    return {"node": "n1", "ipv4": "10.99.0.1/24", "pid": 1, "datastore_in_sync": True,
            "bgp_routes_in_sync": True, "counters": {},
            "peers": [{"address": "10.99.0.2", "name": "n2", "peer_type": "node-to-node mesh",
                       "state": "Established", "exabgp_state": "up", "since": TODAY.isoformat(),
                       "info": "Established"}], **extra}


def run_status(monkeypatch, capsys, reply, out="ps"):
    monkeypatch.setattr(node_cmds, "query", lambda node, topic, **kw: reply)
    rc = node_cmds.status("n1", out)
    return rc, capsys.readouterr().out


def test_node_status_renders_datastore_speaker_and_errors(monkeypatch, capsys):
    reply = status_reply(
        datastore={"state": "connected", "since": TODAY.isoformat(), "reason": ""},
        bgp_speaker={"state": "restarting", "since": TODAY.replace(minute=2).isoformat(),
                     "reason": "relay connection lost"},
        reconciles=120, reconcile_errors=3,
        last_error={"message": "RTM_NEWROUTE 10.244.1.0/26:\n  EEXIST",
                    "since": TODAY.replace(minute=3).isoformat()})
    rc, out = run_status(monkeypatch, capsys, reply)
    tail = out.split("No IPv6 peers found.")[1].strip().splitlines()
    assert tail == ["Datastore: connected since 10:01:02",
                    "BGP speaker: RESTARTING since 10:02:02 (relay connection lost)",
                    "Reconcile errors: 3 of 120 reconciles (last at 10:03:02: RTM_NEWROUTE "
                    "10.244.1.0/26: EEXIST)"]
    assert rc == 0  # a restarting speaker with Established peers is reported, not a failure


def test_node_status_fails_when_the_datastore_is_not_connected(monkeypatch, capsys):
    reply = status_reply(datastore={"state": "unreachable", "since": TODAY.isoformat(),
                                    "reason": "etcd http://10.99.0.254:2379: connection refused"},
                         reconciles=5, reconcile_errors=0, last_error=None)
    rc, out = run_status(monkeypatch, capsys, reply)
    assert "Datastore: UNREACHABLE since 10:01:02 (etcd http://10.99.0.254:2379: connection refused)" \
        in out.splitlines()
    assert "Reconcile errors" not in out
    assert rc == 1


def test_node_status_of_an_older_agent_still_renders(monkeypatch, capsys):
    rc, out = run_status(monkeypatch, capsys, status_reply())
    assert rc == 0 and "Datastore:" not in out and "BGP speaker:" not in out
    assert "| 10.99.0.2    | node-to-node mesh | up    | 10:01:02 | Established |" in out


def test_node_status_shows_why_a_session_is_not_up_as_calicoctl_does(monkeypatch, capsys):
    peers = [{"address": "10.99.0.3", "name": "n3", "peer_type": "node specific", "state": "Active",
              "since": TODAY.isoformat(), "info": "Active Socket: Connection refused",
              "reason": "Socket: Connection refused"},
             {"address": "192.0.2.1", "name": "tor", "peer_type": "global", "state": "OpenSent",
              "since": TODAY.isoformat(), "info": "OpenSent Received: Bad peer AS (2/2)",
              "reason": "Received: Bad peer AS (2/2)"}]
    reply = status_reply()
    rc, out = run_status(monkeypatch, capsys, {**reply, "peers": reply["peers"] + peers})
    assert "| 10.99.0.3    | node specific     | start | 10:01:02 | Active Socket: Connection refused    |" \
        in out.splitlines(), out
    assert "| 192.0.2.1    | global            | start | 10:01:02 | OpenSent Received: Bad peer AS (2/2) |" \
        in out.splitlines(), out
    assert rc == 1  # any session not up makes the exit status 1


def test_status_json_names_states_as_the_table_does(monkeypatch, capsys):
    """The agent's status JSON says Established / Active / Idle / OpenSent as the table's INFO
    does, with ExaBGP's own word beside it; ``node status -o json`` prints it as sent."""
    def spec(n):
        return PeerSpec(IPv4Address(f"10.99.0.{n}"), 64512, 64512, False, "node-to-node mesh", f"n{n}")
    sessions = [PeerSession(spec(2), state="up"),
                PeerSession(spec(3), state="idle", reason="Socket: Connection refused"),
                PeerSession(spec(4), state="start"), PeerSession(spec(5), state="opensent")]
    peers = [_peer_dict(s.status()) for s in sessions]
    assert [(p["state"], p["exabgp_state"]) for p in peers] == [
        ("Established", "up"), ("Active", "idle"), ("Idle", "start"), ("OpenSent", "opensent")]
    assert all(p["info"].split()[0] == p["state"] for p in peers)
    rc, out = run_status(monkeypatch, capsys, status_reply(peers=peers[:1]), out="json")
    assert rc == 0 and json.loads(out)["peers"] == peers[:1]
    rc, out = run_status(monkeypatch, capsys, status_reply(peers=peers), out="json")
    assert rc == 1 and [p["state"] for p in json.loads(out)["peers"]] == [p["state"] for p in peers]


def test_node_routes_prints_the_agents_state_word(monkeypatch, capsys):
    def route(dst, state, in_sync, reason="local block"):
        return {"dst": dst, "type": "blackhole", "dev": None, "gateway": None, "reason": reason,
                "in_sync": in_sync, "kernel": None, "state": state}
    rows = [route("10.244.0.0/26", "ok", True),
            route("10.244.1.0/26", "not-desired", False, reason="local block (odd wording)"),
            route("10.244.2.0/26", "missing", False, reason="stale"),
            route("10.244.3.0/26", "differs", False, reason="")]
    monkeypatch.setattr(node_cmds, "query", lambda node, topic, **kw: rows)
    assert node_cmds.routes("n1") == 1
    states = [ln.split()[-1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("10.")]
    assert states == ["ok", "not-desired", "missing", "differs"]


def test_node_routes_shows_tunnel_routes_and_blocks_not_routed_yet(monkeypatch, capsys):
    """Issue 8: a VXLAN route shows its device; a remote node without a VTEP yet is listed with
    the reason (no route rather than a broken one), and that is not a clean bill of health."""
    rows = [{"dst": "10.244.2.0/26", "type": "unicast", "dev": "vxlan.calico",
             "gateway": "10.244.2.1", "reason": "vxlan to n2", "in_sync": True, "kernel": {},
             "state": "ok"}]
    status = {"unroutable": {"10.244.3.0/26": "node n3 has no VXLAN tunnel address and MAC yet"},
              "encap_problems": {"ipip": "ipip: the kernel has no ipip support"}}
    monkeypatch.setattr(node_cmds, "query",
                        lambda node, topic, **kw: rows if topic == "routes" else status)
    assert node_cmds.routes("n1") == 1
    out = capsys.readouterr().out
    assert "via 10.244.2.1 dev vxlan.calico" in out
    assert "Not routed yet:" in out and "node n3 has no VXLAN tunnel address and MAC yet" in out
    assert "Encapsulation: ipip: the kernel has no ipip support" in out


def test_node_routes_of_an_older_agent_fall_back_to_in_sync():
    assert node_cmds.route_state({"in_sync": True, "kernel": None, "reason": "stale"}) == "ok"
    assert node_cmds.route_state({"in_sync": False, "kernel": {}, "reason": ""}) == "out-of-sync"


@pytest.mark.parametrize("node", ["n1/../n2", "..", "n1..n2", "N1", "-n1", "n1-", "", "a" * 254,
                                  "n1/x", "/etc"])
def test_status_socket_path_refuses_what_is_not_a_node_name(node):
    with pytest.raises(ValueError, match=r"^--node: .* is not a valid node name"):
        socket_path(node)


@pytest.mark.parametrize("node", ["n1", "demo-node1", "node.example.com", "a" * 253])
def test_status_socket_path_of_a_node_name(node):
    assert socket_path(node).parts[-2:] == (node, "status.sock")


def test_node_status_with_a_bad_node_name_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(node_cmds, "query", lambda *a, **kw: pytest.fail("must not be asked"))
    with pytest.raises(resources.UsageError, match="--node: 'n1/../n2' is not a valid node name"):
        node_cmds.status("n1/../n2")


def test_a_peer_naming_a_filter_that_does_not_exist_is_refused_before_anything_is_written():
    """Whole-set validation over the store as it would be after the write (crds.validate_set)."""
    ds = MemoryDatastore()
    peer = load({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "p"},
                 "spec": {"peerIP": "192.0.2.1", "asNumber": 64513, "filters": ["nope"]}})
    with pytest.raises(resources.UsageError, match="nope"):
        resources.write(ds, "apply", [peer])
    assert ds.list("BGPPeer").items == []
    good = load({"apiVersion": "projectcalico.org/v3", "kind": "BGPFilter", "metadata": {"name": "nope"},
                 "spec": {}})
    assert resources.write(ds, "apply", [peer, good]) == 0  # together in one file: fine
