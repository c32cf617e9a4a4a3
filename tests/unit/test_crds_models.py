"""Resource models: Calico's YAML loads unchanged; bad input names the field and the reason."""
import pytest
import yaml

from crds import BGPConfiguration, InvalidResource, IPPool, Node, kind_class, load

# Verbatim from the source article (calicoctl get ipPool -o yaml), one item of the list.
ARTICLE_IPPOOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: "2022-12-20T07:41:39Z"
  name: default-ipv4-ippool
  resourceVersion: "213763"
  uid: 6f666892-4a12-4793-982f-f5d75f153149
spec:
  blockSize: 26
  cidr: 10.244.0.0/16
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
"""


def pool(**spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.244.0.0/16", **spec}}


def test_article_ippool_loads_unchanged_and_round_trips():
    doc = yaml.safe_load(ARTICLE_IPPOOL)
    p = load(doc)
    assert isinstance(p, IPPool)
    assert p.spec.cidr == "10.244.0.0/16" and p.spec.block_size == 26 and p.spec.nat_outgoing
    assert p.metadata.resource_version == "213763"
    out = p.to_dict()
    for key, value in doc["spec"].items():
        assert out["spec"][key] == value
    assert load(out) == p


def test_ippool_defaults():
    p = load(pool())
    assert (p.spec.block_size, p.spec.ipip_mode, p.spec.vxlan_mode) == (26, "Never", "Never")
    assert p.spec.node_selector == "all()" and p.spec.allowed_uses == ["Workload", "Tunnel"]
    assert load(pool(cidr="fd00:10::/64")).spec.block_size == 122


@pytest.mark.parametrize("spec, field, words", [
    ({"cidr": "10.244.0.1/16"}, "spec.cidr", "host bits"),
    ({"cidr": "not-a-cidr"}, "spec.cidr", "not a valid CIDR"),
    ({"cidr": "169.254.0.0/16"}, "spec.cidr", "link-local"),
    ({"blockSize": 33}, "spec.blockSize", "between 20 and 32"),
    ({"blockSize": 19}, "spec.blockSize", "between 20 and 32"),
    ({"cidr": "10.244.0.0/24", "blockSize": 20}, "spec.blockSize", "larger than the pool"),
    ({"ipipMode": "Always", "vxlanMode": "CrossSubnet"}, "spec.vxlanMode", "both"),
    ({"ipipMode": "Sometimes"}, "spec.ipipMode", "Never"),
    ({"allowedUses": ["LoadBalancer", "Workload"]}, "spec.allowedUses", "combination"),
    ({"bogusField": 1}, "spec.bogusField", "not permitted"),
])
def test_invalid_ippool_names_field_and_reason(spec, field, words):
    with pytest.raises(InvalidResource) as exc:
        load(pool(**spec))
    assert exc.value.field == field
    assert words in exc.value.reason
    assert field in str(exc.value) and "IPPool p" in str(exc.value)


def test_envelope_errors():
    with pytest.raises(InvalidResource, match="apiVersion"):
        load({**pool(), "apiVersion": "crd.projectcalico.org/v1"})
    with pytest.raises(InvalidResource, match="unknown kind"):
        load({**pool(), "kind": "Pool"})
    with pytest.raises(InvalidResource, match="metadata.name"):
        load({**pool(), "metadata": {"name": "Bad_Name"}})


def test_bgpconfiguration_defaults_and_dotted_asn():
    cfg = load({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {}})
    assert isinstance(cfg, BGPConfiguration)
    assert cfg.spec.as_number == 64512 and cfg.spec.node_to_node_mesh_enabled
    assert cfg.spec.listen_port == 179 and cfg.spec.log_severity_screen == "Info"
    dotted = load({**cfg.to_dict(), "spec": {"asNumber": "1.10"}})
    assert dotted.spec.as_number == 65536 + 10
    with pytest.raises(InvalidResource, match="spec.asNumber"):
        load({**cfg.to_dict(), "spec": {"asNumber": 0}})


def test_node_bgp_fields():
    n = load({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n1"},
              "spec": {"bgp": {"ipv4Address": "192.168.40.181/24", "asNumber": 64513,
                               "routeReflectorClusterID": "224.0.0.1"}}})
    assert isinstance(n, Node) and n.spec.bgp.ipv4_address == "192.168.40.181/24"
    assert n.to_dict()["spec"]["bgp"]["routeReflectorClusterID"] == "224.0.0.1"
    with pytest.raises(InvalidResource, match="spec.bgp.ipv4Address"):
        load({**n.to_dict(), "spec": {"bgp": {"ipv4Address": "fd00::1/64"}}})


@pytest.mark.parametrize("name", ["IPPool", "ippool", "ippools", "ipPool"])
def test_kind_aliases_like_calicoctl(name):
    assert kind_class(name) is IPPool


@pytest.mark.parametrize("field", ["bogus", "lol", "Name", "resourceversion"])
def test_unknown_metadata_field_is_refused_as_kubernetes_does(field):
    with pytest.raises(InvalidResource) as exc:
        load({**pool(), "metadata": {"name": "p", field: "x"}})
    assert exc.value.field == f"metadata.{field}"
    assert "unknown field" in exc.value.reason


def test_every_kubernetes_objectmeta_field_is_accepted_and_round_trips():
    meta = {"name": "p", "generateName": "p-", "namespace": None, "selfLink": "/x",
            "uid": "6f666892", "resourceVersion": "7", "generation": 3,
            "creationTimestamp": "2022-12-20T07:41:39Z", "deletionTimestamp": "2022-12-21T00:00:00Z",
            "deletionGracePeriodSeconds": 30, "labels": {"a": "b"}, "annotations": {"c": "d"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "u"}],
            "finalizers": ["f"], "managedFields": [{"manager": "kubectl"}]}
    p = load({**pool(), "metadata": meta})
    assert p.metadata.generate_name == "p-" and p.metadata.deletion_grace_period_seconds == 30
    assert p.to_dict()["metadata"] == {k: v for k, v in meta.items() if v is not None}
    assert load(p.to_dict()) == p


def test_metadata_written_by_us_is_unchanged_by_the_new_fields():
    assert load(pool()).to_dict()["metadata"] == {"name": "p", "labels": {}, "annotations": {}}


def test_node_mesh_max_restart_time_must_be_a_duration():
    """It caps how long a dead peer's routes stay: validated before it is stored (issue 5, defect 6)."""
    good = load({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                 "metadata": {"name": "default"}, "spec": {"nodeMeshMaxRestartTime": "2m30s"}})
    assert good.spec.node_mesh_max_restart_time == "2m30s"
    with pytest.raises(InvalidResource, match=r"spec.nodeMeshMaxRestartTime: .*'forever' is not"):
        load({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
              "metadata": {"name": "default"}, "spec": {"nodeMeshMaxRestartTime": "forever"}})


@pytest.mark.parametrize("selector", ["route-reflector = 'true'", "has(zone", "zone in 'a'"])
def test_pool_node_selector_is_syntax_checked(selector):
    with pytest.raises(InvalidResource) as info:
        load(pool(nodeSelector=selector))
    assert info.value.field == "spec.nodeSelector" and "not a valid selector" in info.value.reason
    assert load(pool(nodeSelector="zone in {'a'} && !has(edge)")).spec.node_selector.startswith("zone")


@pytest.mark.parametrize("labels, words", [
    ({"route reflector": "true"}, "label key 'route reflector'"), ({"-x": "1"}, "label key"),
    ({"Bad_Prefix/x": "1"}, "label key"), ({"x" * 64: "1"}, "label key"),
    ({"route-reflector": "yes please"}, "value 'yes please'"), ({"a": "v" * 64}, "value"),
])
def test_label_keys_and_values_follow_kubernetes(labels, words):
    with pytest.raises(InvalidResource) as info:
        load({**pool(), "metadata": {"name": "p", "labels": labels}})
    assert info.value.field == "metadata.labels" and words in info.value.reason


def test_good_labels_load():
    labels = {"route-reflector": "true", "projectcalico.org/name": "n1", "empty": "", "A.b_c": "X-1"}
    assert load({**pool(), "metadata": {"name": "p", "labels": labels}}).metadata.labels == labels


def block(**spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPAMBlock", "metadata": {"name": "b"},
            "spec": {"cidr": "10.244.1.0/30", **spec}}


def test_a_consistent_block_loads():
    b = load(block(allocations=[0, None, 0, None], unallocated=[3, 1],
                   attributes=[{"handle_id": "h"}]))
    assert b.spec.unallocated == [3, 1] and load(block()).spec.allocations == []


@pytest.mark.parametrize("spec, field, words", [
    ({"allocations": [None] * 5}, "spec.allocations", "a /30 block has 4 addresses"),
    ({"allocations": [None] * 2, "unallocated": [2]}, "spec.unallocated", "outside the block (0-1)"),
    ({"allocations": [None] * 4, "unallocated": [0, 0]}, "spec.unallocated", "twice"),
    ({"allocations": [None] * 4, "unallocated": [4]}, "spec.unallocated", "outside the block (0-3)"),
    ({"allocations": [0, None, None, None], "unallocated": [0]}, "spec.unallocated", "free and allocated"),
    ({"cidr": "10.244.1.1/30"}, "spec.cidr", "host bits"),
])
def test_a_corrupt_block_names_the_field(spec, field, words):
    with pytest.raises(InvalidResource) as info:
        load(block(**spec))
    assert info.value.field == field and words in info.value.reason


def test_block_affinity_cidr_is_a_strict_cidr():
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "BlockAffinity", "metadata": {"name": "a"},
           "spec": {"node": "n1", "cidr": "10.244.1.0/26"}}
    assert load(doc).spec.cidr == "10.244.1.0/26"
    with pytest.raises(InvalidResource, match="spec.cidr"):
        load({**doc, "spec": {"node": "n1", "cidr": "10.244.1.1/26"}})
