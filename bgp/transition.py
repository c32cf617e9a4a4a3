"""Make-before-break: which sessions to configure while the wanted set of sessions changes.

Purely computational; no I/O. Time is passed in; what a draining session is waiting for is passed
in and handed back (``Drain``), so the caller keeps it and the answer depends on nothing else.

A session the peer computation wants is configured at once. A configured session it no longer
wants is *draining*: it stays until every prefix it provides to us is also provided by a wanted
session that is Established and has sent End-of-RIB since it came up, and has stayed so for
``SETTLE`` seconds; or until ``DEADLINE`` passes since it started draining. Then it goes.

- Why cover by *wanted* sessions only: another draining session is on its way out as well; two old
  sessions covering each other would both go.
- Why End-of-RIB: before it, a new session may still be sending; a prefix it has not sent yet
  would look uncovered, and one it has sent says nothing about the rest.
- Why ``SETTLE`` (2 s): we see only our own Adj-RIB-In. Dropping the session also takes our
  routes from the peer, which decides on its own view; when a route reflector starts reflecting
  between two mesh neighbours it sends both directions in the same batch, and 2 s covers the
  other direction's arrival with a wide margin (each side sees its cover within milliseconds of
  the other here).
- Why ``DEADLINE`` (30 s): a new session is up and has sent End-of-RIB within a few seconds (a
  debounced reload of at most 1 s, the TCP connect, OPEN, the peer's announcements); 30 s is also
  what the agent waits for its peers at start before trusting its routes. A session whose routes
  nobody takes over by then (a removed node, a removed BGPPeer with no replacement) is not kept
  longer. It also bounds the source article's order of steps: a node made a route reflector
  leaves the mesh before the BGPPeer that selects it exists; applied within 30 s of each other
  (or in one ``apply -f``), no traffic is lost.
- A configured session that is not Established and holds no routes (not even graceful-restart
  stale ones) carries nothing either way: it goes at once.
- A route reflector that stops reflecting to a peer (``rr_client`` turns off: the node is no
  longer a reflector, or the BGPPeer went) keeps reflecting to it until ``DEADLINE``: what it
  reflected may be the peer's only route until the peer's own new sessions (the mesh) are up, and
  the reflector cannot see the peer's Adj-RIB-In to know when they are. Reflected routes stay
  correct meanwhile (next hop unchanged), so holding them longer costs nothing but their copies.

>>> from ipaddress import IPv4Address
>>> from bgp.peers import PeerSpec
>>> old = PeerSpec(IPv4Address("10.0.0.2"), 64512, 64512, False, "node-to-node mesh", "b")
>>> new = PeerSpec(IPv4Address("10.0.0.9"), 64512, 64512, False, "global", "rr")
>>> p = plan(frozenset({new}), {old.address: old},
...          {old.address: Session(True, True, frozenset({IPv4Network("10.244.2.0/26")}))}, {}, 0.0)
>>> sorted(s.name for s in p.configure), p.recheck_at
(['b', 'rr'], 30.0)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from bgp.peers import PeerSpec

DEADLINE = 30.0
SETTLE = 2.0


@dataclass(frozen=True)
class Session:
    """What the speaker knows of one configured session now."""

    established: bool
    end_of_rib: bool  # received since the session last came up
    prefixes: frozenset[IPv4Network]  # what it provides to us now (accepted; stale ones too)


@dataclass(frozen=True)
class Drain:
    """A configured session no longer wanted: since when, and since when its prefixes are covered."""

    since: float
    covered_since: float | None = None


@dataclass(frozen=True)
class Plan:
    # The wanted sessions (with rr_client still on where reflection drains) and the draining ones kept.
    configure: frozenset[PeerSpec]
    draining: Mapping[IPv4Address, Drain]  # what still drains; hand back to the next plan()
    recheck_at: float | None  # when the answer changes by time alone; None: only on new input


_NO_SESSION = Session(False, False, frozenset())


def plan(wanted: frozenset[PeerSpec], configured: Mapping[IPv4Address, PeerSpec],
         sessions: Mapping[IPv4Address, Session], draining: Mapping[IPv4Address, Drain],
         now: float, *, deadline: float = DEADLINE, settle: float = SETTLE) -> Plan:
    """The sessions to configure now (see the module docstring for the rules).

    ``configured``: what is configured now, by address; ``sessions``: their state (a missing
    address: not established, no routes); ``draining``: the previous plan's ``draining``.
    """
    by_address = {p.address: p for p in wanted}
    cover = _cover(by_address, sessions)
    kept: dict[IPv4Address, Drain] = {}
    recheck: list[float] = []
    for address, spec in list(by_address.items()):
        before = configured.get(address)
        if before is None or not before.rr_client or spec.rr_client:
            continue
        drain = draining.get(address) or Drain(now)
        if now < drain.since + deadline:  # still reflecting to it: see the module docstring
            by_address[address] = replace(spec, rr_client=True)
            kept[address] = Drain(drain.since)
            recheck.append(drain.since + deadline)
    for address, spec in configured.items():
        if address in by_address:
            continue
        session = sessions.get(address, _NO_SESSION)
        if not session.established and not session.prefixes:
            continue
        drain = draining.get(address) or Drain(now)
        covered_since = None
        if session.prefixes <= cover:
            covered_since = drain.covered_since if drain.covered_since is not None else now
        ends = [drain.since + deadline]
        if covered_since is not None:
            ends.append(covered_since + settle)
        if now >= min(ends):
            continue
        kept[address] = Drain(drain.since, covered_since)
        recheck.append(min(ends))
    old = {configured[a] for a in kept if a not in by_address}
    return Plan(frozenset(by_address.values()) | old, kept,
                min(recheck) if recheck else None)


def _cover(wanted: Mapping[IPv4Address, PeerSpec],
           sessions: Mapping[IPv4Address, Session]) -> frozenset[IPv4Network]:
    """Every prefix a wanted, Established session that sent End-of-RIB provides."""
    cover: set[IPv4Network] = set()
    for address in wanted:
        session = sessions.get(address)
        if session is not None and session.established and session.end_of_rib:
            cover |= session.prefixes
    return frozenset(cover)
