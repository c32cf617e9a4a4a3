"""Felix: turn the cluster's state into this node's routes, and keep the kernel in step.

Contract of the modules:

- ``felix.calc`` -- purely computational, no I/O, never imports pyroute2. Frozen ``CalcInput``
  (node, pools, blocks, workloads, learned BGP routes) in, a frozen mapping ``dst_key -> DesiredRoute``
  out (a destination is one int, ``prefix length << 32 | address``; ``dst_key``, ``key_network`` and
  ``key_text`` convert). Depends on the current state only, never on history or on input order.
- ``felix.inspect`` -- purely computational: ``compare(desired, kernel)`` explains every route (its
  reason, whether the kernel matches). Used by ``pycalicoctl node routes``. ``KernelRoute`` lives here
  so that inspection needs no netlink.
- ``felix.dataplane`` -- the route writer. ``RouteTable.apply(desired)`` diffs against the routes it
  owns (``route_is_ours``: our ``proto`` number, 80) and writes only the difference: deletes, then
  ``replace``. Routes of any other proto are never touched; identical state means zero writes, which
  is how a restarted agent adopts its routes without a flap. Incremental mode keeps a cache of our
  routes fed by our own writes and netlink notifications (a full dump at start, on the refresh
  timer and after lost notifications) and reports drift, which the agent repairs at once. The hot
  path is ``felix.rtnl``: our own ``struct``-packed netlink (batched sends, errors mapped back by
  sequence number, a dump reader that skips other tables), stdlib only; pyroute2 stays for links,
  addresses, neighbours and namespaces.
- ``felix.encap`` -- the tunnels and NAT a node needs for its pools, applied before the routes:
  ``felix.tunnels`` (``vxlan.calico`` with its VTEP, a permanent neighbour and FDB entry per remote
  VTEP; ``tunl0`` where the kernel has ipip) and ``felix.nat`` (one nftables table, replaced
  atomically, masquerading natOutgoing pools' traffic leaving all pools).
- ``felix.cluster`` -- purely computational: the agent's view of the datastore (syncer batches in)
  and its conversion into ``CalcInput`` and the BGP inputs (nodes, global config, exports).
- ``felix.agent`` -- ``pycalico-node``: wires datastore, BGP and the two stages together (one
  level-triggered loop; nothing written before the datastore is in sync; routes left in place on
  exit). ``felix.status`` -- its local unix-socket status endpoint, read by ``pycalicoctl node``.

Example (pure part)::

    >>> from ipaddress import IPv4Address, IPv4Network
    >>> from felix.calc import Block, CalcInput, Workload, desired_routes, key_text
    >>> inp = CalcInput(node="n1", pools=frozenset({IPv4Network("10.244.0.0/16")}),
    ...     blocks=frozenset({Block(IPv4Network("10.244.1.0/26"), "n1")}),
    ...     workloads=frozenset({Workload(IPv4Address("10.244.1.5"), "cali0123456789a", "n1", "p")}),
    ...     learned=frozenset())
    >>> [(key_text(k), r.type) for k, r in desired_routes(inp).items()]
    [('10.244.1.0/26', 'blackhole'), ('10.244.1.5/32', 'unicast')]
"""
# Before anything imports pyroute2: load only the parts we use (hostio.lean: 6 MB less per node).
from hostio.lean import lean_pyroute2 as _lean_pyroute2  # noqa: E402

_lean_pyroute2()

