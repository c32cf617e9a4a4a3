"""The API server stand-in and its etcd coming and going: start order, outage, recovery.

Real processes: Debian's etcd on fixed free loopback ports (so it can come back on the same ones)
and ``python -m lab.apiserver``; both are stopped by PID in ``finally``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

from lab.apiserver.launch import ready, stop_process
from tests.helpers import etcd_healthy, free_port, stop_process, wait_for


def _etcd(data_dir: str, client: int, peer: int) -> subprocess.Popen:
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", data_dir, "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
         "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"t={peer_url}",
         "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_started_before_etcd_then_outage_then_recovery(tmp_path):
    client, peer, port = free_port(), free_port(), free_port()
    etcd_url, url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{port}"
    data = str(tmp_path / "etcd")
    server = subprocess.Popen([sys.executable, "-m", "lab.apiserver", "--etcd-endpoints", etcd_url,
                               "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    etcd = None
    try:
        etcd = _etcd(data, client, peer)  # after the API server: it waits for etcd
        wait_for(lambda: ready(url), timeout=30, what="the API server to serve once etcd is up")
        assert _get(f"{url}/api/v1/namespaces/default")[0] == 200

        stop_process(etcd)
        code, status = _get(f"{url}/api/v1/namespaces/default")
        assert (code, status["kind"], status["code"]) == (503, "Status", 503)
        assert server.poll() is None, "the API server died with its etcd"

        etcd = _etcd(data, client, peer)
        wait_for(lambda: etcd_healthy(etcd_url), timeout=20, what="etcd to come back")
        wait_for(lambda: _get(f"{url}/api/v1/namespaces/default")[0] == 200, timeout=20,
                 what="the API server to recover with etcd")
    finally:
        stop_process(server)
        if etcd is not None:
            stop_process(etcd)
