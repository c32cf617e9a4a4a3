"""One parsed route shared by every target peer of an API command, inside the ExaBGP child; and
the command's ``neighbor A , neighbor B ...`` selector matched without a regex per peer per target.

Standard library and ExaBGP only: ``exabgp_main.py`` loads it before ExaBGP starts.

Why: ExaBGP 5.0.15 gives every peer named by an API command its own deep copy of each route
(``_Configuration.inject_change`` -> ``Neighbor.remove_self`` -> ``deepcopy``), although the copy is
needed only to rewrite a ``next-hop self`` per peer. For a route reflector that is every route
times every client: ~140 us of CPU per route per peer, so 50 clients x 20 blocks took 7-10 CPU-s
and 210 MB against BIRD's 0.04 s and 4 MB (``python -m bench.route_reflector``). ``share_routes``
replaces ``inject_change`` with one that queues the *same* route object in every target's
Adj-RIB-Out when its next hop is not ``self``, and still copies (through ``remove_self``) when it is.

Sharing is safe only while nothing changes a queued route in place for one peer. In the exact
code this was read in, the outgoing RIB copies before it turns a route into a withdrawal
(``OutgoingRIB.del_from_rib``), stores and yields routes without changing them (``add_to_rib``,
``_update_rib``, ``updates``, the cache), and UPDATEs are packed per session without changing the
route (``Update.messages``, ``Attributes.pack``). The one exception, ``announce_watchdog``, serves
``watchdog`` attributes, which the speaker never sends.

The selector: for every announce/withdraw command, ExaBGP 5.0.15 runs ``match_neighbor`` (a regex
search) for every configured peer against every ``neighbor X`` the command names: a reflected line
names every client but its source, so that is clients^2 regex searches per line (~0.5 of the 1.5
CPU-s left at 50 clients). ``memo_match_neighbors`` returns the same peers in the same order from a
table of ``match_neighbor`` results, a pure function of (description, peer name).

So the adaptation is pinned: it applies only
to ExaBGP release ``PINNED_RELEASE`` whose functions in ``PINNED_SOURCES`` hash to what was read;
anything else leaves ExaBGP as shipped (slow, correct) and says so on stderr.
``PYCALICO_EXABGP_SHARE_ROUTES=0`` leaves it as shipped too (the benchmark's "before").
"""
from __future__ import annotations

import importlib
import inspect
import linecache
import os
import sys

try:  # the built-in SHA-256: hashlib would map OpenSSL's libcrypto into ExaBGP (~4 MB of RSS)
    from _sha256 import sha256
except ImportError:  # Python 3.12 and later
    from _sha2 import sha256

PINNED_RELEASE = "5.0.15"
# sha256 of each function's source in the pinned release: the one replaced, and those whose
# behaviour makes sharing safe (see the module docstring).
PINNED_SOURCES = {
    "exabgp.configuration.configuration:_Configuration.inject_change":
        "061dae4651ca234dd6ed1a92f8bd035d991327087145c6893975836b994ad260",
    "exabgp.bgp.neighbor:Neighbor.remove_self":
        "cbd04747e6f3e8345b2591aea898be36c58c4a3fa26c2aecef1909d05ef517a2",
    "exabgp.rib.outgoing:OutgoingRIB.add_to_rib":
        "fe7ea3a347789c4e5b0474b1e5fddfbb23400e85d550e4e5386539fd12ae5145",
    "exabgp.rib.outgoing:OutgoingRIB._update_rib":
        "3c013bdc1a0339778facc04be26d69ad0d2a66975dfd5fb9f3d84b789de2caa2",
    "exabgp.rib.outgoing:OutgoingRIB.del_from_rib":
        "ea441a8f2781ba0c2ccbd44c40d44b2bac1e253930572600e925bbda626ca19c",
    "exabgp.rib.outgoing:OutgoingRIB.updates":
        "49a023385063c86e3d6398a6c6ac88459856b8a4d737eaedb3622b423e85e875",
    "exabgp.rib.outgoing:OutgoingRIB.announce_watchdog":
        "1dd955dc0afe1e0532ffbe5aca6ae229b48a131bc06d2d54fc1f7eeb5973e3db",
    "exabgp.rib.cache:Cache.in_cache":
        "2400365c916f5e9f345c78fece16f92f1ab66932b4f022dd8a44efbd78454685",
    "exabgp.rib.cache:Cache.update_cache":
        "9fa33d6bd3d12decb72001c1275124d01318bc9291d69460aa591ab4a3db61a1",
    "exabgp.bgp.message.update:Update.messages":
        "2f245ef279ad1ac0cccb76cfaef255135b9bb37a2850fa779e056e9ada418386",
    "exabgp.bgp.message.update:Update._split_nlris":
        "9d693e7f9bc15a494171cc740cfa887138bc7df09a6b3aeea625eb207ae5ee45",
    "exabgp.reactor.api.command.limit:match_neighbor":
        "dca3aaac8c0cb734a7c38d8e473e10e6f9b8dc0e10921f9c79de0635b1950203",
    "exabgp.reactor.api.command.limit:match_neighbors":
        "fb09040781fd15ba8036c18e2a7a4e85f7a58f2ddbea629720229a1df0483244",
    "exabgp.bgp.message.update.attribute.attributes:Attributes.pack":
        "bc79206eef2ce2f5ac7237032064b192144e7bac953f3b87890f82391f17c099",
}
ENV_SWITCH = "PYCALICO_EXABGP_SHARE_ROUTES"
SHARED_NOTICE = "API routes shared across peers"  # in the ExaBGP log when the adaptation applies


def resolve(name: str):
    module, _, qualname = name.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def source_hash(name: str) -> str:
    return sha256(inspect.getsource(resolve(name)).encode()).hexdigest()


def mismatches(pinned: dict[str, str] = PINNED_SOURCES) -> list[str]:
    """The pinned functions whose source is not what was read (missing ones included)."""
    out = []
    for name, digest in pinned.items():
        try:
            if source_hash(name) != digest:
                out.append(name)
        except (ImportError, AttributeError, OSError, TypeError):
            out.append(name)
    return out


def refusal(release: str, pinned: dict[str, str] = PINNED_SOURCES) -> str | None:
    """Why the adaptation must not be applied to this ExaBGP, or None when it may."""
    if release != PINNED_RELEASE:
        return f"exabgp {release} is not {PINNED_RELEASE}"
    changed = mismatches(pinned)
    linecache.clearcache()  # the sources read for the hashes: not kept for the process's life
    if changed:
        return f"exabgp {release} differs from the code this was read in: {', '.join(changed)}"
    return None


def shared_inject_change(self, peers, change):
    """``_Configuration.inject_change`` of ExaBGP 5.0.15, with the route object shared by every
    target unless its next hop is ``self`` (then each peer gets ``remove_self``'s copy, as shipped)."""
    shared = None if change.nlri.nexthop.SELF else change
    family = change.nlri.family().afi_safi()
    result = False
    for neighbor_name in self.neighbors:
        if neighbor_name in peers:
            neighbor = self.neighbors[neighbor_name]
            if family in neighbor.families():
                neighbor.rib.outgoing.add_to_rib(shared if shared is not None
                                                 else neighbor.remove_self(change))
                result = True
            else:
                from exabgp.logger import log

                log.error(
                    lambda change=change, neighbor_name=neighbor_name: (
                        f'the route family ({change.nlri.short()}) is not configured on neighbor {neighbor_name}'
                    ),
                    'configuration',
                )
    return result


_MATCHES: dict[tuple[tuple[str, ...], str], bool] = {}
_MATCHES_MAX = 1 << 18  # (description, peer) pairs: peers^2 at most; a bound all the same


def memo_match_neighbors(peers, descriptions):
    """``match_neighbors`` of ExaBGP 5.0.15 (the peers matching any description, in ``peers``'
    order, each once, or ``peers`` when there is no description), memoising ``match_neighbor``."""
    from exabgp.reactor.api.command.limit import match_neighbor

    if not descriptions:
        return peers
    if len(_MATCHES) > _MATCHES_MAX:
        _MATCHES.clear()
    keys = [tuple(d) for d in descriptions]
    returned = []
    for peer_name in peers:
        for key in keys:
            hit = _MATCHES.get((key, peer_name))
            if hit is None:
                hit = _MATCHES[key, peer_name] = match_neighbor(list(key), peer_name)
            if hit:
                returned.append(peer_name)
                break
    return returned


def share_routes(environ=os.environ) -> bool:
    """Apply the adaptation if this is the pinned ExaBGP (see the module docstring); whether it was."""
    from exabgp.configuration.configuration import _Configuration
    from exabgp.reactor.api.command import announce, limit
    from exabgp.version import release

    if environ.get(ENV_SWITCH, "1") == "0":
        return False
    why = refusal(release)
    if why is None and announce.match_neighbors is not limit.match_neighbors:
        why = "exabgp's announce commands do not use limit.match_neighbors"
    if why is not None:
        print(f"pycalico: {why}: every route is copied per peer, as shipped (slower with many peers)",
              file=sys.stderr)
        return False
    _Configuration.inject_change = shared_inject_change
    announce.match_neighbors = memo_match_neighbors
    print(f"pycalico: {SHARED_NOTICE} (exabgp {release} as pinned)", file=sys.stderr)
    return True
