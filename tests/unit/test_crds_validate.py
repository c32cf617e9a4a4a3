"""Whole-set rules: duplicates, overlapping pools per family, duplicate peerings, missing filters."""
import pytest

from crds import InvalidResource, load, validate_set
from crds.validate import check_update, merged


def res(kind, name, spec=None):
    d = {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}}
    return load(d if spec is None else {**d, "spec": spec})


def pool(name, cidr):
    return res("IPPool", name, {"cidr": cidr})


def peer(name, **spec):
    return res("BGPPeer", name, {"peerIP": "10.0.0.1", "asNumber": 65001, **spec})


def refused(items, kind, name, field, words, **kw):
    with pytest.raises(InvalidResource) as info:
        validate_set(items, **kw)
    e = info.value
    assert (e.kind, e.name, e.field) == (kind, name, field), str(e)
    assert words in e.reason


def test_a_consistent_set_passes():
    validate_set([pool("v4", "10.244.0.0/16"), pool("v4b", "10.245.0.0/16"), pool("v6", "fd00::/48"),
                  res("BGPConfiguration", "default"), res("BGPConfiguration", "node.n1"),
                  res("BGPFilter", "f1"), peer("p1", filters=["f1"]), peer("p2", node="n1")],
                 whole_store=True)


def test_same_kind_and_name_twice():
    refused([res("BGPConfiguration", "default"), res("BGPConfiguration", "default")],
            "BGPConfiguration", "default", "metadata.name", "appears twice")
    validate_set([res("BGPConfiguration", "default"), res("FelixConfiguration", "default")])


@pytest.mark.parametrize("a, b", [("10.244.0.0/16", "10.244.3.0/24"), ("10.0.0.0/8", "10.244.0.0/16"),
                                  ("fd00::/48", "fd00:0:0:1::/64")])
def test_overlapping_pools_name_the_later_pool(a, b):
    refused([pool("first", a), pool("second", b)], "IPPool", "second", "spec.cidr", "overlaps IPPool first")


def test_v4_and_v6_pools_never_overlap_each_other():
    validate_set([pool("v4", "0.0.0.0/1"), pool("v6", "::/1")])


def test_two_peers_for_one_session():
    refused([peer("a", node="n1"), peer("b", node="n1")], "BGPPeer", "b", "spec.peerIP", "BGPPeer a")
    validate_set([peer("a", node="n1"), peer("b", node="n2")])


def test_missing_filter_only_when_the_set_is_the_whole_store():
    items = [res("BGPFilter", "f1"), peer("p", filters=["f1", "f2"])]
    validate_set(items)  # a file may name a filter that is already stored
    refused(items, "BGPPeer", "p", "spec.filters.1", "no BGPFilter named f2", whole_store=True)


def test_merged_replaces_by_key_and_appends_the_new():
    stored = [pool("a", "10.0.0.0/16"), res("BGPFilter", "f1")]
    incoming = [pool("b", "10.0.128.0/17"), pool("a", "10.9.0.0/16")]
    after = merged(stored, incoming)
    assert [(r.KIND, r.name) for r in after] == [("IPPool", "a"), ("BGPFilter", "f1"), ("IPPool", "b")]
    assert after[0].spec.cidr == "10.9.0.0/16"
    validate_set(after)  # a moved away from b's range: no overlap once merged
    refused(merged(stored, [pool("b", "10.0.128.0/17")]), "IPPool", "b", "spec.cidr", "overlaps IPPool a")


def test_a_file_may_bring_the_filter_its_peer_names():
    stored = [peer("p", filters=["f2"])]
    refused(stored, "BGPPeer", "p", "spec.filters.0", "f2", whole_store=True)
    validate_set(merged(stored, [res("BGPFilter", "f2")]), whole_store=True)


@pytest.mark.parametrize("change, field", [({"cidr": "10.245.0.0/16"}, "spec.cidr"),
                                           ({"blockSize": 28}, "spec.blockSize")])
def test_pool_cidr_and_block_size_are_immutable(change, field):
    current = pool("a", "10.244.0.0/16")
    new = res("IPPool", "a", {"cidr": "10.244.0.0/16", **change})
    with pytest.raises(InvalidResource) as info:
        check_update(current, new)
    assert info.value.field == field and "cannot be changed" in info.value.reason
    check_update(current, res("IPPool", "a", {"cidr": "10.244.0.0/16", "natOutgoing": True}))
    check_update(peer("p"), peer("p", asNumber=65002))  # other kinds have no immutable fields


def test_merged_refuses_a_resource_given_twice_even_if_stored():
    with pytest.raises(InvalidResource, match="appears twice"):
        merged([pool("a", "10.0.0.0/16")], [pool("a", "10.1.0.0/16"), pool("a", "10.2.0.0/16")])
