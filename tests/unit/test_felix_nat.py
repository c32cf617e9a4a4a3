"""felix.nat, pure half: Calico's natOutgoing rule as nft text, and nft's JSON read back."""
from __future__ import annotations

import doctest
from ipaddress import ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

import felix.nat
from felix.nat import NatRuleset, UnexpectedTable, desired_rulesets, parse_table, render_script, rule_counter

N = ip_network
NAT, PLAIN, V6 = N("10.244.0.0/16"), N("10.96.0.0/12"), N("fd00:10::/64")


def nft_json(family="ip", nat=("10.244.0.0/16",), all_=("10.96.0.0/12", "10.244.0.0/16"),
             fully_random=True, packets=0):
    """What ``nft -j list table FAMILY pycalico`` prints (shape copied from nft 1.0.6)."""
    def elem(cidr):
        net = N(cidr)
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}

    def nft_set(name, cidrs, handle):
        s = {"family": family, "name": name, "table": "pycalico", "handle": handle,
             "type": "ipv4_addr" if family == "ip" else "ipv6_addr", "flags": ["interval"]}
        return {"set": s | ({"elem": [elem(c) for c in cidrs]} if cidrs else {})}

    def match(op, field, name):
        left = {"payload": {"protocol": family, "field": field}}
        return {"match": {"op": op, "left": left, "right": f"@{name}"}}

    return {"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": family, "name": "pycalico", "handle": 5}},
        nft_set("all-pools", all_, 2), nft_set("nat-pools", nat, 3),
        {"chain": {"family": family, "table": "pycalico", "name": "postrouting", "handle": 1, "type": "nat",
                   "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {"family": family, "table": "pycalico", "chain": "postrouting", "handle": 4, "expr": [
            match("==", "saddr", "nat-pools"), match("!=", "daddr", "all-pools"),
            {"counter": {"packets": packets, "bytes": 84 * packets}},
            {"masquerade": {"flags": "fully-random"} if fully_random else None}]}},
    ]}


def test_nat_pool_to_outside_is_masqueraded_and_every_pool_is_excluded_as_destination():
    assert render_script(desired_rulesets([(NAT, True), (PLAIN, False)])) == (
        "table ip pycalico\n"
        "delete table ip pycalico\n"
        "table ip pycalico {\n"
        "\tset all-pools {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
        "\t\telements = { 10.96.0.0/12, 10.244.0.0/16 }\n\t}\n"
        "\tset nat-pools {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16 }\n\t}\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tip saddr @nat-pools ip daddr != @all-pools counter masquerade fully-random\n"
        "\t}\n"
        "}\n"
        "table ip6 pycalico\n"
        "delete table ip6 pycalico\n")


def test_no_nat_pool_means_both_tables_are_removed():
    want = desired_rulesets([(NAT, False), (V6, False)])
    assert want == {"ip": None, "ip6": None}
    assert render_script(want) == ("table ip pycalico\ndelete table ip pycalico\n"
                                   "table ip6 pycalico\ndelete table ip6 pycalico\n")
    assert desired_rulesets([]) == {"ip": None, "ip6": None}


def test_a_disabled_pool_is_still_a_pool_its_pods_talk_to_without_nat():
    # The caller passes disabled pools too (their pods still exist): here 10.96/12 is disabled.
    want = desired_rulesets([(NAT, True), (PLAIN, False)])["ip"]
    assert PLAIN in want.all_pools and PLAIN not in want.nat_pools


def test_ipv6_pools_get_the_ip6_table_and_never_mix_with_ipv4():
    want = desired_rulesets([(V6, True), (N("fd00:11::/64"), False), (PLAIN, False)])
    assert want["ip"] is None
    assert want["ip6"] == NatRuleset("ip6", (V6,), (V6, N("fd00:11::/64")))
    assert "ip6 saddr @nat-pools ip6 daddr != @all-pools counter masquerade" in want["ip6"].render()
    assert "type ipv6_addr" in want["ip6"].render()


def test_overlapping_duplicate_and_adjacent_pools_collapse_as_nft_lists_them():
    want = desired_rulesets([(NAT, True), (N("10.245.0.0/16"), False), (NAT, True), (N("10.244.5.0/24"), False)])
    assert want["ip"].all_pools == (N("10.244.0.0/15"),)
    assert want["ip"].nat_pools == (NAT,)


def test_strings_are_accepted_and_a_cidr_that_is_no_network_is_named():
    assert desired_rulesets([("10.244.0.0/16", True)])["ip"].nat_pools == (NAT,)
    for bad in ("10.244.1.5/16", "banana", "10.244.0.0/33"):
        with pytest.raises(ValueError, match=f"IP pool CIDR '{bad}' is not a network"):
            desired_rulesets([(NAT, True), (bad, False)])


def test_fully_random_can_be_turned_off():
    text = desired_rulesets([(NAT, True)], fully_random=False)["ip"].render()
    assert "counter masquerade\n" in text and "fully-random" not in text


def test_what_nft_lists_parses_back_to_what_we_rendered():
    want = desired_rulesets([(NAT, True), (PLAIN, False)])["ip"]
    assert parse_table("ip", nft_json(packets=7)) == want
    assert parse_table("ip6", nft_json("ip6", ("fd00:10::/64",), ("fd00:10::/64",))) == \
        desired_rulesets([(V6, True)])["ip6"]


def test_plain_masquerade_parses_as_not_fully_random():
    want = desired_rulesets([(NAT, True), (PLAIN, False)], fully_random=False)["ip"]
    assert parse_table("ip", nft_json(fully_random=False)) == want


def test_single_addresses_and_ranges_in_a_set_are_understood():
    doc = nft_json(all_=("10.244.0.0/16", "10.9.9.9/32"))
    doc["nftables"][2]["set"]["elem"].append({"range": ["10.1.0.0", "10.1.1.255"]})
    assert parse_table("ip", doc).all_pools == (N("10.1.0.0/23"), N("10.9.9.9/32"), NAT)


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["nftables"].append({"rule": {"expr": [{"accept": None}]}}), "2 rules"),
    (lambda d: d["nftables"].pop(5), "0 rules"),
    (lambda d: d["nftables"].pop(3), "sets"),
    (lambda d: d["nftables"].append({"map": {"name": "m"}}), "unexpected objects"),
    (lambda d: d["nftables"][4]["chain"].update(prio=0), "chains"),
    (lambda d: d["nftables"][4]["chain"].update(policy="drop"), "chains"),
    (lambda d: d["nftables"][2]["set"].update(flags=["interval", "timeout"]), "set all-pools"),
    (lambda d: d["nftables"][5]["rule"]["expr"].pop(1), "rule"),
    (lambda d: d["nftables"][2]["set"]["elem"].append({"elem": {"val": "10.1.1.1", "comment": "x"}}), "element"),
])
def test_a_table_edited_behind_our_back_is_not_ours(edit, reason):
    doc = nft_json()
    edit(doc)
    with pytest.raises(UnexpectedTable, match=reason):
        parse_table("ip", doc)


def test_the_counter_is_read_for_pycalicoctl():
    assert rule_counter(nft_json(packets=3)) == (3, 252)
    assert rule_counter({"nftables": []}) == (0, 0)


def test_the_module_example_runs():
    assert doctest.testmod(felix.nat, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


v4_pool = st.builds(lambda a, n: ip_network(f"10.{a}.0.0/{n}", strict=False),
                    st.integers(0, 255), st.integers(8, 24))
v6_pool = st.builds(lambda a: ip_network(f"fd00:{a:x}::/64"), st.integers(0, 0xFFFF))
pools = st.lists(st.tuples(v4_pool | v6_pool, st.booleans()), max_size=12)


@given(pools, st.randoms())
def test_the_script_does_not_depend_on_pool_order(pool_list, rnd):
    shuffled = list(pool_list)
    rnd.shuffle(shuffled)
    assert render_script(desired_rulesets(shuffled)) == render_script(desired_rulesets(pool_list))


@given(pools)
def test_every_pool_is_excluded_and_exactly_the_nat_pools_are_masqueraded(pool_list):
    want = desired_rulesets(pool_list)
    for net, nat in pool_list:
        table = want["ip" if net.version == 4 else "ip6"]
        if nat:
            assert any(net.subnet_of(p) for p in table.nat_pools)
        if table is not None:
            assert any(net.subnet_of(p) for p in table.all_pools)
    for table in filter(None, want.values()):
        for p in table.nat_pools:  # masqueraded sources are pool addresses of natOutgoing pools only
            assert any(p.subnet_of(a) for a in table.all_pools)
            for edge in (p.network_address, p.broadcast_address):
                assert any(edge in n for n, nat in pool_list if nat and n.version == p.version)
