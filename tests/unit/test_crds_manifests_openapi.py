"""The CRDs we ship are OpenAPI v3.0, as Kubernetes reads them: the official client's own model
accepts every one (it refused `exclusiveMaximum: 4294967296`, JSON Schema's numeric form, which
pydantic writes for `lt=`; the lab and the Kubernetes datastore tests could not apply them)."""
from __future__ import annotations

import pytest
from kubernetes.client import V1CustomResourceDefinition

from crds.manifests import definitions


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


@pytest.mark.parametrize("crd", definitions(), ids=lambda c: c["metadata"]["name"])
def test_the_official_client_accepts_every_crd(crd):
    assert V1CustomResourceDefinition.from_dict(crd) is not None
    for node in walk(crd):
        for key in ("exclusiveMaximum", "exclusiveMinimum"):
            assert node.get(key) is None or isinstance(node[key], bool), (key, node)
