"""CRD structural-schema pruning and validation in the API server stand-in (pure)."""
from __future__ import annotations

import doctest

import lab.apiserver.schema as schema_module
from lab.apiserver.schema import prune, validate

SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["cidr"],
            "properties": {
                "cidr": {"type": "string", "pattern": "/"},
                "blockSize": {"type": "integer", "minimum": 20, "maximum": 32},
                "ipipMode": {"type": "string", "enum": ["Always", "CrossSubnet", "Never"]},
                "port": {"x-kubernetes-int-or-string": True},
                "selectors": {"type": "array", "maxItems": 2, "items": {
                    "type": "object", "properties": {"k": {"type": "string"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "note": {"type": "string", "nullable": True, "maxLength": 3},
            },
        },
    },
}


def pool(**spec) -> dict:
    return {"apiVersion": "x/v1", "kind": "IPPool", "metadata": {"name": "p", "anything": 1},
            "spec": {"cidr": "10.0.0.0/8", **spec}}


def test_doctests():
    assert doctest.testmod(schema_module).failed == 0


def test_prune_drops_undeclared_fields_at_every_level_and_keeps_metadata():
    obj = pool(bogus=1, selectors=[{"k": "a", "x": 2}], free={"any": {"thing": 1}},
               labels={"a": "b"})
    obj["status"] = {"x": 1}
    assert sorted(prune(obj, SCHEMA)) == ["spec.bogus", "spec.selectors[0].x", "status"]
    assert obj["spec"] == {"cidr": "10.0.0.0/8", "selectors": [{"k": "a"}],
                           "free": {"any": {"thing": 1}}, "labels": {"a": "b"}}
    assert obj["metadata"] == {"name": "p", "anything": 1} and obj["kind"] == "IPPool"


def test_valid_object_has_no_problems():
    obj = pool(blockSize=26, ipipMode="Never", port="http", note=None, labels={"a": "b"})
    assert validate(obj, SCHEMA) == []
    assert validate(pool(port=80), SCHEMA) == []


def test_validation_problems_name_the_field():
    problems = validate(pool(blockSize=33, ipipMode="Sometimes", port=True, note="long",
                             selectors=[{}, {}, {}], labels={"a": 1}), SCHEMA)
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == ["spec.blockSize", "spec.ipipMode", "spec.labels.a", "spec.note",
                      "spec.port", "spec.selectors"]
    assert any("less than or equal to 32" in p for p in problems)
    assert any('Unsupported value: "Sometimes"' in p for p in problems)


def test_required_type_and_pattern():
    obj = pool()
    del obj["spec"]["cidr"]
    assert validate(obj, SCHEMA) == ["spec.cidr: Required value"]
    assert validate(pool(cidr="nocidr"), SCHEMA)[0].startswith("spec.cidr: Invalid value")
    assert validate(pool(blockSize="26"), SCHEMA)[0] == (
        'spec.blockSize: Invalid value: "string": spec.blockSize in body must be of type '
        'integer: "string"')
    assert validate({"spec": None}, SCHEMA)[0].startswith("spec: Invalid value: \"null\"")
