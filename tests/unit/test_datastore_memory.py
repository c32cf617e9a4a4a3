"""The datastore conformance tests against the in-memory backend (the reference semantics)."""
from __future__ import annotations

import pytest

from datastore.memory import MemoryDatastore
from tests.datastore_conformance import DatastoreConformance, recorder  # noqa: F401  (fixture)


class TestMemoryDatastore(DatastoreConformance):
    @pytest.fixture
    def ds(self) -> MemoryDatastore:
        return MemoryDatastore()
