"""Structural-schema pruning and validation of custom resources, as kube-apiserver does for CRDs.

Purely computational; no I/O. kube-apiserver drops fields a CRD's ``openAPIV3Schema`` does not
declare (unless ``x-kubernetes-preserve-unknown-fields``), reports them per ``fieldValidation``
(Strict: 400; Warn, the default: a ``Warning`` header; Ignore), and refuses values of the wrong
type, outside ``enum`` / ``minimum`` / ``maximum`` / length bounds, or missing ``required`` fields
(422). Covered here: type, nullable, enum, required, minimum, maximum, exclusiveMinimum/Maximum,
minLength, maxLength, pattern (Python ``re``), minItems, maxItems, items, properties,
additionalProperties, x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string. Not covered:
format, CEL rules, allOf/anyOf/oneOf/not, defaults.

>>> schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
...     "cidr": {"type": "string"}}}}}
>>> obj = {"spec": {"cidr": "10.0.0.0/8", "bogus": 1}}
>>> prune(obj, schema), obj
(['spec.bogus'], {'spec': {'cidr': '10.0.0.0/8'}})
>>> validate({"spec": {"cidr": 8}}, schema)
['spec.cidr: Invalid value: "integer": spec.cidr in body must be of type string: "integer"']
"""
from __future__ import annotations

import re

_ROOT_FIELDS = ("apiVersion", "kind", "metadata")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
               dict: "object"}


def prune(obj: dict, schema: dict) -> list[str]:
    """Drop undeclared fields from ``obj`` in place; return their paths (``spec.foo``)."""
    unknown: list[str] = []
    root = {k: v for k, v in obj.items() if k not in _ROOT_FIELDS}
    _prune(root, schema, "", unknown)
    for key in [k for k in obj if k not in _ROOT_FIELDS and k not in root]:
        del obj[key]
    for key, value in root.items():
        obj[key] = value
    return unknown


def _prune(value, schema: dict, path: str, unknown: list[str]) -> None:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key in list(value):
            child = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                _prune(value[key], properties[key], child, unknown)
            elif isinstance(additional, dict):
                _prune(value[key], additional, child, unknown)
            elif additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            else:
                unknown.append(child)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune(item, schema["items"], f"{path}[{index}]", unknown)


def validate(obj: dict, schema: dict) -> list[str]:
    """Problems with ``obj`` against ``schema``, as kube-apiserver words them ([] when valid)."""
    problems: list[str] = []
    root = {k: v for k, v in obj.items() if k not in _ROOT_FIELDS}
    root_schema = dict(schema, required=[r for r in schema.get("required", ())
                                         if r not in _ROOT_FIELDS])
    _validate(root, root_schema, "", problems)
    return problems


def _type_of(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _validate(value, schema: dict, path: str, problems: list[str]) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            problems.append(f'{where}: Invalid value: "null": {where} in body must be of type '
                            f'{schema["type"]}: "null"')
        return
    if not _type_ok(value, schema):
        actual = _type_of(value)
        expected = schema.get("type", "integer or string")
        problems.append(f'{where}: Invalid value: "{actual}": {where} in body must be of type '
                        f'{expected}: "{actual}"')
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        problems.append(f'{where}: Unsupported value: {_show(value)}: supported values: {allowed}')
    _check_bounds(value, schema, where, problems)
    if isinstance(value, dict):
        _validate_object(value, schema, path, problems)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _validate(item, schema["items"], f"{path}[{index}]", problems)


def _type_ok(value, schema: dict) -> bool:
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    if not expected:
        return True
    actual = _type_of(value)
    return actual == expected or (expected == "number" and actual == "integer")


def _check_bounds(value, schema: dict, where: str, problems: list[str]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (value < schema["minimum"] or (
                schema.get("exclusiveMinimum") and value == schema["minimum"])):
            problems.append(f"{where}: Invalid value: {value}: {where} in body should be greater "
                            f"than or equal to {schema['minimum']}")
        if "maximum" in schema and (value > schema["maximum"] or (
                schema.get("exclusiveMaximum") and value == schema["maximum"])):
            problems.append(f"{where}: Invalid value: {value}: {where} in body should be less "
                            f"than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f'{where}: Too long: may not be more than {schema["maxLength"]} bytes')
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f'{where}: Invalid value: "{value}": {where} in body should be at '
                            f'least {schema["minLength"]} chars long')
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f'{where}: Invalid value: "{value}": {where} in body should match '
                            f"'{schema['pattern']}'")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{where}: Too many: {len(value)}: must have at most "
                            f"{schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{where}: Invalid value: {len(value)}: {where} in body should have "
                            f"at least {schema['minItems']} items")


def _validate_object(value: dict, schema: dict, path: str, problems: list[str]) -> None:
    for required in schema.get("required", ()):
        if required not in value:
            child = f"{path}.{required}" if path else required
            problems.append(f"{child}: Required value")
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, child_value in value.items():
        child = f"{path}.{key}" if path else key
        if key in properties:
            _validate(child_value, properties[key], child, problems)
        elif isinstance(additional, dict):
            _validate(child_value, additional, child, problems)


def _show(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
