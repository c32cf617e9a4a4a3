"""natOutgoing: masquerade pod traffic that leaves every IP pool, with one nftables table per family.

Calico's rule (Felix ``cali-nat-outgoing``): a packet from a natOutgoing pool to a destination
outside *all* pools is masqueraded; pod-to-pod traffic, even across pools, keeps its source. Disabled
pools still count as pools (their pods still exist) and still NAT if they say so: pass them in.

Two halves in one module:

- pure: ``desired_rulesets(pools)`` -> ``{"ip": NatRuleset | None, "ip6": ...}``, ``render_script``
  (the nft text) and ``parse_table`` (``nft -j`` JSON back into a ``NatRuleset``). No I/O.
- I/O: ``NatTable`` runs ``nft`` (inside ``ip netns exec NAME`` when given a namespace). Ownership is
  decided up front: we own ``table ip pycalico`` and ``table ip6 pycalico`` and never name another.

Each write is one ``nft -f -`` transaction that creates-then-deletes our table and defines it again,
so the kernel holds exactly the desired table afterwards, or, on any error, the old one untouched
(``table X`` + ``delete table X`` also makes removing an absent table a no-op).

``masquerade fully-random`` by default, as Felix: "Where supported, Felix now uses the iptables
--random-fully option when programming SNAT and MASQUERADE rules" (projectcalico/felix#1901; the
``MASQFullyRandom`` feature flag, overridable since #2310). Every kernel with nftables NAT supports
it. It avoids the source-port collisions (and dropped SYNs) of the default port choice under many
flows; ``NatTable(fully_random=False)`` is the override.

Example::

    >>> from ipaddress import ip_network as net
    >>> want = desired_rulesets([(net("10.245.0.0/16"), False), (net("10.244.0.0/16"), True)])
    >>> want["ip6"] is None
    True
    >>> print(render_script(want))  # doctest: +NORMALIZE_WHITESPACE
    table ip pycalico
    delete table ip pycalico
    table ip pycalico {
        set all-pools {
            type ipv4_addr
            flags interval
            elements = { 10.244.0.0/15 }
        }
        set nat-pools {
            type ipv4_addr
            flags interval
            elements = { 10.244.0.0/16 }
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr @nat-pools ip daddr != @all-pools counter masquerade fully-random
        }
    }
    table ip6 pycalico
    delete table ip6 pycalico
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import (IPv4Network, IPv6Network, collapse_addresses, ip_address, ip_network,
                       summarize_address_range)

log = logging.getLogger(__name__)

TABLE = "pycalico"
CHAIN = "postrouting"
NAT_SET, ALL_SET = "nat-pools", "all-pools"
FAMILIES = ("ip", "ip6")
SRCNAT = 100  # what nft prints for "priority srcnat"
NFT_TIMEOUT = 10.0

Network = IPv4Network | IPv6Network
_VERSION = {"ip": 4, "ip6": 6}
_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}


# --- pure: desired state, rendering, parsing ---------------------------------------------------

@dataclass(frozen=True)
class NatRuleset:
    """Our table of one family; pool tuples are collapsed and sorted, so equal means same kernel."""

    family: str
    nat_pools: tuple[Network, ...]
    all_pools: tuple[Network, ...]
    fully_random: bool = True

    def render(self) -> str:
        sets = "".join(self._render_set(name, nets) for name, nets in
                       ((ALL_SET, self.all_pools), (NAT_SET, self.nat_pools)))
        masq = "masquerade fully-random" if self.fully_random else "masquerade"
        f = self.family
        return (f"table {f} {TABLE} {{\n{sets}"
                f"\tchain {CHAIN} {{\n"
                f"\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
                f"\t\t{f} saddr @{NAT_SET} {f} daddr != @{ALL_SET} counter {masq}\n"
                f"\t}}\n}}\n")

    def _render_set(self, name: str, nets: tuple[Network, ...]) -> str:
        elements = f"\t\telements = {{ {', '.join(map(str, nets))} }}\n" if nets else ""
        return (f"\tset {name} {{\n\t\ttype {_ADDR_TYPE[self.family]}\n"
                f"\t\tflags interval\n{elements}\t}}\n")


def pool_network(cidr: Network | str) -> Network:
    """``cidr`` as a network; ``ValueError`` naming it when it is not one (host bits set, junk)."""
    if isinstance(cidr, (IPv4Network, IPv6Network)):
        return cidr
    try:
        return ip_network(cidr)
    except ValueError as e:
        raise ValueError(f"IP pool CIDR {cidr!r} is not a network: {e}") from None


def _canonical(nets: Iterable[Network]) -> tuple[Network, ...]:
    # Collapsed: an interval set refuses overlapping elements, and nft lists merged neighbours.
    return tuple(sorted(collapse_addresses(sorted(set(nets)))))


def desired_rulesets(pools: Iterable[tuple[Network | str, bool]], fully_random: bool = True,
                     ) -> dict[str, NatRuleset | None]:
    """``(pool cidr, natOutgoing)`` pairs -> our table per family, ``None`` where nothing NATs."""
    parsed = [(pool_network(cidr), bool(nat)) for cidr, nat in pools]
    out: dict[str, NatRuleset | None] = {}
    for family in FAMILIES:
        mine = [(n, nat) for n, nat in parsed if n.version == _VERSION[family]]
        nat_pools = _canonical(n for n, nat in mine if nat)
        out[family] = (NatRuleset(family, nat_pools, _canonical(n for n, _ in mine), fully_random)
                       if nat_pools else None)
    return out


def render_script(desired: Mapping[str, NatRuleset | None]) -> str:
    """One nft transaction making the kernel hold exactly ``desired`` for the families given."""
    parts = []
    for family in sorted(desired):
        if family not in _VERSION:
            raise AssertionError(f"Bug: unknown nft family {family!r}")
        parts.append(f"table {family} {TABLE}\ndelete table {family} {TABLE}\n")
        if desired[family] is not None:
            parts.append(desired[family].render())
    return "".join(parts)


class UnexpectedTable(ValueError):
    """Our table exists but is not of the shape we write: someone edited it (drift)."""


def _rule_expr(family: str, fully_random: bool) -> list[dict]:
    def match(op: str, field: str, set_name: str) -> dict:
        return {"match": {"op": op, "left": {"payload": {"protocol": family, "field": field}},
                          "right": f"@{set_name}"}}
    return [match("==", "saddr", NAT_SET), match("!=", "daddr", ALL_SET),
            {"counter": {"packets": 0, "bytes": 0}},
            {"masquerade": {"flags": "fully-random"} if fully_random else None}]


def _element(elem: object) -> list[Network]:
    if isinstance(elem, str):
        return [ip_network(elem)]
    if isinstance(elem, dict) and "prefix" in elem:
        return [ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")]
    if isinstance(elem, dict) and "range" in elem:
        lo, hi = (ip_address(a) for a in elem["range"])
        return list(summarize_address_range(lo, hi))
    raise UnexpectedTable(f"set element {elem!r}")


def _set_networks(family: str, obj: dict) -> tuple[Network, ...]:
    if obj.get("type") != _ADDR_TYPE[family] or obj.get("flags") != ["interval"]:
        raise UnexpectedTable(f"set {obj.get('name')}: type {obj.get('type')} flags {obj.get('flags')}")
    return _canonical(n for e in obj.get("elem", []) for n in _element(e))


def _strip_counter(expr: list[dict]) -> list[dict]:
    return [{"counter": {"packets": 0, "bytes": 0}} if "counter" in e else e for e in expr]


def _objects(doc: dict) -> dict[str, list[dict]]:
    """``nft -j list table`` output grouped by kind (table, set, chain, rule, map, ...)."""
    kinds: dict[str, list[dict]] = {}
    for item in doc.get("nftables", []):
        for kind, obj in item.items():
            if kind != "metainfo":
                kinds.setdefault(kind, []).append(obj)
    return kinds


def parse_table(family: str, doc: dict) -> NatRuleset:
    """The ``NatRuleset`` that ``nft -j list table FAMILY pycalico`` shows, counters ignored.

    Only the fields we write are compared; anything else of ours being there (another set, chain or
    rule, a map) raises ``UnexpectedTable`` with what differs.
    """
    kinds = _objects(doc)
    if set(kinds) - {"table", "set", "chain", "rule"}:
        raise UnexpectedTable(f"unexpected objects {sorted(set(kinds) - {'table', 'set', 'chain', 'rule'})}")
    sets = {s.get("name"): s for s in kinds.get("set", [])}
    if sorted(sets) != sorted((NAT_SET, ALL_SET)):
        raise UnexpectedTable(f"sets {sorted(sets)}")
    chains = kinds.get("chain", [])
    want_chain = {"name": CHAIN, "type": "nat", "hook": "postrouting", "prio": SRCNAT, "policy": "accept"}
    if len(chains) != 1 or {k: chains[0].get(k) for k in want_chain} != want_chain:
        raise UnexpectedTable(f"chains {chains}")
    rules = kinds.get("rule", [])
    if len(rules) != 1:
        raise UnexpectedTable(f"{len(rules)} rules, want 1")
    expr = _strip_counter(rules[0].get("expr", []))
    for fully_random in (True, False):
        if expr == _rule_expr(family, fully_random):
            return NatRuleset(family, _set_networks(family, sets[NAT_SET]),
                              _set_networks(family, sets[ALL_SET]), fully_random)
    raise UnexpectedTable(f"rule {rules[0].get('expr')}")


def rule_counter(doc: dict) -> tuple[int, int]:
    """``(packets, bytes)`` masqueraded so far, from ``nft -j list table`` output."""
    for rule in _objects(doc).get("rule", []):
        for e in rule.get("expr", []):
            if "counter" in e:
                return e["counter"]["packets"], e["counter"]["bytes"]
    return 0, 0


# --- I/O: the nft runner and the table owner -------------------------------------------------------

class NftError(RuntimeError):
    """``nft`` failed or timed out; ``stderr`` is nft's own explanation."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = argv, returncode, stderr.strip()
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(argv)} {status}: {self.stderr}")


class NatTable:
    """Owns ``table ip pycalico`` and ``table ip6 pycalico`` in one network namespace.

    ``netns`` given: run nft via ``ip netns exec NAME`` (tests, the lab); ``None``: the current
    namespace (the agent runs inside its node's). ``writes`` and ``reads`` count nft invocations:
    an idle agent must not move ``writes``, and ``apply`` with unchanged pools runs nft not at all.
    """

    def __init__(self, netns: str | None = None, *, fully_random: bool = True,
                 nft: str = "nft", timeout: float = NFT_TIMEOUT) -> None:
        self.netns, self.fully_random, self.timeout = netns, fully_random, timeout
        self._nft = nft
        self._lock = asyncio.Lock()
        # family -> what the kernel holds as far as we know (None: absent). A family missing here
        # is unknown (start, after a failed write, after drift): the next apply reads it first.
        self._known: dict[str, NatRuleset | None] = {}
        self.last_script = ""
        self.writes = 0
        self.reads = 0

    async def apply(self, pools: Iterable[tuple[Network | str, bool]]) -> bool:
        """Make the kernel hold the tables ``pools`` ask for; True if nft wrote something."""
        desired = desired_rulesets(pools, self.fully_random)
        async with self._lock:
            stale = [f for f in FAMILIES if f not in self._known or self._known[f] != desired[f]]
            unknown = [f for f in stale if f not in self._known]
            if unknown:  # adopt what a previous run left, if it is exactly what we want
                observed = await self._observe(unknown)
                stale = [f for f in stale if f not in observed or observed[f] != desired[f]]
            if not stale:
                return False
            await self._write({f: desired[f] for f in stale})
            return True

    async def remove(self) -> bool:
        """Delete both our tables (absent ones are fine); True if nft wrote something."""
        return await self.apply([])

    async def in_sync(self, pools: Iterable[tuple[Network | str, bool]] | None = None) -> bool:
        """Whether the kernel holds what ``pools`` ask for (default: what we last applied).

        Reads only (one ``nft list tables`` plus one ``list table`` per table present). What it
        sees replaces what we believed, so the next ``apply`` repairs a drifted table.
        """
        async with self._lock:
            if pools is not None:
                target = desired_rulesets(pools, self.fully_random)
            elif set(self._known) != set(FAMILIES):
                return False  # never applied, or drift already seen: apply() must read and decide
            else:
                target = dict(self._known)
            observed = await self._observe(list(FAMILIES))
            drifted = [f for f in FAMILIES if f not in observed or observed[f] != target[f]]
            if drifted:
                log.info("nat table differs from the desired one", extra={"families": drifted})
            return not drifted

    async def counters(self) -> dict[str, tuple[int, int]]:
        """``{family: (packets, bytes)}`` masqueraded, for the families whose table exists."""
        present = await self._present()
        return {f: rule_counter(await self._list(f)) for f in FAMILIES if f in present}

    async def _observe(self, families: list[str]) -> dict[str, NatRuleset | None]:
        """The kernel's tables; a family whose table has an unknown shape is left out (drift)."""
        present = await self._present()
        observed: dict[str, NatRuleset | None] = {}
        for family in families:
            try:
                observed[family] = (parse_table(family, await self._list(family))
                                    if family in present else None)
            except UnexpectedTable as e:
                log.info("nat table not as we write it", extra={"family": family, "reason": str(e)})
                self._known.pop(family, None)  # unknown shape: only a rewrite makes it ours again
                continue
            self._known[family] = observed[family]
        return observed

    async def _present(self) -> set[str]:
        doc = json.loads(await self._run(["-j", "list", "tables"]))
        return {t["family"] for t in _objects(doc).get("table", []) if t.get("name") == TABLE}

    async def _list(self, family: str) -> dict:
        return json.loads(await self._run(["-j", "list", "table", family, TABLE]))

    async def _write(self, desired: dict[str, NatRuleset | None]) -> None:
        script = render_script(desired)
        for family in desired:
            self._known.pop(family, None)  # unknown until nft says it worked
        self.writes += 1
        await self._run(["-f", "-"], script)
        self._known.update(desired)
        self.last_script = script
        log.info("nat tables written", extra={"families": sorted(desired),
                                              "nat": {f: [str(n) for n in r.nat_pools]
                                                      for f, r in desired.items() if r}})

    async def _run(self, args: list[str], stdin: str | None = None) -> str:
        argv = (["ip", "netns", "exec", self.netns] if self.netns else []) + [self._nft, *args]
        if stdin is None:
            self.reads += 1
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout)
        except TimeoutError:
            raise NftError(argv, None, f"no answer within {self.timeout}s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave nft behind
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise NftError(argv, proc.returncode, err.decode(errors="replace"))
        return out.decode()
