"""The kinds beyond pools and nodes: BGPPeer, BGPFilter, IPAMHandle, IPReservation, IPAMConfig,
FelixConfiguration. Calico's YAML loads; bad input names the field and the reason."""
import pytest

from crds import (BGPFilter, BGPPeer, FelixConfiguration, IPAMConfig, IPAMHandle, InvalidResource,
                  IPReservation, kind_class, load)
from crds.bgp import parse_peer_ip
from datastore.base import key_for


def doc(kind, spec=None, name="x"):
    out = {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}}
    return out if spec is None else {**out, "spec": spec}


def peer(**spec):
    return doc("BGPPeer", spec)


def refused(data, field, words):
    with pytest.raises(InvalidResource) as info:
        load(data)
    assert info.value.field == field, str(info.value)
    assert words in info.value.reason, str(info.value)


@pytest.mark.parametrize("kind, cls, plural", [
    ("BGPPeer", BGPPeer, "bgppeers"), ("BGPFilter", BGPFilter, "bgpfilters"),
    ("IPAMHandle", IPAMHandle, "ipamhandles"), ("IPReservation", IPReservation, "ipreservations"),
    ("IPAMConfig", IPAMConfig, "ipamconfigs"), ("FelixConfiguration", FelixConfiguration,
                                                "felixconfigurations"),
])
def test_kinds_resolve_like_calicoctl_and_get_calicos_etcd_key(kind, cls, plural):
    assert kind_class(kind) is cls and kind_class(kind.lower()) is cls and kind_class(plural) is cls
    assert key_for(kind, "default") == f"/calico/resources/v3/projectcalico.org/{plural}/default"


def test_route_reflector_peer_from_the_article_is_global_and_round_trips():
    p = load(peer(nodeSelector="all()", peerSelector="route-reflector == 'true'"))
    assert p.spec.as_number is None and not p.spec.is_global
    assert p.spec.max_restart_time == "120s" and p.spec.source_address == "UseNodeIP"
    assert p.spec.effective_next_hop_mode == "Auto"
    assert load(p.to_dict()) == p


def test_explicit_peer_with_dotted_asn_port_and_password():
    p = load(peer(peerIP="[fd00::1]:1179", asNumber="1.10", node="n1", nextHopMode="Self",
                  password={"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}},
                  ttlSecurity=1, filters=["export-only-pods"], reversePeering="Manual"))
    assert p.spec.as_number == 65546 and p.spec.password.secret_key_ref.key == "rr-password"
    assert load(p.to_dict()) == p
    assert load(peer(peerIP="10.0.0.1", asNumber=65001, keepOriginalNextHop=True)) \
        .spec.effective_next_hop_mode == "Keep"


@pytest.mark.parametrize("text, expected", [
    ("192.168.40.181", ("192.168.40.181", None)), ("10.0.0.1:1179", ("10.0.0.1", 1179)),
    ("fd00::1", ("fd00::1", None)), ("[fd00::1]:179", ("fd00::1", 179)),
])
def test_peer_ip_forms(text, expected):
    assert parse_peer_ip(text) == expected


@pytest.mark.parametrize("spec, field, words", [
    ({"peerIP": "10.0.0.1", "peerSelector": "all()"}, "spec.peerIP", "empty when peerSelector"),
    ({"node": "n1", "nodeSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1},
     "spec.node", "empty when nodeSelector"),
    ({}, "spec.peerIP", "required"),
    ({"peerSelector": "all()", "asNumber": 64512}, "spec.asNumber", "selected nodes"),
    ({"peerIP": "10.0.0.1"}, "spec.asNumber", "required with peerIP"),
    ({"peerIP": "10.0.0.1", "asNumber": 0}, "spec.asNumber", "between 1 and 4294967295"),
    ({"peerIP": "10.0.0.1", "asNumber": 2**32}, "spec.asNumber", "between 1 and 4294967295"),
    ({"peerIP": "10.0.0.1", "asNumber": "65536.1"}, "spec.asNumber", "0-65535"),
    ({"peerIP": "10.0.0.1", "asNumber": "sixty"}, "spec.asNumber", "not an AS number"),
    ({"peerIP": "10.0.0.300", "asNumber": 1}, "spec.peerIP", "not an IP address"),
    ({"peerIP": "10.0.0.1:0", "asNumber": 1}, "spec.peerIP", "port"),
    ({"peerIP": "[10.0.0.1]:179", "asNumber": 1}, "spec.peerIP", "IPv6"),
    ({"peerIP": "fd00::1:179]", "asNumber": 1}, "spec.peerIP", "not an IP address"),
    ({"peerSelector": "route-reflector = 'true'"}, "spec.peerSelector", "not a valid selector"),
    ({"peerSelector": "all()", "nodeSelector": "has(x"}, "spec.nodeSelector", "')'"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "nextHopMode": "Sometimes"}, "spec.nextHopMode", "Auto"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": True, "nextHopMode": "Self"},
     "spec.nextHopMode", "contradicts"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "sourceAddress": "Any"}, "spec.sourceAddress", "UseNodeIP"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "maxRestartTime": "2 minutes"}, "spec.maxRestartTime",
     "duration"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "ttlSecurity": 256}, "spec.ttlSecurity", "255"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "filters": ["Bad_Name"]}, "spec.filters", "resource name"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "reversePeering": "Both"}, "spec.reversePeering", "Manual"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"secretKeyRef": {"name": "s"}}},
     "spec.password.secretKeyRef.key", "required"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "peerIp": "10.0.0.2"}, "spec.peerIp", "not permitted"),
])
def test_bad_peers_are_refused_naming_the_field(spec, field, words):
    refused(peer(**spec), field, words)


def test_bgp_filter_rules_per_family():
    f = load(doc("BGPFilter", {
        "exportV4": [{"action": "Accept", "matchOperator": "In", "cidr": "10.244.0.0/16"},
                     {"action": "Reject"}],
        "importV6": [{"action": "Reject", "matchOperator": "NotEqual", "cidr": "fd00::/64"}]}))
    assert f.spec.export_v4[1].cidr is None and f.spec.import_v6[0].match_operator == "NotEqual"
    assert load(f.to_dict()) == f
    assert load(doc("BGPFilter")).spec.export_v4 == []


@pytest.mark.parametrize("rule_list, rule, field, words", [
    ("exportV6", {"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8"}, "cidr", "IPv6"),
    ("importV4", {"action": "Accept", "matchOperator": "In", "cidr": "fd00::/64"}, "cidr", "IPv4"),
    ("importV4", {"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.1/8"}, "cidr", "host bits"),
    ("exportV4", {"action": "Allow"}, "action", "Accept"),
    ("exportV4", {"action": "Accept", "matchOperator": "Like", "cidr": "10.0.0.0/8"},
     "matchOperator", "Equal"),
    ("exportV4", {"action": "Accept", "cidr": "10.0.0.0/8"}, "matchOperator", "go together"),
    ("exportV4", {"action": "Accept", "matchOperator": "In"}, "cidr", "go together"),
])
def test_bad_filter_rules_name_list_index_and_field(rule_list, rule, field, words):
    refused(doc("BGPFilter", {rule_list: [rule]}), f"spec.{rule_list}.0.{field}", words)


def test_ipam_handle_reservation_and_config():
    h = load(doc("IPAMHandle", {"handleID": "k8s-pod-network.abc", "block": {"10.244.1.0/26": 2}}))
    assert h.spec.block == {"10.244.1.0/26": 2} and not h.spec.deleted
    assert load(h.to_dict()) == h
    r = load(doc("IPReservation", {"reservedCIDRs": ["10.244.0.0/30", "10.244.9.9", "fd00::/120"]}))
    assert r.spec.reserved_cidrs == ["10.244.0.0/30", "10.244.9.9", "fd00::/120"]
    c = load(doc("IPAMConfig", name="default"))
    assert (c.spec.strict_affinity, c.spec.auto_allocate_blocks, c.spec.max_blocks_per_host) \
        == (False, True, 0)


@pytest.mark.parametrize("data, field, words", [
    (doc("IPAMHandle", {}), "spec.handleID", "required"),
    (doc("IPAMHandle", {"handleID": "h", "block": {"10.244.1.1/26": 1}}), "spec.block", "host bits"),
    (doc("IPAMHandle", {"handleID": "h", "block": {"10.244.1.0/26": -1}}), "spec.block", "0 or more"),
    (doc("IPReservation", {"reservedCIDRs": ["10.0.0.0/33"]}), "spec.reservedCIDRs", "CIDR"),
    (doc("IPAMConfig", name="cluster"), "metadata.name", "'default'"),
    (doc("IPAMConfig", {"maxBlocksPerHost": -1}, name="default"), "spec.maxBlocksPerHost", "0"),
    (doc("IPAMConfig", {"strictAffinity": "maybe"}, name="default"), "spec.strictAffinity", "bool"),
])
def test_bad_ipam_objects_name_the_field(data, field, words):
    refused(data, field, words)


def test_felix_configuration_defaults_and_honoured_fields():
    f = load(doc("FelixConfiguration", name="default"))
    assert f.spec.route_refresh_interval == "90s" and f.spec.route_refresh_seconds == 90.0
    assert f.spec.log_severity_screen == "Info" and f.spec.route_table_range is None
    g = load(doc("FelixConfiguration", {"routeRefreshInterval": "1m30s", "logSeverityScreen": "Debug",
                                        "routeTableRange": {"min": 1, "max": 250},
                                        "vxlanVNI": 4096, "vxlanPort": 4789, "ipipEnabled": True,
                                        "bpfEnabled": False, "iptablesBackend": "NFT"},
                 name="node.zcsnode1"))
    assert g.spec.route_refresh_seconds == 90.0 and g.spec.route_table_range.max == 250
    assert load(g.to_dict()) == g


@pytest.mark.parametrize("spec, field, words", [
    ({"routeRefreshInterval": "ninety"}, "spec.routeRefreshInterval", "duration"),
    ({"routeTableRange": {"min": 0, "max": 10}}, "spec.routeTableRange.min", "greater than or equal"),
    ({"routeTableRange": {"min": 1, "max": 251}}, "spec.routeTableRange.max", "less than or equal"),
    ({"routeTableRange": {"min": 20, "max": 10}}, "spec.routeTableRange.max", "at least min"),
    ({"logSeverityScreen": "Verbose"}, "spec.logSeverityScreen", "Debug"),
    ({"vxlanVNI": 0}, "spec.vxlanVNI", "greater than or equal"),
    ({"routeRefreshIntervall": "90s"}, "spec.routeRefreshIntervall", "not permitted"),
])
def test_bad_felix_configuration_names_the_field(spec, field, words):
    refused(doc("FelixConfiguration", spec, name="default"), field, words)


@pytest.mark.parametrize("name, kind", [
    ("bgpconfig", "BGPConfiguration"), ("bgpconfigs", "BGPConfiguration"), ("ipPool", "IPPool"),
    ("pools", "IPPool"), ("ipp", "IPPool"), ("no", "Node"), ("wep", "WorkloadEndpoint"),
    ("bp", "BGPPeer"), ("bgpps", "BGPPeer"), ("felixconfig", "FelixConfiguration"),
    ("reservations", "IPReservation"), ("BGPFilters", "BGPFilter"), ("ipamconfig", "IPAMConfig"),
])
def test_calicoctl_names_for_kinds(name, kind):
    assert kind_class(name).KIND == kind


def test_a_short_name_is_not_a_kind_in_a_document():
    refused({**peer(peerIP="10.0.0.1", asNumber=1), "kind": "bp"}, "kind", "did you mean BGPPeer?")
    refused({**peer(peerIP="10.0.0.1", asNumber=1), "kind": "Peer"}, "kind", "known: IPPool")


def bgpconfig(**spec):
    return doc("BGPConfiguration", spec, name="default")


def test_bgp_configuration_communities_mesh_password_and_advertisements():
    c = load(bgpconfig(communities=[{"name": "rack", "value": "64512:100"},
                                    {"name": "big", "value": "4200000000:1:2"}],
                       prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["rack", "65000:7"]},
                                             {"cidr": "10.244.9.9", "communities": ["big"]}],
                       nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "mesh"}}))
    assert c.spec.node_mesh_password.secret_key_ref.name == "bgp"
    assert load(c.to_dict()) == c


@pytest.mark.parametrize("spec, field, words", [
    ({"communities": [{"name": "a", "value": "64512:100"}]}, "spec.communities", "not used"),
    ({"communities": [{"name": "a", "value": "65536:1"}]}, "spec.communities.0.value", "0-65535"),
    ({"communities": [{"name": "a", "value": "4294967296:1:1"}]}, "spec.communities.0.value",
     "0-4294967295"),
    ({"communities": [{"name": "a", "value": "64512"}]}, "spec.communities.0.value", "aa:nn"),
    ({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nope"]}]},
     "spec.prefixAdvertisements.0.communities.0", "neither a community value"),
    ({"prefixAdvertisements": [{"cidr": "10.0.0.0/33"}]}, "spec.prefixAdvertisements.0.cidr",
     "not a CIDR"),
    ({"nodeMeshPassword": {"secretKeyRef": {"key": "k"}}}, "spec.nodeMeshPassword.secretKeyRef.name",
     "required"),
])
def test_bad_bgp_configuration_names_the_field(spec, field, words):
    refused(bgpconfig(**spec), field, words)


def test_peer_scope_and_remote_selection():
    rr = load(peer(nodeSelector="all()", peerSelector="route-reflector == 'true'")).spec
    assert rr.applies_to("zcsmaster1", {}) and rr.selects_peer({"route-reflector": "true"})
    assert not rr.selects_peer({"route-reflector": "false"})
    pinned = load(peer(node="zcsnode1", peerIP="10.0.0.1", asNumber=1)).spec
    assert pinned.applies_to("zcsnode1", {}) and not pinned.applies_to("zcsnode2", {})
    assert not pinned.selects_peer({"route-reflector": "true"})  # an explicit peerIP selects no node
    rack = load(peer(nodeSelector="rack in {'r1'}", peerIP="10.0.0.1", asNumber=1)).spec
    assert rack.applies_to("n", {"rack": "r1"}) and not rack.applies_to("n", {"rack": "r2"})
    assert load(peer(peerIP="10.0.0.1", asNumber=1)).spec.applies_to("any", {})  # global


def test_pool_node_selector_decides_which_nodes_may_use_it():
    pool = load(doc("IPPool", {"cidr": "10.244.0.0/16", "nodeSelector": "!has(edge)"})).spec
    assert pool.selects_node({"zone": "a"}) and not pool.selects_node({"edge": ""})
    assert load(doc("IPPool", {"cidr": "10.245.0.0/16"})).spec.selects_node({"edge": ""})  # all()


def test_allowed_local_as_numbers_is_any_count():
    assert load(peer(peerIP="10.0.0.1", asNumber=1, numAllowedLocalASNumbers=32)) \
        .spec.num_allowed_local_as_numbers == 32
    refused(peer(peerIP="10.0.0.1", asNumber=1, numAllowedLocalASNumbers=-1),
            "spec.numAllowedLocalASNumbers", "greater than or equal to 0")


def test_bgp_filter_rules_take_calicos_newer_match_fields():
    f = load(doc("BGPFilter", {"importV4": [
        {"action": "Reject", "matchOperator": "In", "cidr": "10.0.0.0/8",
         "prefixLength": {"min": 24, "max": 32}, "source": "RemotePeers", "interface": "eth*"}]}))
    rule = f.spec.import_v4[0]
    assert (rule.prefix_length.min, rule.prefix_length.max, rule.source) == (24, 32, "RemotePeers")
    assert load(doc("BGPFilter", {"exportV6": [{"action": "Accept", "prefixLength": {"max": 128}}]}))


@pytest.mark.parametrize("rule_list, bounds, field, words", [
    ("importV4", {"max": 33}, "prefixLength.max", "at most 32"),
    ("importV6", {"min": 129}, "prefixLength.min", "at most 128"),
    ("exportV4", {"min": 28, "max": 24}, "prefixLength.max", "at least min (28)"),
    ("exportV4", {"min": -1}, "prefixLength.min", "greater than or equal to 0"),
])
def test_bad_prefix_length_bounds(rule_list, bounds, field, words):
    refused(doc("BGPFilter", {rule_list: [{"action": "Accept", "prefixLength": bounds}]}),
            f"spec.{rule_list}.0.{field}", words)


def test_felix_mtus_may_be_zero_meaning_detect():
    f = load(doc("FelixConfiguration", {"ipipMTU": 0, "vxlanMTU": 1450}, name="default"))
    assert (f.spec.ipip_mtu, f.spec.vxlan_mtu) == (0, 1450)


@pytest.mark.parametrize("kind", ["BGPConfiguration", "FelixConfiguration"])
@pytest.mark.parametrize("name", ["global", "defaults", "node.", "n1"])
def test_configurations_have_the_names_calico_reads(kind, name):
    with pytest.raises(InvalidResource) as info:
        load(doc(kind, name=name))
    assert info.value.field == "metadata.name"
    load(doc(kind, name="node.zcsnode1")) and load(doc(kind, name="default"))


def test_a_node_bgp_configuration_overrides_only_what_calico_lets_it():
    node = load(doc("BGPConfiguration", {"listenPort": 1179, "logSeverityScreen": "Debug",
                                         "prefixAdvertisements": [{"cidr": "10.244.0.0/16"}]},
                    name="node.zcsnode1"))
    assert load(node.to_dict()) == node  # every field written back is still acceptable
    for spec, field in (({"asNumber": 65000}, "spec.asNumber"),
                        ({"nodeToNodeMeshEnabled": False}, "spec.nodeToNodeMeshEnabled"),
                        ({"bindMode": "NodeIP"}, "spec.bindMode"),
                        ({"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}, "spec.serviceClusterIPs")):
        refused(doc("BGPConfiguration", spec, name="node.zcsnode1"), field, "is global")
