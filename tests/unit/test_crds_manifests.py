"""The CRD manifests: generated from the models, committed, structural, named like Calico's."""
from pathlib import Path

import pytest
import yaml

from crds import KINDS, IPAMBlock, IPPool
from crds.manifests import GROUP, definitions, render, spec_schema, structural

COMMITTED = Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml"
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "default"}


def test_committed_yaml_matches_the_models():
    assert COMMITTED.read_text() == render(), \
        "deploy/crds.yaml is stale: run `python -m crds.manifests > deploy/crds.yaml`"


def test_one_crd_per_kind_with_calicos_names_and_scope():
    docs = [d for d in yaml.safe_load_all(COMMITTED.read_text()) if d]
    by_kind = {d["spec"]["names"]["kind"]: d for d in docs}
    assert set(by_kind) == set(KINDS) and len(docs) == len(KINDS)
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


@pytest.mark.parametrize("crd", definitions(), ids=lambda d: d["spec"]["names"]["kind"])
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
