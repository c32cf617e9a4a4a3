"""felix.tunnels, the pure parts: inputs and their validation, desired VTEP entries, MAC and MTU,
and the plans (netlink requests) for vxlan.calico, its entries and tunl0. No kernel, no root."""
from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Interface

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.tunnels import (
    IPIP_DEVICE, IPIP_OVERHEAD, VXLAN_DEVICE, VXLAN_OVERHEAD, FdbEntry, IpipConfig, LinkState,
    NeighEntry, Op, RemoteVtep, TunnelResult, VtepEntry, VtepState, VxlanAttrs, VxlanConfig,
    desired_vtep_entries, plan_tunl0, plan_vteps, plan_vxlan_device, tunnel_mtu, vtep_mac_for,
)

A = IPv4Address
MAC2, MAC3 = "66:00:00:00:00:02", "66:00:00:00:00:03"
N2 = RemoteVtep("n2", A("10.244.2.0"), MAC2, A("192.168.50.12"))
N3 = RemoteVtep("n3", A("10.244.3.0"), MAC3, A("192.168.50.13"))
PERM, REACHABLE, FDB_STATE, NTF_SELF = 0x80, 0x02, 0xC0, 0x02


def cfg(**overrides) -> VxlanConfig:
    return VxlanConfig(**{"node": "n1", "node_ip": "192.168.50.11", "vtep_ip": "10.244.1.0",
                          "vtep_mac": "66:00:00:00:00:01", **overrides})


# -- MAC, MTU, validation ----------------------------------------------------------------------

@given(st.text(min_size=1, max_size=253))
def test_generated_mac_is_stable_locally_administered_unicast(node):
    mac = vtep_mac_for(node)
    first = int(mac[:2], 16)
    assert mac == vtep_mac_for(node)
    assert len(mac.split(":")) == 6 and mac == mac.lower()
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert VxlanConfig(node=node, node_ip="192.168.50.11", vtep_ip="10.244.1.0").vtep_mac == mac


def test_generated_macs_differ_between_nodes():
    assert len({vtep_mac_for(f"node-{i}") for i in range(1000)}) == 1000


def test_given_mac_is_kept_and_normalised():
    assert cfg(vtep_mac="66-AA-BB-CC-DD-EE").vtep_mac == "66:aa:bb:cc:dd:ee"
    assert cfg(vtep_mac=None).vtep_mac == vtep_mac_for("n1")


@pytest.mark.parametrize("parent, configured, overhead, expected", [
    (1500, None, VXLAN_OVERHEAD, 1450), (1500, 0, VXLAN_OVERHEAD, 1450), (9000, None, IPIP_OVERHEAD, 8980),
    (1500, None, IPIP_OVERHEAD, 1480), (1500, 1400, VXLAN_OVERHEAD, 1400), (1500, 9000, IPIP_OVERHEAD, 9000),
])
def test_tunnel_mtu(parent, configured, overhead, expected):
    assert tunnel_mtu(parent, overhead, configured) == expected


def test_tunnel_mtu_below_the_ipv4_minimum_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^mtu: 50 \(parent MTU 100 - 50\)"):
        tunnel_mtu(100, VXLAN_OVERHEAD)


@pytest.mark.parametrize("field, value", [
    ("vni", 0), ("vni", 2**24), ("vni", -1), ("vni", True), ("vni", "4096"),
    ("port", 0), ("port", 65536), ("mtu", 67), ("mtu", 70000),
    ("vtep_mac", "66:00:00:00:00"), ("vtep_mac", "zz:00:00:00:00:01"), ("vtep_mac", "01:00:5e:00:00:01"),
    ("vtep_mac", "00:00:00:00:00:00"), ("vtep_mac", "66:00:00:00:00:01:02"),
    ("node_ip", "192.168.50"), ("vtep_ip", "fe80::1"),
])
def test_bad_vxlan_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: "):
        cfg(**{field: value})


@pytest.mark.parametrize("vni", [1, 4096, 2**24 - 1])
def test_vni_range_edges_are_accepted(vni):
    assert cfg(vni=vni).vni == vni


def test_no_mac_and_no_node_name_is_refused():
    with pytest.raises(ValueError, match="^node: "):
        VxlanConfig(node="", node_ip="192.168.50.11", vtep_ip="10.244.1.0")


@pytest.mark.parametrize("kwargs, field", [
    ({"node": "", "vtep_ip": "10.244.2.0", "vtep_mac": MAC2, "node_ip": "192.168.50.12"}, "node"),
    ({"node": "n2", "vtep_ip": "10.244.2", "vtep_mac": MAC2, "node_ip": "192.168.50.12"}, "vtep_ip"),
    ({"node": "n2", "vtep_ip": "10.244.2.0", "vtep_mac": "nope", "node_ip": "192.168.50.12"}, "vtep_mac"),
    ({"node": "n2", "vtep_ip": "10.244.2.0", "vtep_mac": "ff:ff:ff:ff:ff:ff", "node_ip": "1.2.3.4"}, "vtep_mac"),
    ({"node": "n2", "vtep_ip": "10.244.2.0", "vtep_mac": MAC2, "node_ip": None}, "node_ip"),
])
def test_bad_remote_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        RemoteVtep(**kwargs)


def test_ipip_config_needs_a_way_to_its_mtu_and_a_valid_address():
    with pytest.raises(ValueError, match="^mtu: "):
        IpipConfig(tunnel_ip="10.244.1.0")
    with pytest.raises(ValueError, match="^tunnel_ip: "):
        IpipConfig(tunnel_ip="10.244.1.0/32", mtu=1480)
    assert IpipConfig(tunnel_ip="10.244.1.0", parent="eth0").tunnel_ip == A("10.244.1.0")


# -- desired entries ---------------------------------------------------------------------------

def test_desired_entries_by_vtep_ip():
    assert desired_vtep_entries([N3, N2, N2]) == {
        A("10.244.2.0"): VtepEntry(A("10.244.2.0"), MAC2, A("192.168.50.12"), "n2"),
        A("10.244.3.0"): VtepEntry(A("10.244.3.0"), MAC3, A("192.168.50.13"), "n3"),
    }
    assert desired_vtep_entries([]) == {}


@pytest.mark.parametrize("clash, field", [
    (RemoteVtep("n4", A("10.244.2.0"), "66:00:00:00:00:04", A("192.168.50.14")), "vtep_ip"),
    (RemoteVtep("n4", A("10.244.4.0"), MAC2, A("192.168.50.14")), "vtep_mac"),
    (RemoteVtep("n2", A("10.244.4.0"), "66:00:00:00:00:04", A("192.168.50.12")), "node"),
])
def test_conflicting_remotes_reject_the_set_in_any_order(clash, field):
    messages = set()
    for remotes in ([N2, N3, clash], [clash, N3, N2]):
        with pytest.raises(ValueError, match=f"^{field}: ") as raised:
            desired_vtep_entries(remotes)
        messages.add(str(raised.value))
    assert len(messages) == 1, messages  # the same verdict whatever the order


remotes_strategy = st.lists(st.integers(1, 200), unique=True, max_size=12).map(lambda ids: [
    RemoteVtep(f"n{i}", A(f"10.244.{i}.0"), f"66:00:00:00:01:{i:02x}", A(f"192.168.50.{i}")) for i in ids])


@given(remotes_strategy, st.randoms())
def test_desired_entries_do_not_depend_on_order(remotes, rnd):
    shuffled = list(remotes)
    rnd.shuffle(shuffled)
    assert desired_vtep_entries(remotes) == desired_vtep_entries(shuffled)
    assert desired_vtep_entries(remotes) == desired_vtep_entries(remotes[::-1])


# -- VTEP plans --------------------------------------------------------------------------------

def in_kernel(*remotes: RemoteVtep) -> VtepState:
    """What a correct sync leaves on vxlan.calico."""
    return VtepState(tuple(NeighEntry(r.vtep_ip, r.vtep_mac, PERM) for r in remotes),
                     tuple(FdbEntry(r.vtep_mac, r.node_ip, FDB_STATE) for r in remotes))


def test_empty_device_gets_fdb_then_neighbour_with_the_right_flags():
    ops = plan_vteps(desired_vtep_entries([N2]), VtepState())
    assert [(op.what, op.command, op.dev) for op in ops] == [
        ("fdb", "replace", VXLAN_DEVICE), ("neigh", "replace", VXLAN_DEVICE)]
    assert ops[0].request(7) == {"ifindex": 7, "lladdr": MAC2, "dst": "192.168.50.12",
                                 "flags": NTF_SELF, "state": FDB_STATE}  # self permanent
    assert ops[1].request(7) == {"ifindex": 7, "dst": "10.244.2.0", "lladdr": MAC2, "state": PERM}


def test_in_sync_plans_nothing():
    assert plan_vteps(desired_vtep_entries([N2, N3]), in_kernel(N2, N3)) == []


def test_removed_remote_is_deleted_by_ip_and_by_mac_with_its_dst():
    ops = plan_vteps(desired_vtep_entries([N2]), in_kernel(N2, N3))
    assert [(op.what, op.command, op.request(None)) for op in ops] == [
        ("neigh", "del", {"dst": "10.244.3.0"}),
        ("fdb", "del", {"lladdr": MAC3, "dst": "192.168.50.13"}),
    ]


def test_only_what_differs_is_replaced():
    moved = RemoteVtep("n2", N2.vtep_ip, N2.vtep_mac, A("192.168.60.12"))  # node IP changed
    assert [op.key for op in plan_vteps(desired_vtep_entries([moved]), in_kernel(N2))] == [f"fdb {MAC2}"]
    new_mac = RemoteVtep("n2", N2.vtep_ip, "66:00:00:00:00:22", N2.node_ip)
    keys = [op.key for op in plan_vteps(desired_vtep_entries([new_mac]), in_kernel(N2))]
    assert keys == [f"fdb {MAC2} dst 192.168.50.12", "fdb 66:00:00:00:00:22", "neigh 10.244.2.0"]


def test_kernel_made_neighbours_are_left_to_the_kernel_but_fixed_when_desired():
    state = VtepState((NeighEntry(A("10.244.9.9"), None, 0x20), NeighEntry(N2.vtep_ip, MAC2, REACHABLE)),
                      in_kernel(N2).fdb)
    assert [op.key for op in plan_vteps(desired_vtep_entries([N2]), state)] == ["neigh 10.244.2.0"]


def test_fdb_with_a_foreign_port_or_several_remotes_is_normalised():
    odd_port = VtepState(in_kernel(N2).neighbours, (FdbEntry(MAC2, N2.node_ip, FDB_STATE, port=4790),))
    assert [op.command for op in plan_vteps(desired_vtep_entries([N2]), odd_port)] == ["replace"]
    two = VtepState(in_kernel(N2).neighbours, (FdbEntry(MAC2, A("192.168.50.99"), FDB_STATE),
                                                FdbEntry(MAC2, N2.node_ip, FDB_STATE)))
    assert [op.key for op in plan_vteps(desired_vtep_entries([N2]), two)] == [f"fdb {MAC2} dst 192.168.50.99"]


def simulate(state: VtepState, ops: list[Op]) -> VtepState:
    """The kernel's effect of our requests on vxlan.calico (unicast FDB entries keep one remote)."""
    neigh = {n.ip: n for n in state.neighbours}
    fdb = list(state.fdb)
    for op in ops:
        r = op.request(1)
        if op.what == "neigh":
            neigh.pop(A(r["dst"]), None)
            if op.command == "replace":
                neigh[A(r["dst"])] = NeighEntry(A(r["dst"]), r["lladdr"], r["state"])
        elif op.command == "del":
            fdb = [f for f in fdb if (f.mac, str(f.dst)) != (r["lladdr"], r["dst"])]
        else:
            rows = [f for f in fdb if f.mac == r["lladdr"]]
            new = FdbEntry(r["lladdr"], A(r["dst"]), r["state"])
            fdb = [new if f is (rows[0] if rows else None) else f for f in fdb] + ([] if rows else [new])
    return VtepState(tuple(neigh.values()), tuple(fdb))


@st.composite
def kernel_states(draw):
    """Like the kernel: one neighbour per IP; one FDB state per MAC and distinct remotes under it
    (several only when permanent: the kernel keeps one remote for a unicast MAC it learned)."""
    neigh = draw(st.dictionaries(st.integers(1, 8), st.tuples(st.integers(1, 8),
                                 st.sampled_from([PERM, REACHABLE])), max_size=8))
    fdb = draw(st.dictionaries(st.integers(1, 8), st.tuples(
        st.sampled_from([FDB_STATE, REACHABLE]), st.sets(st.integers(1, 8), min_size=1, max_size=3)),
        max_size=8))
    return VtepState(
        tuple(NeighEntry(A(f"10.244.{a}.0"), f"66:00:00:00:01:{b:02x}", s) for a, (b, s) in neigh.items()),
        tuple(FdbEntry(f"66:00:00:00:01:{b:02x}", A(f"192.168.50.{c}"), s)
              for b, (s, dsts) in fdb.items() for c in (sorted(dsts) if s == FDB_STATE else [min(dsts)])))


@settings(max_examples=300)
@given(remotes_strategy, kernel_states())
def test_one_plan_from_any_state_converges_and_touches_only_our_device(remotes, state):
    desired = desired_vtep_entries(remotes)
    ops = plan_vteps(desired, state)
    assert all(op.dev == VXLAN_DEVICE for op in ops)
    commands = [op.command for op in ops]
    assert commands == sorted(commands, key=lambda c: c != "del")  # deletes first
    assert plan_vteps(desired, simulate(state, ops)) == []


# -- device plans ------------------------------------------------------------------------------

def vxlan_link(config: VxlanConfig, **overrides) -> LinkState:
    spec = {"index": 9, "kind": "vxlan", "mtu": 1450, "mac": config.vtep_mac, "up": True,
            "addresses": frozenset({IPv4Interface(f"{config.vtep_ip}/32")}),
            "vxlan": VxlanAttrs(config.vni, config.port, config.node_ip, 2, False)}
    return LinkState(**{**spec, **overrides})


def test_missing_vxlan_device_is_created_then_brought_up_with_its_address():
    ops = plan_vxlan_device(None, cfg(), parent_index=2, mtu=1450)
    assert [(op.what, op.command) for op in ops] == [("link", "add"), ("link", "set"), ("addr", "add")]
    assert ops[0].request(None) == {
        "ifname": VXLAN_DEVICE, "kind": "vxlan", "vxlan_id": 4096, "vxlan_port": 4789,
        "vxlan_local": "192.168.50.11", "vxlan_link": 2, "vxlan_learning": 0,
        "address": "66:00:00:00:00:01", "mtu": 1450}
    assert ops[1].request(9) == {"index": 9, "state": "up"}
    assert ops[2].request(9) == {"index": 9, "address": "10.244.1.0", "prefixlen": 32}


def test_vxlan_device_in_sync_plans_nothing():
    assert plan_vxlan_device(vxlan_link(cfg()), cfg(), parent_index=2, mtu=1450) == []


@pytest.mark.parametrize("change", [
    {"vni": 5000}, {"port": 4790}, {"node_ip": "192.168.50.99"}])
def test_what_cannot_change_in_place_recreates_the_device(change):
    ops = plan_vxlan_device(vxlan_link(cfg()), cfg(**change), parent_index=2, mtu=1450)
    assert [(op.what, op.command) for op in ops[:2]] == [("link", "del"), ("link", "add")]
    assert "recreate" in ops[0].key


@pytest.mark.parametrize("have", [
    {"vxlan": VxlanAttrs(4096, 4789, A("192.168.50.11"), 3, False)},  # another parent
    {"vxlan": VxlanAttrs(4096, 4789, A("192.168.50.11"), 2, True)},  # learning on
    {"kind": "veth", "vxlan": None},  # our name, wrong kind
])
def test_wrong_parent_learning_or_kind_recreates_too(have):
    ops = plan_vxlan_device(vxlan_link(cfg(), **have), cfg(), parent_index=2, mtu=1450)
    assert [(op.what, op.command) for op in ops[:2]] == [("link", "del"), ("link", "add")]


def test_mtu_mac_state_and_address_change_in_place():
    have = vxlan_link(cfg(), mtu=1500, mac="66:00:00:00:00:99", up=False,
                      addresses=frozenset({IPv4Interface("10.244.1.7/32")}))
    ops = plan_vxlan_device(have, cfg(), parent_index=2, mtu=1450)
    assert [(op.what, op.command, op.request(9)) for op in ops] == [
        ("link", "set", {"index": 9, "mtu": 1450, "address": "66:00:00:00:00:01", "state": "up"}),
        ("addr", "add", {"index": 9, "address": "10.244.1.0", "prefixlen": 32}),
        ("addr", "del", {"index": 9, "address": "10.244.1.7", "prefixlen": 32}),
    ]


def test_tunl0_is_configured_never_created():
    have = LinkState(5, "ipip", 1500, "00:00:00:00", False, frozenset({IPv4Interface("10.244.1.9/32")}))
    ops = plan_tunl0(have, IpipConfig(tunnel_ip="10.244.1.0", mtu=1480), mtu=1480)
    assert [(op.what, op.command, op.dev, op.request(5)) for op in ops] == [
        ("link", "set", IPIP_DEVICE, {"index": 5, "mtu": 1480, "state": "up"}),
        ("addr", "add", IPIP_DEVICE, {"index": 5, "address": "10.244.1.0", "prefixlen": 32}),
        ("addr", "del", IPIP_DEVICE, {"index": 5, "address": "10.244.1.9", "prefixlen": 32}),
    ]
    done = LinkState(5, "ipip", 1480, "00:00:00:00", True, frozenset({IPv4Interface("10.244.1.0/32")}))
    assert plan_tunl0(done, IpipConfig(tunnel_ip="10.244.1.0", mtu=1480), mtu=1480) == []


def test_result_ok_only_without_problem_or_failures():
    assert TunnelResult().ok
    assert not TunnelResult(problem="the kernel has no ipip support").ok
    assert not TunnelResult(failed={"fdb x": "EINVAL"}).ok


def test_random_plans_never_name_another_device():
    rnd = random.Random(7)
    for _ in range(50):
        have = vxlan_link(cfg(), mtu=rnd.choice([1450, 1500]), up=rnd.random() < 0.5)
        for op in plan_vxlan_device(have, cfg(vni=rnd.choice([4096, 7])), parent_index=2, mtu=1450):
            assert op.dev in ("", VXLAN_DEVICE)
            assert op.request(None).get("ifname", VXLAN_DEVICE) == VXLAN_DEVICE
