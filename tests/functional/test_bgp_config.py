"""The rendered config (golden file and a live rendering) is accepted by the real `exabgp validate`."""
import subprocess
import sys
from ipaddress import IPv4Address as A
from pathlib import Path

import pytest

from bgp.exabgp_conf import ExaBGPConfig, render

GOLDEN = Path(__file__).parents[1] / "unit" / "testdata" / "bgp" / "exabgp.conf.golden"


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exabgp", "validate", "-nrv", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_exabgp_accepts_golden_config():
    result = validate(GOLDEN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "neighbor  10.0.0.3" in result.stdout + result.stderr


def test_exabgp_accepts_config_without_peers(tmp_path):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render(ExaBGPConfig(A("10.0.0.2"), A("10.0.0.2"), ("/bin/true",))))
    result = validate(conf)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change", [("hold-time 9;", "hold-time 1;"), ("manual-eor true;", "manual-eor maybe;")])
def test_validate_really_rejects_a_broken_config(tmp_path, change):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(GOLDEN.read_text().replace(*change))
    assert validate(conf).returncode != 0
