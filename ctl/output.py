"""Table and document rendering in calicoctl's shapes. Purely computational; no I/O."""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import yaml

from crds import API_VERSION, DEFAULT_ASN, IPAMBlock, IPPool, Resource


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """calicoctl's plain aligned columns (tabwriter style, 3 spaces apart)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def boxed(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The boxed table of ``calicoctl node status`` (headers centred, cells left-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {h.center(w)} " for h, w in zip(headers, widths)) + "|"
    body = ["|" + "|".join(f" {str(c).ljust(w)} " for c, w in zip(r, widths)) + "|" for r in rows]
    return "\n".join([rule, head, rule, *body, rule])


def _yes(v: bool) -> str:
    return "true" if v else "false"


def resource_rows(kind: str, items: Sequence[Resource], wide: bool, default_asn: int = DEFAULT_ASN):
    """(headers, rows) for ``get <kind>`` as calicoctl prints them."""
    table = _TABLES.get(kind)
    if table is None:
        raise ValueError(f"kind: no table for {kind}")
    return table(items, wide, default_asn)


def _ippool_rows(items, wide, _asn):
    if wide:
        return (["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "SELECTOR"],
                [[r.name, r.spec.cidr, _yes(r.spec.nat_outgoing), r.spec.ipip_mode,
                  r.spec.vxlan_mode, _yes(r.spec.disabled), r.spec.node_selector] for r in items])
    return ["NAME", "CIDR", "SELECTOR"], [[r.name, r.spec.cidr, r.spec.node_selector] for r in items]


def _bgpconfig_rows(items, _wide, _asn):
    return (["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
            [[r.name, r.spec.log_severity_screen, _yes(r.spec.node_to_node_mesh_enabled),
              str(r.spec.as_number)] for r in items])


def _node_rows(items, wide, default_asn):
    if not wide:
        return ["NAME"], [[r.name] for r in items]
    rows = []
    for r in items:
        bgp = r.spec.bgp
        asn = str(bgp.as_number) if bgp and bgp.as_number else f"({default_asn})"
        rows.append([r.name, asn, (bgp.ipv4_address or "") if bgp else "",
                     (bgp.ipv6_address or "") if bgp else ""])
    return ["NAME", "ASN", "IPV4", "IPV6"], rows


def _bgppeer_rows(items, _wide, _asn):
    """calicoctl's template: NODE is the node, else the nodeSelector, else ``(global)``; ASN is the
    spec's number, ``0`` when unset (a peerSelector peer uses the selected nodes' own AS numbers).
    We print what calicoctl prints, so scripts written against calicoctl keep working."""
    return (["NAME", "PEERIP", "NODE", "ASN"],
            [[r.name, r.spec.peer_ip or "", r.spec.node or r.spec.node_selector or "(global)",
              str(r.spec.as_number or 0)] for r in items])


def _bgpfilter_rows(items, wide, _asn):
    if not wide:
        return ["NAME"], [[r.name] for r in items]
    lists = ("export_v4", "import_v4", "export_v6", "import_v6")
    return (["NAME", "EXPORTV4", "IMPORTV4", "EXPORTV6", "IMPORTV6"],
            [[r.name, *(str(len(getattr(r.spec, attr))) for attr in lists)] for r in items])


def _workloadendpoint_rows(items, _wide, _asn):
    return (["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
            [[r.metadata.namespace or "", r.spec.pod, r.spec.node, ",".join(r.spec.ip_networks),
              r.spec.interface_name] for r in items])


def _ipamblock_rows(items, _wide, _asn):
    return (["NAME", "CIDR", "AFFINITY", "IN USE"],
            [[r.name, r.spec.cidr, r.spec.affinity or "", str(in_use(r))] for r in items])


def _blockaffinity_rows(items, _wide, _asn):
    return (["NAME", "NODE", "CIDR", "STATE"],
            [[r.name, r.spec.node, r.spec.cidr, r.spec.state] for r in items])


def _ipamhandle_rows(items, _wide, _asn):
    return (["NAME", "HANDLEID", "IN USE", "BLOCKS"],
            [[r.name, r.spec.handle_id, str(sum(r.spec.block.values())), ",".join(sorted(r.spec.block))]
             for r in items])


def _ipreservation_rows(items, wide, _asn):
    """calicoctl: NAME; wide adds CIDRS, joined with commas and cut at 80 characters."""
    if not wide:
        return ["NAME"], [[r.name] for r in items]
    return ["NAME", "CIDRS"], [[r.name, _truncate(",".join(r.spec.reserved_cidrs), 80)] for r in items]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _ipamconfig_rows(items, _wide, _asn):
    return (["NAME", "STRICTAFFINITY", "AUTOALLOCATEBLOCKS", "MAXBLOCKSPERHOST"],
            [[r.name, _yes(r.spec.strict_affinity), _yes(r.spec.auto_allocate_blocks),
              str(r.spec.max_blocks_per_host)] for r in items])


def _felixconfig_rows(items, wide, _asn):
    """calicoctl prints only NAME; wide adds the settings pycalico honours."""
    if not wide:
        return ["NAME"], [[r.name] for r in items]
    return (["NAME", "LOGSEVERITY", "ROUTEREFRESH", "ROUTETABLES"],
            [[r.name, r.spec.log_severity_screen, r.spec.route_refresh_interval,
              _table_range(r.spec.route_table_range)] for r in items])


def _table_range(table_range) -> str:
    return f"{table_range.min}-{table_range.max}" if table_range else "1-250"


_TABLES = {
    "IPPool": _ippool_rows, "BGPConfiguration": _bgpconfig_rows, "Node": _node_rows,
    "BGPPeer": _bgppeer_rows, "BGPFilter": _bgpfilter_rows, "WorkloadEndpoint": _workloadendpoint_rows,
    "IPAMBlock": _ipamblock_rows, "BlockAffinity": _blockaffinity_rows, "IPAMHandle": _ipamhandle_rows,
    "IPReservation": _ipreservation_rows, "IPAMConfig": _ipamconfig_rows,
    "FelixConfiguration": _felixconfig_rows,
}


def documents(kind: str, items: Sequence[Resource], revision: int, fmt: str, single: bool) -> str:
    if single and len(items) == 1:
        doc = items[0].to_dict()
    else:
        doc = {"apiVersion": API_VERSION, "items": [r.to_dict() for r in items],
               "kind": f"{kind}List", "metadata": {"resourceVersion": str(revision)}}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False).rstrip()


def since(iso: str | None) -> str:
    """HH:MM:SS for today (as calicoctl prints it), the date for older sessions."""
    if not iso:
        return ""
    when = datetime.fromisoformat(iso)
    now = datetime.now(when.tzinfo)
    return when.strftime("%H:%M:%S") if when.date() == now.date() else when.strftime("%Y-%m-%d")


def _usage(total: int, used: int) -> list[str]:
    pct = lambda n: f"{round(n * 100 / total)}%" if total else "0%"  # noqa: E731 - rounded, as calicoctl
    return [str(total), f"{used} ({pct(used)})", f"{total - used} ({pct(total - used)})"]


def ipam_rows(pools: Sequence[IPPool], blocks: Sequence[IPAMBlock], show_blocks: bool):
    """``calicoctl ipam show [--show-blocks]``: per pool (and block) total, in use and free.

    Blocks inside no pool (their pool was deleted while addresses were still allocated) always get
    their own ``Block (no pool)`` rows: hiding them would hide addresses that pods still hold.
    """
    headers = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    rows = []
    for pool in sorted(pools, key=lambda p: _net_key(p.spec.network)):
        inside = [b for b in blocks if in_pool(b, pool)]
        used = sum(in_use(b) for b in inside)
        rows.append(["IP Pool", pool.spec.cidr, *_usage(pool.spec.network.num_addresses, used)])
        if show_blocks:
            rows.extend(_block_row("Block", b) for b in _sorted_blocks(inside))
    rows.extend(_block_row("Block (no pool)", b) for b in _sorted_blocks(blocks_in_no_pool(pools, blocks)))
    return headers, rows


def blocks_in_no_pool(pools: Sequence[IPPool], blocks: Sequence[IPAMBlock]) -> list[IPAMBlock]:
    return [b for b in blocks if not any(in_pool(b, p) for p in pools)]


def in_pool(block: IPAMBlock, pool: IPPool) -> bool:
    b, p = block.spec.network, pool.spec.network
    return b.version == p.version and b.subnet_of(p)


def allocated_from(pool: IPPool, blocks: Sequence[IPAMBlock]) -> int:
    """Addresses still allocated from ``pool``: non-null allocations of the blocks inside it."""
    return sum(in_use(b) for b in blocks if in_pool(b, pool))


def in_use(block: IPAMBlock) -> int:
    return sum(a is not None for a in block.spec.allocations)


def _block_row(grouping: str, b: IPAMBlock) -> list[str]:
    return [grouping, b.spec.cidr, *_usage(b.spec.network.num_addresses, in_use(b))]


def _sorted_blocks(blocks: Sequence[IPAMBlock]) -> list[IPAMBlock]:
    return sorted(blocks, key=lambda b: _net_key(b.spec.network))


def _net_key(net):
    return (net.version, net)  # IPv4 and IPv6 networks do not compare with each other
