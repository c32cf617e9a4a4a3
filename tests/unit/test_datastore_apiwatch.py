"""datastore.apiwatch: the one watch thread behind the Kubernetes kinds' and the Secrets' watches."""
from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest

from datastore.apiwatch import WatchThread
from datastore.base import Compacted
from datastore.kubernetes import _KindWatch
from datastore.secrets import _SecretWatch

ROOT = Path(__file__).resolve().parents[2]


def test_kind_and_secret_watches_share_one_watch_thread():
    assert issubclass(_KindWatch, WatchThread) and issubclass(_SecretWatch, WatchThread)
    for cls in (_KindWatch, _SecretWatch):
        assert "close" not in vars(cls) and "_events" not in vars(cls), cls


@pytest.mark.parametrize("module", ["datastore/apiwatch.py", "datastore/secrets.py"])
def test_secret_path_loads_no_kubernetes_client(module):
    """An agent on etcd imports datastore.secrets: it must not pull in the Kubernetes client."""
    tree = ast.parse((ROOT / module).read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
        a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in top if m and (m.startswith("kubernetes") or m == "datastore.kubernetes")}


class _Response:
    """A streamed response as ``KubernetesDatastore._request(stream=True)`` returns it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.released = chunks, False

    def stream(self, _size, decode_content=True):
        yield from self.chunks

    def release_conn(self) -> None:
        self.released = True


class _Ds:
    def __init__(self, resp: _Response) -> None:
        self.resp, self.queries = resp, []

    def _request(self, method, path, query, stream=False):
        assert method == "GET" and stream
        self.queries.append(query)
        return self.resp


class _Collect(WatchThread):
    def __init__(self, ds: _Ds) -> None:
        self.ds, self.seen, self.error = ds, [], None
        self.done = threading.Event()
        super().__init__("test-watch")

    def _run(self) -> None:
        try:
            for event in self._events(self.ds, "/api/v1/secrets", {"fieldSelector": "x"}, 7):
                self.seen.append(event["type"])
        except Compacted as exc:
            self.error = exc
        self.done.set()


def test_events_split_chunks_raise_error_events_and_release_the_connection():
    added = json.dumps({"type": "ADDED", "object": {"metadata": {"resourceVersion": "8"}}}).encode()
    gone = json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}}).encode()
    resp = _Response([added[:5], added[5:] + b"\n{\"type\": \"BOOKMARK\"}\n", gone + b"\n"])
    ds = _Ds(resp)
    watch = _Collect(ds)
    assert watch.done.wait(5)
    watch.close()
    assert watch.seen == ["ADDED", "BOOKMARK"]
    assert isinstance(watch.error, Compacted) and "too old" in str(watch.error)
    assert resp.released and watch._resp is None
    assert ds.queries == [{"fieldSelector": "x", "watch": "1", "resourceVersion": "7",
                           "allowWatchBookmarks": "true", "timeoutSeconds": "60"}]
