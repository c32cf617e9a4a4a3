"""The agent's datastore view -> pure inputs of calc and BGP. Depends on current state only."""
import ipaddress
import random

from hypothesis import given, strategies as st

from bgp.rib import LearnedRoute
from crds import load
from datastore.syncer import InSync, Update
from felix import cluster
from felix.calc import Borrowed

V3 = "projectcalico.org/v3"


def res(kind, name, spec, namespace=None):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return load({"apiVersion": V3, "kind": kind, "metadata": meta, "spec": spec})


def upd(r):
    return Update(r.KIND, r.metadata.namespace, r.name, r)


RESOURCES = [
    res("IPPool", "pool", {"cidr": "10.244.0.0/16"}),
    res("IPPool", "hidden", {"cidr": "10.250.0.0/16", "disableBGPExport": True}),
    res("IPPool", "off", {"cidr": "10.251.0.0/16", "disabled": True}),
    res("Node", "n1", {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
    res("Node", "n2", {"bgp": {"ipv4Address": "10.99.0.2/24", "asNumber": 64513}}),
    res("IPAMBlock", "10-244-1-0-26", {"cidr": "10.244.1.0/26", "affinity": "host:n1"}),
    res("IPAMBlock", "10-250-0-0-26", {"cidr": "10.250.0.0/26", "affinity": "host:n1"}),
    res("IPAMBlock", "10-244-2-0-26", {"cidr": "10.244.2.0/26", "affinity": "host:n2"}),
    res("WorkloadEndpoint", "n1-k8s-pod--a-eth0",
        {"node": "n1", "pod": "pod-a", "interfaceName": "cali0123456789a",
         "ipNetworks": ["10.244.1.5/32"]}, namespace="default"),
    res("WorkloadEndpoint", "n2-k8s-pod--b-eth0",
        {"node": "n2", "pod": "pod-b", "interfaceName": "cali0123456789b",
         "ipNetworks": ["10.244.2.7/32"]}, namespace="default"),
]


def state_of(items):
    s = cluster.ClusterState()
    s.apply([upd(r) for r in items] + [InSync(len(items))])
    return s


def test_derived_inputs():
    s = state_of(RESOURCES)
    net = ipaddress.ip_network
    # every pool routes, the disabled one too (it only stops new allocations)
    assert cluster.pool_cidrs(s) == {net("10.244.0.0/16"), net("10.250.0.0/16"), net("10.251.0.0/16")}
    assert cluster.local_blocks(s, "n1") == {net("10.244.1.0/26"), net("10.250.0.0/26")}
    assert cluster.export_prefixes(s, "n1") == {net("10.244.1.0/26")}  # disableBGPExport honoured
    wl = cluster.local_workloads(s, "n1")
    assert [(str(w.ip), w.iface, w.name) for w in wl] == [("10.244.1.5", "cali0123456789a",
                                                            "default/pod-a")]
    infos = {i.name: i for i in cluster.node_infos(s)}
    assert infos["n2"].asn == 64513 and infos["n1"].asn is None
    assert str(infos["n1"].ipv4) == "10.99.0.1/24"
    assert cluster.bgp_global(s).asn == 64512 and cluster.bgp_global(s).mesh_enabled


def test_bgpconfiguration_default_is_used():
    s = state_of(RESOURCES + [res("BGPConfiguration", "default",
                                  {"asNumber": 65000, "nodeToNodeMeshEnabled": False})])
    g = cluster.bgp_global(s)
    assert (g.asn, g.mesh_enabled) == (65000, False)


def test_disabling_a_pool_keeps_its_routes():
    """Regression (issue 5, defect 3): disabled: true cut traffic to the pods already in the pool.

    The disabled pool left the import filter, so every remote route of that pool was withdrawn."""
    learned = [LearnedRoute(ipaddress.ip_network("10.251.0.64/26"), ipaddress.ip_address("10.99.0.2"),
                            ipaddress.ip_address("10.99.0.2"))]
    block = res("IPAMBlock", "10-251-0-0-26", {"cidr": "10.251.0.0/26", "affinity": "host:n1"})
    s = state_of(RESOURCES + [block])
    inp = cluster.calc_input(s, "n1", learned)
    assert ipaddress.ip_network("10.251.0.0/16") in inp.pools
    assert ipaddress.ip_network("10.251.0.0/26") in cluster.export_prefixes(s, "n1")
    from felix.calc import desired_routes, dst_key
    routes = desired_routes(inp)
    assert routes[dst_key("10.251.0.64/26")].gateway == ipaddress.ip_address("10.99.0.2")
    assert routes[dst_key("10.251.0.0/26")].type == "blackhole"


def test_mesh_max_restart_time_reaches_the_peers():
    s = state_of(RESOURCES + [res("BGPConfiguration", "default", {"nodeMeshMaxRestartTime": "1m30s"})])
    g = cluster.bgp_global(s)
    assert g.mesh_max_restart_time == 90.0
    from bgp.peers import mesh_peers
    me = next(i for i in cluster.node_infos(s) if i.name == "n1")
    assert {p.max_restart_time for p in mesh_peers(me, cluster.node_infos(s), g)} == {90.0}


def test_deletion_removes_from_view():
    s = state_of(RESOURCES)
    s.apply([Update("IPAMBlock", None, "10-244-1-0-26", None)])
    assert ipaddress.ip_network("10.244.1.0/26") not in cluster.local_blocks(s, "n1")


@given(st.randoms(use_true_random=False))
def test_calc_input_independent_of_event_order(rnd: random.Random):
    learned = [LearnedRoute(ipaddress.ip_network("10.244.2.0/26"), ipaddress.ip_address("10.99.0.2"),
                            ipaddress.ip_address("10.99.0.2"))]
    expected = cluster.calc_input(state_of(RESOURCES), "n1", learned)
    shuffled = list(RESOURCES)
    rnd.shuffle(shuffled)
    # replaying some items twice (a re-list after compaction) must not change the result either
    replay = shuffled + shuffled[: rnd.randrange(len(shuffled))]
    assert cluster.calc_input(state_of(replay), "n1", learned) == expected


def test_an_update_that_changes_only_the_revision_is_no_change():
    """On Kubernetes every kubelet heartbeat rewrites its Node: the agent must not reconcile."""
    node = res("Node", "n1", {"bgp": {"ipv4Address": "10.99.0.1/24"}}).with_revision("5")
    s = cluster.ClusterState()
    assert s.apply([upd(node), InSync(5)])
    assert not s.apply([upd(node.with_revision("6"))])
    assert s.resources[("Node", None, "n1")].metadata.resource_version == "6"  # kept current
    moved = res("Node", "n1", {"bgp": {"ipv4Address": "10.99.0.9/24"}}).with_revision("7")
    assert s.apply([upd(moved)])
    assert s.apply([Update("Node", None, "n1", None)])
    assert not s.apply([Update("Node", None, "n1", None)])  # deleting what is gone: nothing


def test_take_changes_names_the_changed_resources_by_kind_once():
    s = state_of(RESOURCES)
    first = s.take_changes()
    assert first[cluster.IN_SYNC] == set() and len(first["WorkloadEndpoint"]) == 2
    assert s.take_changes() == {}
    node = res("Node", "n1", {"bgp": {"ipv4Address": "10.99.0.1/24"}})
    assert not s.apply([upd(node.with_revision("9"))])  # only the revision: no change recorded
    assert s.take_changes() == {}
    s.apply([Update("IPAMBlock", None, "10-244-1-0-26", None), Update("IPAMBlock", None, "x", None)])
    assert s.take_changes() == {"IPAMBlock": {("IPAMBlock", None, "10-244-1-0-26")}}
    assert sorted(name for _, _, name in s.blocks) == ["10-244-2-0-26", "10-250-0-0-26"]


def wep(name, node, ip, pod="p", iface="cali0123456789a"):
    return res("WorkloadEndpoint", name, {"node": node, "pod": pod, "interfaceName": iface,
                                          "ipNetworks": [ip]}, namespace="default")


endpoints = st.builds(
    wep, name=st.sampled_from(["a", "b", "c"]), node=st.sampled_from(["n1", "n2"]),
    ip=st.sampled_from(["10.244.1.5/32", "10.244.1.6/32", "fd00::1/128"]),
    pod=st.sampled_from(["p", "q"]))


@given(st.lists(st.lists(st.one_of(endpoints, st.sampled_from(["a", "b", "c"])), max_size=4),
                max_size=8))
def test_local_workloads_index_tracks_local_workloads_through_any_batches(batches):
    """Endpoints (a name alone: its deletion) in batches: the index's deltas, applied to a set,
    always give ``local_workloads``; two endpoints with one identical workload count twice."""
    s, index, seen = cluster.ClusterState(), cluster.LocalWorkloads("n1"), set()
    for batch in batches:
        s.apply([upd(item) if not isinstance(item, str)
                 else Update("WorkloadEndpoint", "default", item, None) for item in batch])
        gone, appeared = index.update(s, s.take_changes().get("WorkloadEndpoint", ()))
        assert not gone & appeared and gone <= seen and not appeared & seen
        seen = (seen - gone) | appeared
        assert seen == set(index) == cluster.local_workloads(s, "n1")
    assert cluster.LocalWorkloads("n1").reset(s) == cluster.local_workloads(s, "n1")


def test_a_block_whose_allocations_alone_changed_is_no_change():
    """Every pod ADD and DEL rewrites its block: at 100k blocks a rebuild per pod would be ruinous."""
    spec = {"cidr": "10.244.1.0/26", "affinity": "host:n1"}
    s = state_of(RESOURCES)
    s.take_changes()
    used = res("IPAMBlock", "10-244-1-0-26", {**spec, "allocations": [0] + [None] * 63,
                                              "unallocated": list(range(1, 64))})
    assert not s.apply([upd(used)]) and s.take_changes() == {}
    key = ("IPAMBlock", None, "10-244-1-0-26")
    assert s.blocks[key] == cluster.BlockFacts.of(used) and key not in s.resources  # facts only
    moved = res("IPAMBlock", "10-244-1-0-26", {**spec, "affinity": "host:n2"})
    assert s.apply([upd(moved)]) and list(s.take_changes()) == ["IPAMBlock"]


def test_bgp_peers_and_reflector_fields_reach_the_peer_computation():
    """Issue 9: the agent watches BGPPeers; a Node's labels and routeReflectorClusterID feed
    bgp.peers; a BGPPeer the agent cannot use is left out, the others kept."""
    from crds import load
    from datastore.syncer import InSync, Update
    from felix import cluster

    def res(doc):
        r = load({"apiVersion": "projectcalico.org/v3", **doc})
        return Update(r.KIND, None, r.name, r)

    state = cluster.ClusterState()
    state.apply([
        res({"kind": "Node", "metadata": {"name": "rr1", "labels": {"route-reflector": "true"}},
             "spec": {"bgp": {"ipv4Address": "10.0.0.9/24", "routeReflectorClusterID": "244.0.0.1"}}}),
        res({"kind": "BGPPeer", "metadata": {"name": "to-rr"},
             "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}}),
        res({"kind": "BGPPeer", "metadata": {"name": "v6"}, "spec": {"peerIP": "fd00::1", "asNumber": 65001}}),
        InSync(1),
    ])
    assert "BGPPeer" in cluster.WATCHED_KINDS
    [info] = cluster.node_infos(state)
    assert info.rr_cluster_id == "244.0.0.1" and ("route-reflector", "true") in info.labels
    assert [p.name for p in cluster.explicit_peers(state)] == ["to-rr"]


def block_with(allocated: dict[int, str | None], affinity="host:n1", cidr="10.244.1.0/26"):
    """A /26 block with ``allocated`` ordinals, each recording the given node (None: no attribute)."""
    allocations, attributes = [None] * 64, []
    for ordinal, node in sorted(allocated.items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h{ordinal}", "secondary": {"node": node} if node else {}})
    spec = {"cidr": cidr, "affinity": affinity, "allocations": allocations,
            "unallocated": [o for o in range(64) if o not in allocated], "attributes": attributes}
    return res("IPAMBlock", cidr.replace(".", "-").replace("/", "-"), spec)


def test_a_borrow_and_its_release_are_changes_plain_pod_churn_is_not():
    """Issue 8 item 5: the owner routes a borrowed address to its holder, so an allocation whose
    node differs from the block's affinity is used; the owner's own pods coming and going are not."""
    s = state_of(RESOURCES)
    s.take_changes()
    assert not s.apply([upd(block_with({0: "n1", 1: "n1"}))]) and s.take_changes() == {}
    assert not s.apply([upd(block_with({0: "n1", 1: None, 2: "n1"}))])  # no attribute: the owner's
    assert s.apply([upd(block_with({0: "n1", 5: "n2"}))])  # borrowed by n2
    assert list(s.take_changes()) == ["IPAMBlock"]
    assert s.borrowed() == {Borrowed(ipaddress.ip_address("10.244.1.5"), "n2")}
    assert not s.apply([upd(block_with({5: "n2", 7: "n1"}))])  # the owner's churn, still no change
    assert s.apply([upd(block_with({5: "n2", 6: "n3"}))])  # a second borrow
    assert s.apply([upd(block_with({6: "n3"}))]) and s.borrowed() == {  # one released
        Borrowed(ipaddress.ip_address("10.244.1.6"), "n3")}
    inp = cluster.calc_input(s, "n1", [])
    assert inp.borrowed == s.borrowed()
    assert s.apply([Update("IPAMBlock", None, "10-244-1-0-26", None)]) and s.borrowed() == set()


def test_borrowed_addresses_of_deleted_or_unaffine_blocks():
    s = state_of(RESOURCES + [block_with({3: "n2"}, affinity=None)])
    assert s.borrowed() == {Borrowed(ipaddress.ip_address("10.244.1.3"), "n2")}
    gone = block_with({3: "n2"})
    gone = gone.model_copy(update={"spec": gone.spec.model_copy(update={"deleted": True})})
    s.apply([upd(gone)])
    assert s.borrowed() == set()


def test_export_prefixes_add_the_borrowed_slash32s_of_local_workloads():
    """Rule 1: a local workload outside our blocks (borrowed) is advertised as a /32; one inside
    them is not (the block covers it), nor one outside every pool or in a disableBGPExport pool."""
    extra = [wep("borrowed", "n1", "10.244.2.9/32", pod="b1", iface="cali0000000000b"),
             wep("outside", "n1", "10.9.0.1/32", pod="o", iface="cali0000000000c"),
             wep("hidden", "n1", "10.250.7.1/32", pod="h", iface="cali0000000000d")]
    s = state_of(RESOURCES + extra)
    net = ipaddress.ip_network
    assert cluster.export_prefixes(s, "n1") == {net("10.244.1.0/26"), net("10.244.2.9/32")}
    assert cluster.export_prefixes(s, "n2") == {net("10.244.2.0/26")}
    kept = cluster.LocalWorkloads("n1")
    kept.reset(s)
    assert cluster.export_prefixes(s, "n1", kept, own=cluster.local_blocks(s, "n1")) == \
        cluster.export_prefixes(s, "n1")


def test_a_block_is_kept_as_its_facts_and_a_syncer_may_hand_them_over_reduced():
    """Issue 8: only cidr, affinity, deleted and borrowed addresses of an IPAMBlock are kept (the
    models were most of the agent's 610 MB at 100k blocks). Handing ClusterState the model or its
    ``reduce_resource`` gives the same state; other kinds pass through ``reduce_resource`` as they are."""
    block = block_with({0: "n1", 5: "n2"})
    facts = cluster.reduce_resource(block)
    assert facts == cluster.BlockFacts(cidr=ipaddress.ip_network("10.244.1.0/26"), node="n1",
                                       borrowed=frozenset({Borrowed(ipaddress.ip_address("10.244.1.5"), "n2")}))
    node = RESOURCES[3]
    assert cluster.reduce_resource(node) is node
    full, reduced = state_of(RESOURCES), state_of(RESOURCES)
    full.apply([upd(block)])
    reduced.apply([Update(block.KIND, None, block.name, facts)])
    assert full.blocks == reduced.blocks and full.borrowed() == reduced.borrowed()
    assert cluster.calc_input(full, "n1", ()) == cluster.calc_input(reduced, "n1", ())
    assert cluster.local_blocks(full, "n1") == {ipaddress.ip_network(n) for n in
                                                 ("10.244.1.0/26", "10.250.0.0/26")}
    assert not any(k[0] == "IPAMBlock" for k in full.resources)


def tunnel_block(handles: dict[int, str], cidr="10.244.1.0/26"):
    allocations, attributes = [None] * 64, []
    for ordinal, handle in sorted(handles.items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": handle, "secondary": {"node": "n1"}})
    spec = {"cidr": cidr, "affinity": "host:n1", "allocations": allocations,
            "unallocated": [o for o in range(64) if o not in handles], "attributes": attributes}
    return res("IPAMBlock", cidr.replace(".", "-").replace("/", "-"), spec)


def test_tunnel_handles_are_known_from_the_state_without_a_change_or_asking_ipam():
    """Regression (issue 8): with no tunnel pool, the agent's first reconcile released the VXLAN
    and IPIP tunnel handles through IPAM, which reads every block: at 100k blocks ~30 s of its
    40 s start-up. The state knows which blocks hold a tunnel handle; one that comes or goes
    changes no route, so it is no change (no rebuild), but is known at once."""
    s = state_of(RESOURCES)
    s.take_changes()
    assert not cluster.holds_handle(s, "vxlan-tunnel-addr-n1")
    assert not s.apply([upd(tunnel_block({0: "vxlan-tunnel-addr-n1", 1: "k8s-pod-network.abc"}))])
    assert cluster.holds_handle(s, "vxlan-tunnel-addr-n1")
    assert not cluster.holds_handle(s, "ipip-tunnel-addr-n1")
    assert not s.apply([upd(tunnel_block({1: "k8s-pod-network.abc"}))]) and s.take_changes() == {}
    assert not cluster.holds_handle(s, "vxlan-tunnel-addr-n1")
    s.apply([upd(tunnel_block({2: "ipip-tunnel-addr-n1"}))])
    assert cluster.holds_handle(s, "ipip-tunnel-addr-n1")
    s.apply([Update("IPAMBlock", None, "10-244-1-0-26", None)])
    assert not cluster.holds_handle(s, "ipip-tunnel-addr-n1")


def felixconfig(spec: dict, name="default"):
    return res("FelixConfiguration", name, spec)


def test_unhonoured_felix_fields_are_named_as_operators_write_them():
    """Issue 8: a FelixConfiguration field the agent does not act on is named (camelCase), so an
    operator knows it has no effect; honoured ones and defaults are not, also after a round trip
    through the datastore (which stores every default)."""
    every = felixconfig({
        "routeRefreshInterval": "30s", "ipipMTU": 1400, "vxlanMTU": 1400, "vxlanVNI": 4097,
        "vxlanPort": 4790, "routeTableRange": {"min": 1, "max": 100}, "logSeverityScreen": "Debug",
        "interfacePrefix": "veth", "ipipEnabled": True, "vxlanEnabled": False,
        "deviceRouteProtocol": 3, "bpfEnabled": False, "iptablesBackend": "NFT"})
    unhonoured = ["bpfEnabled", "deviceRouteProtocol", "interfacePrefix", "ipipEnabled",
                  "iptablesBackend", "logSeverityScreen", "routeTableRange", "vxlanEnabled"]
    assert cluster.unhonoured_felix_fields(every.spec) == unhonoured
    assert cluster.unhonoured_felix_fields(load(every.to_dict()).spec) == unhonoured
    honoured = felixconfig({"routeRefreshInterval": "30s", "ipipMTU": 1400, "vxlanVNI": 4097})
    assert cluster.unhonoured_felix_fields(honoured.spec) == []
    assert cluster.unhonoured_felix_fields(load(felixconfig({}).to_dict()).spec) == []
    # every field of the model is either honoured or reported: a new field needs a decision
    fields = type(every.spec).model_fields
    assert {fields[n].alias for n in fields if n not in cluster.HONOURED_FELIX_FIELDS} == set(unhonoured)


def test_routes_of_interleaved_updates_get_their_own_path_and_share_its_via():
    """A peer withdraws in another order than it announced: the speaker's changes interleave the
    routes of many UPDATEs. Each route keeps its own next hop and peer, and the routes of one
    UPDATE share one via (the calculation holds only the via per prefix: one per route was 7 MB
    at 100k routes)."""
    from bgp.rib import Rib

    a, b = ipaddress.ip_address("10.99.0.2"), ipaddress.ip_address("10.99.0.3")
    rib = Rib()
    rib.set_import_filter(frozenset({ipaddress.ip_network("10.244.0.0/16")}), frozenset())
    first = [ipaddress.ip_network(f"10.244.{i}.0/26") for i in range(0, 8, 2)]
    second = [ipaddress.ip_network(f"10.244.{i}.0/26") for i in range(1, 8, 2)]
    rib.announce_many(a, a, first)
    rib.announce_many(a, b, second)  # the same peer, another next hop: another UPDATE
    rib.take_changes()
    rib.withdraw_many(a, sorted(first + second))  # interleaved: 0 1 2 3 ...
    removed, _ = rib.take_changes()
    routes = cluster.remote_route_list(removed)
    assert [(r.prefix, r.gateway, r.source) for r in routes] == [
        (p, a if p in first else b, "10.99.0.2") for p in sorted(first + second)]
    assert len({id(r.via) for r in routes}) == 2


def test_learned_pairs_are_the_calculations_input_one_via_per_path():
    """The agent hands the calculation ``(key, via)`` pairs made from the RIB's columns: the same
    key and via as a ``RemoteRoute`` of the route, the via shared by the routes of one UPDATE."""
    from bgp.rib import Rib

    a, b = ipaddress.ip_address("10.99.0.2"), ipaddress.ip_address("10.99.0.3")
    rib, twin = Rib(), Rib()
    for r in rib, twin:
        r.set_import_filter(frozenset({ipaddress.ip_network("10.244.0.0/16")}), frozenset())
    first = [ipaddress.ip_network(f"10.244.{i}.0/26") for i in range(0, 8, 2)]
    second = [ipaddress.ip_network(f"10.244.{i}.0/26") for i in range(1, 8, 2)]
    for r in rib, twin:
        r.take_changes()
        r.announce_many(a, a, first)
        r.announce_many(b, b, second)
    removed, added = cluster.learned_pairs(rib.take_change_columns())
    routes = cluster.remote_route_list(twin.take_changes()[1])
    assert removed == [] and added == [(r.key, r.via) for r in routes] and len(added) == 8
    assert all(type(pair) is tuple for pair in added)
    assert len({id(via) for _, via in added}) == 2
    for r in rib, twin:
        r.withdraw_many(a, sorted(first))
        r.announce_many(b, a, second[:1])  # the same prefix, another next hop
    removed, added = cluster.learned_pairs(rib.take_change_columns())
    routes = [cluster.remote_route_list(side) for side in twin.take_changes()]
    assert (removed, added) == tuple([(r.key, r.via) for r in side] for side in routes)
    assert added == [(protocol_key(second[0]), (a, "10.99.0.3"))]


def protocol_key(prefix):
    from bgp.protocol import prefix_key

    return prefix_key(prefix)


def _export_by_subnet_of(state, node, workloads, own):
    """``export_prefixes`` as the rules read: ``in_own_block`` and ``subnet_of`` per prefix."""
    from felix.calc import in_own_block
    pools = [p.spec.network for p in cluster.ipv4_pools(state)]
    hidden = [p.spec.network for p in cluster.ipv4_pools(state) if p.spec.disable_bgp_export]
    borrowed = {ipaddress.IPv4Network(w.ip) for w in workloads if w.node == node}
    borrowed = {n for n in borrowed if not in_own_block(n, own) and any(n.subnet_of(p) for p in pools)}
    return frozenset(b for b in set(own) | borrowed if not any(b.subnet_of(h) for h in hidden))


_ADDRESSES = st.sampled_from(["10.244.0.0", "10.244.1.0", "10.250.0.0", "10.251.3.0", "10.9.0.0"]).flatmap(
    lambda base: st.integers(0, 255).map(lambda i: ipaddress.ip_address(base) + i))


@given(blocks=st.sets(st.tuples(_ADDRESSES, st.sampled_from([24, 26, 30, 32])), max_size=12),
       pods=st.lists(st.tuples(_ADDRESSES, st.sampled_from(["n1", "n2"])), max_size=40))
def test_export_prefixes_are_what_subnet_of_says_for_any_blocks_and_workloads(blocks, pods):
    """The integer membership test ``export_prefixes`` uses gives what ``in_own_block`` and
    ``subnet_of`` give, with blocks of several lengths, nested ones, and workloads on two nodes
    inside and outside blocks and pools (the disableBGPExport one included)."""
    from felix.calc import Workload
    s = state_of(RESOURCES)
    own = frozenset(ipaddress.ip_network(f"{a}/{n}", strict=False) for a, n in blocks)
    workloads = [Workload(ip=a, iface=f"cali{i:011x}", node=n, name=f"ns/p{i}") for i, (a, n) in enumerate(pods)]
    assert cluster.export_prefixes(s, "n1", workloads, own=own) == _export_by_subnet_of(s, "n1", workloads, own)
