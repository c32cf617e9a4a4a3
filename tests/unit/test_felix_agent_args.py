"""pycalico-node's command line: --version (the image tier runs it) and CALICO_NETWORKING_BACKEND."""
from __future__ import annotations

import importlib.metadata

import pytest

from felix.agent import parse_args


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.split() == ["pycalico-node", importlib.metadata.version("pycalico")]


@pytest.mark.parametrize(("backend", "bgp"), [("bird", True), ("vxlan", False), ("none", False)])
def test_networking_backend_turns_bgp_on_or_off(monkeypatch, backend, bgp):
    monkeypatch.setenv("CALICO_NETWORKING_BACKEND", backend)
    assert parse_args(["--name", "n1", "--ip", "10.0.0.1/24"]).bgp is bgp


def test_an_unknown_networking_backend_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("CALICO_NETWORKING_BACKEND", "calico-bpf")
    with pytest.raises(ValueError, match="CALICO_NETWORKING_BACKEND: 'calico-bpf' is not one of"):
        parse_args(["--name", "n1", "--ip", "10.0.0.1/24"])
