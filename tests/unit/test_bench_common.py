"""The benchmarks' shared arithmetic (timings themselves are never asserted in tests)."""
import pytest

from bench.common import percentile


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def _notification(mtype: int, dst: str, dst_len: int, proto: int) -> bytes:
    """One route notification as the kernel lays it out (nlmsghdr, then rtmsg and attributes)."""
    import struct
    from ipaddress import IPv4Address

    from felix import rtnl

    body = rtnl.route_image(dst=int(IPv4Address(dst)), dst_len=dst_len, table=254, proto=proto)
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_the_route_reflector_benchs_watcher_folds_notifications_into_destinations():
    """bench.route_reflector reads its clients' kernels with bench.bgp_convergence's netlink
    helpers: a change of their shapes there must not leave its watcher counting nothing (its
    thread died on the first notification and every run ended at the 300 s timeout)."""
    from bench.route_reflector import KernelWatch

    watch = KernelWatch(["ns-a"], proto=12)
    batch = b"".join([_notification(24, "10.244.1.0", 26, 12), _notification(24, "10.244.1.64", 26, 12),
                      _notification(24, "10.244.9.0", 26, 80)])  # another proto: not counted
    assert watch._apply(0, batch) is True
    assert len(watch.dsts[0]) == 2
    assert watch._apply(0, _notification(24, "10.244.1.0", 26, 12)) and len(watch.dsts[0]) == 2  # a replace
    assert watch._apply(0, _notification(25, "10.244.1.0", 26, 12)) and len(watch.dsts[0]) == 1
