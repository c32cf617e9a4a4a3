"""pycalicoctl: calicoctl's output shapes, and validation before anything is stored."""
import io
import sys

import pytest

from crds import load
from ctl import output, resources
from datastore.memory import MemoryDatastore


def pool(name, cidr, **spec):
    return load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
                 "spec": {"cidr": cidr, **spec}})


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
    monkeypatch.setattr(sys, "stdin", io.StringIO(doc))
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
    monkeypatch.setattr(sys, "stdin", io.StringIO(doc))
    assert [r.name for r in resources.read_documents("-")] == ["a", "b"]


def test_ipam_show_counts_per_pool_and_block():
    blocks = [load({"apiVersion": "projectcalico.org/v3", "kind": "IPAMBlock",
                    "metadata": {"name": name},
                    "spec": {"cidr": cidr, "affinity": "host:n1",
                             "allocations": [0, None, 1] + [None] * 61}})
              for name, cidr in (("10-244-0-0-26", "10.244.0.0/26"), ("10-9-0-0-26", "10.9.0.0/26"))]
    headers, rows = output.ipam_rows([pool("default", "10.244.0.0/16")], blocks, show_blocks=True)
    assert headers == ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    assert rows == [["IP Pool", "10.244.0.0/16", "65536", "2 (0%)", "65534 (100%)"],
                    ["Block", "10.244.0.0/26", "64", "2 (3%)", "62 (97%)"]]  # 10.9/26 is in no pool
