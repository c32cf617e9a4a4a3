"""hostio.lean: a lazy package loads only what is asked for, and still serves everything else."""
from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import sys
from hostio.lean import lean_kubernetes, lean_pyroute2
lean_kubernetes(); lean_pyroute2()
from kubernetes import client
from pyroute2 import AsyncIPRoute
assert client.ApiClient.__name__ == "ApiClient" and AsyncIPRoute.__name__ == "AsyncIPRoute"
before = (sum(m.startswith("pyroute2.ndb") for m in sys.modules),
          sum(m.startswith("kubernetes.client.api.") for m in sys.modules))
import pyroute2
assert pyroute2.NDB.__name__ == "NDB" and client.CoreV1Api.__name__ == "CoreV1Api"
assert client.V1Pod.__name__ == "V1Pod"
after = (sum(m.startswith("pyroute2.ndb") for m in sys.modules),
         sum(m.startswith("kubernetes.client.api.") for m in sys.modules))
print(before, after)
"""


def test_lean_packages_load_only_what_is_used_and_complete_on_demand():
    """Fresh interpreter: the lean import leaves NDB and the generated APIs out; asking for them by
    name still works (the package's real __init__ runs then)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = eval(out.stdout.strip().replace(") (", "), ("))  # two tuples
    assert before == (0, 0)
    assert after[0] > 0 and after[1] > 0


def test_lean_does_nothing_to_an_imported_package():
    from hostio.lean import lean
    import json
    assert lean("json") is False and sys.modules["json"] is json
    assert lean("no_such_package_here") is False
