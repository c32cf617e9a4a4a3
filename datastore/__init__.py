"""Datastores: one interface (get / list / create / update-with-revision / delete / snapshot / watch).

Backends: ``etcdv3`` (Calico's key layout under /calico/resources/v3/projectcalico.org/),
``kubernetes`` (Calico's CRDs, Nodes and Pods through the official client), ``memory`` (unit
tests). Does network I/O (etcd, HTTP). Every write is compare-and-swap on the revision: a stale
write raises ``Conflict``, never a silent overwrite.
``Syncer`` turns a backend into list-then-watch batches ending the first snapshot with ``InSync``.
"""
from __future__ import annotations

from datastore.base import (
    AlreadyExists, Compacted, Conflict, Datastore, DatastoreError, Forbidden, Listing, NotFound,
    Rejected, Unavailable, WatchEvent,
)


def connect(datastore_type: str = "etcdv3", *, etcd_endpoints: str | None = None,
            kubeconfig: str | None = None, node_name: str | None = None) -> Datastore:
    """Open a backend by name, as the agent, CLI and CNI plugin are configured (Calico's names).

    ``kubernetes``: ``kubeconfig`` (else $KUBECONFIG, ~/.kube/config, or the in-cluster service
    account); ``node_name`` restricts WorkloadEndpoints to that node's pods.
    """
    if datastore_type == "kubernetes":
        from datastore.kubernetes import connect as connect_kubernetes

        return connect_kubernetes(kubeconfig, node_name=node_name)
    if datastore_type == "etcdv3":
        if not etcd_endpoints:
            raise ValueError("etcd_endpoints: required for datastore type etcdv3")
        from datastore.etcdv3 import EtcdDatastore

        return EtcdDatastore(etcd_endpoints)
    if datastore_type == "memory":
        from datastore.memory import MemoryDatastore

        return MemoryDatastore()
    raise ValueError(f"datastore_type: unknown {datastore_type!r} (known: etcdv3, kubernetes, memory)")


__all__ = [
    "AlreadyExists", "Compacted", "Conflict", "Datastore", "DatastoreError", "Forbidden", "Listing",
    "NotFound",
    "Rejected", "Unavailable", "WatchEvent", "connect",
]
