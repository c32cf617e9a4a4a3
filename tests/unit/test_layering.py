"""Package contracts (STYLE.md): pure modules import no I/O library; lower layers never import upper."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_LIBS = {"pyroute2", "kubernetes", "pyetcd", "grpc", "subprocess", "socket", "asyncio"}
PURE = ["felix/calc.py", "felix/inspect.py", "felix/cluster.py", "bgp/rib.py", "bgp/policy.py",
        "bgp/peers.py", "bgp/exabgp_conf.py", "bgp/protocol.py", "bgp/reflect.py", "bgp/transition.py",
        "bgp/core.py", "bgp/speaker_core.py", "bgp/effects.py", "bgp/supervision.py", "ctl/output.py", "crds/models.py"]
OURS = {"hostio", "crds", "datastore", "ipam", "bgp", "felix", "cni", "ctl", "lab"}
LOWER = {"hostio": OURS - {"hostio"},
         "crds": {"felix", "bgp", "ipam", "cni", "ctl", "lab", "datastore"},
         "datastore": {"felix", "bgp", "ipam", "cni", "ctl", "lab"},
         "ipam": {"felix", "bgp", "cni", "ctl", "lab"},
         "bgp": {"felix", "ipam", "cni", "ctl", "lab"}}


# Conversions the socket module happens to hold (no I/O): a pure module may take these by name.
PURE_SOCKET_NAMES = {"AF_INET", "AF_INET6", "inet_pton", "inet_ntop", "inet_aton", "inet_ntoa"}


def imported_roots(path: Path, *, allow_pure_socket: bool = False) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if allow_pure_socket and node.module == "socket" and \
                    {a.name for a in node.names} <= PURE_SOCKET_NAMES:
                continue
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module):
    assert not imported_roots(ROOT / module, allow_pure_socket=True) & IO_LIBS


@pytest.mark.parametrize("package", sorted(LOWER))
def test_lower_layers_do_not_import_upper(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_roots(path) & LOWER[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
