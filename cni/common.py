"""What both plugins share: opening the datastore named in the network configuration."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import datastore
from cni.config import NetConf
from cni.errors import INVALID_CONFIG, CNIError


@contextmanager
def open_datastore(conf: NetConf) -> Iterator[datastore.Datastore]:
    try:
        ds = datastore.connect(conf.datastore_type, etcd_endpoints=conf.etcd_endpoints,
                               kubeconfig=conf.kubeconfig)
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, "cannot open the datastore", str(exc)) from None
    try:
        yield ds
    finally:
        ds.close()
