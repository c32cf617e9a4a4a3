"""The crds modules added after test_layering's list are pure too (STYLE.md: crds does no I/O)."""
import pytest

from tests.unit.test_layering import IO_LIBS, ROOT, imported_roots

PURE_CRDS = ["crds/selector.py", "crds/bgp.py", "crds/ipamobjects.py", "crds/felixconfig.py",
             "crds/validate.py", "crds/duration.py", "crds/manifests.py"]


@pytest.mark.parametrize("module", [m for m in PURE_CRDS if (ROOT / m).exists()])
def test_crds_modules_do_no_io(module):
    assert not imported_roots(ROOT / module) & (IO_LIBS | {"os", "pathlib", "datastore"})
