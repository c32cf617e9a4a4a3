"""felix.inspect.compare: every route with its reason and whether the kernel matches."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from felix.calc import DesiredRoute, dst_key
from felix.inspect import NOT_DESIRED, KernelRoute, compare, route_matches

N = IPv4Network
K = dst_key
A = IPv4Address

WL = DesiredRoute(K("10.244.1.5/32"), "unicast", "cali0123456789a", None, "link", "local workload p")
BH = DesiredRoute(K("10.244.1.0/26"), "blackhole", None, None, "universe", "local block")
GW = DesiredRoute(K("10.244.2.0/26"), "unicast", None, A("192.168.5.2"), "universe", "learned from peer")


def kernel_of(route: DesiredRoute, **changes) -> KernelRoute:
    fields = dict(dst=route.dst, type=route.type, dev=route.dev, gateway=route.gateway,
                  scope=route.scope, proto=80)
    fields.update(changes)
    return KernelRoute(**fields)


def test_gateway_route_matches_whatever_dev_the_kernel_resolved():
    assert route_matches(GW, kernel_of(GW, dev="eth0"))
    assert not route_matches(GW, kernel_of(GW, gateway=A("192.168.5.3")))


def test_workload_route_needs_its_dev_and_scope():
    assert route_matches(WL, kernel_of(WL))
    assert not route_matches(WL, kernel_of(WL, dev="cali0000000000b"))
    assert not route_matches(WL, kernel_of(WL, scope="universe"))
    assert not route_matches(BH, kernel_of(BH, type="unicast"))


def test_compare_lists_every_route_sorted_with_reason_and_sync_state():
    stale = KernelRoute(N("10.244.3.0/26"), "unicast", "eth0", A("192.168.5.7"), "universe", 80)
    desired = {r.key: r for r in (WL, BH, GW)}
    kernel = {
        WL.key: kernel_of(WL),
        GW.key: kernel_of(GW, gateway=A("192.168.5.9")),
        K(stale.dst): stale,
    }
    statuses = compare(desired, kernel)
    got = [(str(s.dst), s.reason, s.in_sync, s.kernel is not None) for s in statuses]
    assert got == [
        ("10.244.1.0/26", "local block", False, False),       # missing from the kernel
        ("10.244.1.5/32", "local workload p", True, True),
        ("10.244.2.0/26", "learned from peer", False, True),   # wrong gateway
        ("10.244.3.0/26", NOT_DESIRED, False, True),           # ours, no longer wanted
    ]
    assert statuses[1].desired is WL and statuses[3].desired is None
    assert [s.state for s in statuses] == ["missing", "ok", "differs", "not-desired"]


def test_compare_lists_routes_in_network_order_not_in_key_order():
    """What ``pycalicoctl node routes`` shows: by address, then length, as networks sort. A key
    holds the length in its high bits, so sorting the keys would put every /24 before every /26."""
    nets = ["10.244.2.0/24", "10.244.1.64/26", "10.244.0.0/16", "10.244.1.0/24", "10.244.1.5/32",
            "10.245.0.0/26"]
    desired = {K(n): DesiredRoute(K(n), "blackhole", None, None, "universe", "b") for n in nets}
    want = sorted(map(N, nets))
    assert [N(n) for n in sorted(nets, key=K)] != want  # the keys' own order differs
    assert [s.dst for s in compare(desired, {})] == want
    kernel = {K(n): kernel_of(desired[K(n)]) for n in nets[:3]}
    assert [s.dst for s in compare(dict(reversed(desired.items())), kernel)] == want


def test_state_of_a_stale_route_never_depends_on_its_reason_text():
    """Regression (issue 5, 12): the CLI matched the reason text and called a stale route 'differs'."""
    stale = KernelRoute(N("10.244.3.0/26"), "unicast", "eth0", A("192.168.5.7"), "universe", 80)
    [status] = compare({}, {K(stale.dst): stale})
    assert status.state == "not-desired"


def test_compare_of_nothing_is_empty():
    assert compare({}, {}) == []


def test_pure_modules_import_no_netlink():
    """felix.calc and felix.inspect are the pure stages: importing them must not load pyroute2."""
    import subprocess
    import sys

    code = "import sys, felix.calc, felix.inspect; print(any(m.startswith('pyroute2.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
