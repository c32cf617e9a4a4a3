"""pycalicoctl against a real etcd: calicoctl's YAML in, calicoctl's tables out, bad input stored never."""
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_crds_models import ARTICLE_IPPOOL

CTL = str(Path(sys.executable).parent / "pycalicoctl")


def ctl(endpoint, *args, stdin=None):
    return subprocess.run([CTL, *args, "--etcd-endpoints", endpoint], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_apply_get_delete_round_trip(etcd_endpoint):
    out = ctl(etcd_endpoint, "apply", "-f", "-", stdin=ARTICLE_IPPOOL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Successfully applied 1 'IPPool' resource(s)"
    wide = ctl(etcd_endpoint, "get", "ippool", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "SELECTOR"]
    assert wide[1].split() == ["default-ipv4-ippool", "10.244.0.0/16", "true", "Never", "Never",
                               "false", "all()"]
    doc = yaml.safe_load(ctl(etcd_endpoint, "get", "ippools", "-o", "yaml").stdout)
    assert doc["kind"] == "IPPoolList" and int(doc["metadata"]["resourceVersion"]) > 0
    item = doc["items"][0]
    assert item["spec"]["cidr"] == "10.244.0.0/16" and item["metadata"]["resourceVersion"]
    assert ctl(etcd_endpoint, "delete", "ippool", "default-ipv4-ippool").returncode == 0
    assert ctl(etcd_endpoint, "get", "ippool").stdout.splitlines() == ["NAME   CIDR   SELECTOR"]
    missing = ctl(etcd_endpoint, "delete", "ippool", "default-ipv4-ippool")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_malformed_pool_rejected_with_field_and_nothing_stored(etcd_endpoint):
    bad = ARTICLE_IPPOOL.replace("blockSize: 26", "blockSize: 33")
    out = ctl(etcd_endpoint, "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2
    assert "spec.blockSize" in out.stderr and "between 20 and 32" in out.stderr
    bad_cidr = ARTICLE_IPPOOL.replace("cidr: 10.244.0.0/16", "cidr: 10.244.0.7/16")
    out = ctl(etcd_endpoint, "create", "-f", "-", stdin=bad_cidr)
    assert out.returncode == 2 and "spec.cidr" in out.stderr and "host bits" in out.stderr
    assert len(ctl(etcd_endpoint, "get", "ippool").stdout.splitlines()) == 1  # header only


def test_create_conflicts_and_overlap(etcd_endpoint):
    assert ctl(etcd_endpoint, "create", "-f", "-", stdin=ARTICLE_IPPOOL).returncode == 0
    again = ctl(etcd_endpoint, "create", "-f", "-", stdin=ARTICLE_IPPOOL)
    assert again.returncode == 1 and "already exists" in again.stderr
    overlap = ARTICLE_IPPOOL.replace("name: default-ipv4-ippool", "name: other").replace(
        "10.244.0.0/16", "10.244.128.0/17")
    out = ctl(etcd_endpoint, "apply", "-f", "-", stdin=overlap)
    assert out.returncode == 2 and "overlaps IPPool default-ipv4-ippool" in out.stderr


def test_missing_endpoint_is_a_clear_usage_error():
    bare = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    out = subprocess.run([CTL, "get", "ippool", "--datastore-type", "etcdv3"], capture_output=True,
                         text=True, env=bare)
    assert out.returncode == 2 and "etcd_endpoints" in out.stderr
    # Nothing configured at all: calicoctl's default, the Kubernetes datastore, and how to set it.
    out = subprocess.run([CTL, "get", "ippool"], capture_output=True, text=True, env=bare)
    assert out.returncode == 2 and "KUBECONFIG" in out.stderr and len(out.stderr.splitlines()) == 1


POOL_AND_BLOCK = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: busy}
spec: {cidr: 10.80.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: IPAMBlock
metadata: {name: 10-80-1-0-26}
spec:
  cidr: 10.80.1.0/26
  affinity: host:n1
  allocations: [0, null, 1, 2]
"""


def test_pool_with_allocations_is_not_deleted_without_force(etcd_endpoint):
    assert ctl(etcd_endpoint, "apply", "-f", "-", stdin=POOL_AND_BLOCK).returncode == 0
    refused = ctl(etcd_endpoint, "delete", "ippool", "busy")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "pycalicoctl: IPPool busy: 3 address(es) still allocated from 10.80.0.0/16; nothing deleted "
        "(release them first, or delete with --force)"]
    by_file = ctl(etcd_endpoint, "delete", "-f", "-", stdin=POOL_AND_BLOCK.split("---")[0])
    assert by_file.returncode == 1 and "IPPool busy: 3 address(es)" in by_file.stderr
    assert "busy" in ctl(etcd_endpoint, "get", "ippool").stdout  # nothing deleted
    forced = ctl(etcd_endpoint, "delete", "ippool", "busy", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "busy" not in ctl(etcd_endpoint, "get", "ippool").stdout
    # the addresses are still held: ipam show lists their block, with or without --show-blocks
    for extra in ((), ("--show-blocks",)):
        shown = ctl(etcd_endpoint, "ipam", "show", *extra)
        assert shown.returncode == 0
        assert "| Block (no pool) | 10.80.1.0/26 | 64        | 3 (5%)     | 61 (95%) |" in shown.stdout
        assert shown.stderr.splitlines() == [
            "Warning: 3 address(es) allocated in 1 IPAM block(s) inside no IP pool (10.80.1.0/26); "
            "was their pool deleted?"]


def test_overlapping_pools_in_one_file_apply_nothing(etcd_endpoint):
    doc = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: outer}
spec: {cidr: 10.80.0.0/16, blockSize: 24}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: inner}
spec: {cidr: 10.80.0.0/24, blockSize: 26}
"""
    out = ctl(etcd_endpoint, "apply", "-f", "-", stdin=doc)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["pycalicoctl: IPPool inner: spec.cidr: 10.80.0.0/24 overlaps "
                                       "IPPool outer (10.80.0.0/16) in the same file"]
    assert ctl(etcd_endpoint, "get", "ippool").stdout.splitlines() == ["NAME   CIDR   SELECTOR"]
