"""The CRD manifests: generated from the models, committed, structural, named like Calico's."""
from pathlib import Path

import pytest
import yaml

from crds import KINDS, IPAMBlock, IPPool, load
from crds.manifests import GROUP, definition, definitions, render, spec_schema, structural

COMMITTED = Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml"
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "default"}


def test_committed_yaml_matches_the_models():
    assert COMMITTED.read_text() == render(), \
        "deploy/crds.yaml is stale: run `python -m crds.manifests > deploy/crds.yaml`"


def test_one_crd_per_kind_with_calicos_names_and_scope():
    docs = [d for d in yaml.safe_load_all(COMMITTED.read_text()) if d]
    by_kind = {d["spec"]["names"]["kind"]: d for d in docs}
    assert set(by_kind) == set(KINDS) - {"Node", "WorkloadEndpoint"} and len(docs) == len(by_kind)
    by_kind["WorkloadEndpoint"] = definition(KINDS["WorkloadEndpoint"])  # generated, not shipped
    for kind, d in by_kind.items():
        cls, spec = KINDS[kind], d["spec"]
        assert d["metadata"]["name"] == f"{cls.PLURAL}.{GROUP}" == f"{spec['names']['plural']}.{GROUP}"
        assert spec["names"] == {"kind": kind, "listKind": f"{kind}List", "plural": cls.PLURAL,
                                 "singular": kind.lower()}
        assert spec["scope"] == ("Namespaced" if kind == "WorkloadEndpoint" else "Cluster")
        [version] = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)


def check_structural(node, path="openAPIV3Schema"):
    """Kubernetes' structural-schema rules, as far as we use the schema language."""
    assert isinstance(node, dict), path
    assert not FORBIDDEN & set(node), f"{path}: {FORBIDDEN & set(node)}"
    if node.get("x-kubernetes-int-or-string"):
        assert "type" not in node, path
    else:
        assert node.get("type") in TYPES or node.get("x-kubernetes-preserve-unknown-fields"), path
    assert not ("properties" in node and "additionalProperties" in node), path
    for name, sub in node.get("properties", {}).items():
        check_structural(sub, f"{path}.{name}")
    for name in node.get("required", []):
        assert name in node.get("properties", {}), f"{path}: required {name} is not a property"
    if "items" in node:
        assert node["type"] == "array", path
        check_structural(node["items"], f"{path}[]")
    if "additionalProperties" in node:
        assert node["type"] == "object", path
        check_structural(node["additionalProperties"], f"{path}{{}}")
    if "enum" in node:
        assert all(isinstance(v, str) for v in node["enum"]) and node["type"] == "string", path


@pytest.mark.parametrize("crd", [definition(cls) for cls in KINDS.values()],
                         ids=lambda d: d["spec"]["names"]["kind"])
def test_every_schema_is_structural(crd):
    check_structural(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_structural_check_catches_what_pydantic_emits():
    with pytest.raises(AssertionError):
        check_structural(IPPool.model_fields["spec"].annotation.model_json_schema(by_alias=True))


def test_schemas_keep_enums_required_fields_maps_and_nullable_ordinals():
    pool = spec_schema(IPPool.model_fields["spec"].annotation)
    assert pool["required"] == ["cidr"]
    assert pool["properties"]["ipipMode"]["enum"] == ["Never", "Always", "CrossSubnet"]
    assert pool["properties"]["allowedUses"]["items"]["enum"] == ["Workload", "Tunnel", "LoadBalancer"]
    block = spec_schema(IPAMBlock.model_fields["spec"].annotation)
    assert block["properties"]["allocations"]["items"] == {"type": "integer", "nullable": True}
    assert block["properties"]["affinity"] == {"type": "string"}  # optional, not nullable
    attr = block["properties"]["attributes"]["items"]["properties"]
    assert attr["secondary"] == {"type": "object", "additionalProperties": {"type": "string"}}
    handle = spec_schema(KINDS["IPAMHandle"].model_fields["spec"].annotation)
    assert handle["properties"]["block"]["additionalProperties"] == {"type": "integer"}


def test_unions_become_int_or_string_or_fail_loudly():
    defs = {}
    assert structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}, defs, False) == \
        {"x-kubernetes-int-or-string": True}
    with pytest.raises(AssertionError, match="Bug"):
        structural({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, defs, False)


_PY_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float)}


def conforms(value, schema, path="spec"):
    """The API server's check of a value against our structural subset; returns a list of errors."""
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not int-or-string"]
    kind = schema["type"]
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, _PY_TYPES[kind]) and not (kind == "number" and isinstance(value, bool))
    if not ok:
        return [f"{path}: {value!r} is not {kind}"]
    errors = []
    if value not in schema.get("enum", [value]):
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind in ("integer", "number") and not schema.get("minimum", value) <= value \
            <= schema.get("maximum", value):
        errors.append(f"{path}: {value} out of range")
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}.{name}: required")
    for name, sub in value.items() if kind == "object" else ():
        sub_schema = schema.get("properties", {}).get(name, schema.get("additionalProperties"))
        errors += ([f"{path}.{name}: unknown"] if sub_schema is None
                   else conforms(sub, sub_schema, f"{path}.{name}"))
    for i, item in enumerate(value) if kind == "array" else ():
        errors += conforms(item, schema["items"], f"{path}[{i}]")
    return errors


SAMPLES = {
    "IPPool": {"cidr": "10.244.0.0/16", "ipipMode": "CrossSubnet", "natOutgoing": True},
    "BGPConfiguration": {"asNumber": 64512, "communities": [{"name": "c", "value": "64512:100"}],
                         "prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["c"]}],
                         "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}], "listenPort": 1179},
    "Node": {"bgp": {"ipv4Address": "192.168.40.181/24", "asNumber": 64513,
                     "routeReflectorClusterID": "244.0.0.1"},
             "orchRefs": [{"orchestrator": "k8s", "nodeName": "n1"}]},
    "WorkloadEndpoint": {"node": "n1", "pod": "p", "interfaceName": "cali0123456789a",
                         "ipNetworks": ["10.244.1.5/32"]},
    "IPAMBlock": {"cidr": "10.244.1.0/30", "affinity": "host:n1", "allocations": [0, None, 0, None],
                  "unallocated": [3, 1], "attributes": [{"handle_id": "h", "secondary": {"a": "b"}}]},
    "BlockAffinity": {"node": "n1", "cidr": "10.244.1.0/26", "state": "confirmed"},
    "BGPPeer": {"peerIP": "10.0.0.1:1179", "asNumber": 65001, "node": "n1", "ttlSecurity": 2,
                "password": {"secretKeyRef": {"name": "s", "key": "k"}}, "filters": ["f"]},
    "BGPFilter": {"exportV4": [{"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8"}]},
    "IPAMHandle": {"handleID": "h", "block": {"10.244.1.0/26": 2}},
    "IPReservation": {"reservedCIDRs": ["10.244.0.0/30"]},
    "IPAMConfig": {"strictAffinity": True, "maxBlocksPerHost": 4},
    "FelixConfiguration": {"routeRefreshInterval": "30s", "routeTableRange": {"min": 1, "max": 250}},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_what_the_models_store_is_accepted_by_the_crd_schema(kind):
    assert set(SAMPLES) == set(KINDS), "a new kind needs a sample here"
    name = "default" if kind in ("IPAMConfig", "BGPConfiguration", "FelixConfiguration") else "x"
    resource = load({"apiVersion": "projectcalico.org/v3", "kind": kind,
                     "metadata": {"name": name, "namespace": "ns"} if KINDS[kind].NAMESPACED
                     else {"name": name}, "spec": SAMPLES[kind]})
    crd = definition(KINDS[kind])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert conforms(resource.to_dict()["spec"], schema) == []
    assert conforms(SAMPLES[kind], schema) == []  # and what the user wrote, before defaults


def test_the_schema_check_sees_wrong_types_enums_and_unknown_fields():
    schema = spec_schema(IPPool.model_fields["spec"].annotation)
    assert conforms({"cidr": 5, "ipipMode": "Sometimes", "bogus": 1}, schema) == [
        "spec.cidr: 5 is not string", "spec.ipipMode: 'Sometimes' not in ['Never', 'Always', "
        "'CrossSubnet']", "spec.bogus: unknown"]
    peer = spec_schema(KINDS["BGPPeer"].model_fields["spec"].annotation)
    assert conforms({"peerIP": "10.0.0.1", "ttlSecurity": 300, "password": {}}, peer) == [
        "spec.ttlSecurity: 300 out of range", "spec.password.secretKeyRef: required"]


def test_exclusive_bounds_are_written_the_openapi_3_0_way():
    assert structural({"type": "integer", "exclusiveMaximum": 4294967296, "minimum": 0}, {}, False) == \
        {"type": "integer", "maximum": 4294967295, "minimum": 0}
    assert structural({"type": "integer", "exclusiveMinimum": 0}, {}, False) == \
        {"type": "integer", "minimum": 1}
    assert structural({"type": "number", "exclusiveMaximum": 1.5}, {}, False) == \
        {"type": "number", "maximum": 1.5, "exclusiveMaximum": True}
    peer = spec_schema(KINDS["BGPPeer"].model_fields["spec"].annotation)
    assert peer["properties"]["numAllowedLocalASNumbers"] == \
        {"type": "integer", "minimum": 0, "maximum": 4294967295}


def test_the_committed_yaml_uses_no_anchors_or_aliases():
    events = list(yaml.parse(COMMITTED.read_text()))
    assert not any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None) for e in events)
