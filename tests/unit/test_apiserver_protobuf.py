"""Decoding the protobuf bodies kubectl 1.32 sends (bytes captured from ``kubectl create``)."""
from __future__ import annotations

import pytest

from lab.apiserver.protobuf import ProtobufError, decode

# kubectl create secret generic s1 --from-literal=a=b --from-literal=pw=s3 --type=Opaque
SECRET = bytes.fromhex(
    "6b3873000a0c0a027631120653656372657412350a190a02733112001a0764656661756c7422002a00320038"
    "00420012060a016112016212080a027077120273331a064f70617175651a002200")
# kubectl create namespace nsx
NAMESPACE = bytes.fromhex(
    "6b3873000a0f0a02763112094e616d657370616365121b0a130a036e737812001a0022002a00320038004200"
    "12001a020a001a002200")


def test_secret_from_kubectl_create():
    assert decode(SECRET) == {"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": "s1", "namespace": "default"},
                              "data": {"a": "Yg==", "pw": "czM="}, "type": "Opaque"}


def test_namespace_from_kubectl_create():
    assert decode(NAMESPACE) == {"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": "nsx"}, "spec": {}}


@pytest.mark.parametrize("body", [b"{}", SECRET[:30], SECRET.replace(b"Secret", b"Podxxx")])
def test_what_we_cannot_read_is_refused(body):
    with pytest.raises(ProtobufError):
        decode(body)
