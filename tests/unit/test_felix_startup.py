"""calico-node's default pool, from its environment (memory datastore)."""
import pytest

from crds import load
from datastore.memory import MemoryDatastore
from felix.startup import default_pool, ensure_default_pool


def test_the_default_pool_from_calico_nodes_environment():
    ds = MemoryDatastore()
    pool = ensure_default_pool(ds, {"CALICO_IPV4POOL_CIDR": "10.77.0.0/16",
                                    "CALICO_IPV4POOL_BLOCK_SIZE": "24"})
    assert (pool.name, pool.spec.cidr, pool.spec.block_size, pool.spec.nat_outgoing) == (
        "default-ipv4-ippool", "10.77.0.0/16", 24, True)
    assert [p.name for p in ds.list("IPPool").items] == ["default-ipv4-ippool"]
    assert ensure_default_pool(ds, {"CALICO_IPV4POOL_CIDR": "10.88.0.0/16"}) is None  # once only


def test_no_pool_when_one_exists_or_when_asked_not_to():
    ds = MemoryDatastore()
    ds.create(load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                    "metadata": {"name": "mine"}, "spec": {"cidr": "10.244.0.0/16"}}))
    assert ensure_default_pool(ds, {}) is None
    empty = MemoryDatastore()
    assert ensure_default_pool(empty, {"NO_DEFAULT_POOLS": "true"}) is None
    assert empty.list("IPPool").items == []


@pytest.mark.parametrize("env,var", [
    ({"CALICO_IPV4POOL_CIDR": "10.77.0.1/16"}, "CALICO_IPV4POOL_CIDR"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "big"}, "CALICO_IPV4POOL_BLOCK_SIZE"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "40"}, "CALICO_IPV4POOL_BLOCK_SIZE"),
    ({"CALICO_IPV4POOL_IPIP": "Sometimes"}, "CALICO_IPV4POOL_IPIP"),
    ({"CALICO_IPV4POOL_NAT_OUTGOING": "yes"}, "CALICO_IPV4POOL_NAT_OUTGOING"),
])
def test_a_bad_setting_is_refused_naming_the_variable(env, var):
    with pytest.raises(ValueError, match=var):
        default_pool(env)
