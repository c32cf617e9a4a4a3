"""Sans-I/O ExaBGP 5 API line protocol, in the style of h11.

Purely computational; no I/O. ``Channel.feed(line)`` turns one line that ExaBGP wrote to its API
process into events; ``Channel.command(line)`` turns one command into the bytes to write and
remembers it until ExaBGP acknowledges it (acks come back in order: ``done`` / ``error``).

ExaBGP 5 JSON facts this parser relies on (checked against 5.0.15, see LIBRARY-NOTES):
``type`` is ``state`` (``connected``/``up``/``down`` + ``reason``), ``fsm`` (``ACTIVE``, ``IDLE``,
``CONNECT``, ``OPENSENT``, ``OPENCONFIRM``, ``ESTABLISHED``), ``open``, ``notification`` or
``update``; updates carry ``message.update.announce["ipv4 unicast"][nexthop] = [{"nlri": P}]``,
``message.update.withdraw["ipv4 unicast"] = [{"nlri": P}]``, and End-of-RIB as ``message.eor``.
With ``exabgp.api.compact=true`` an NLRI without extra fields is the bare string ``P``: both forms
are accepted. Other lines (e.g. ``reload in progress``) are informational text.

One UPDATE is one event per next hop, not one per route: BIRD packs ~1,000 /26s into an UPDATE,
and 100k routes are then ~100 events, not 100k objects to create, match and dispatch. The events
carry each prefix as an integer key (``length << 32 | address``, ``prefix_key``; the same key as
``felix.rtnl.route_key``: the address in the low bits, which a dict or set indexes by; keys do not
sort as networks do, ``network_order`` does), parsed straight from ExaBGP's text: no ``IPv4Network`` per learned route
(100k of them were 15 MB and ~1 us each to build), ``prefixes`` builds them on demand.

>>> ch = Channel()
>>> ch.command("reload")
b'reload\\n'
>>> ch.feed("done")
[Ack(command='reload')]
"""
from __future__ import annotations

import json
from itertools import repeat
from operator import and_, itemgetter, or_
from socket import AF_INET, inet_pton  # address conversion only (no I/O)
from struct import error as struct_error, unpack
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

IPV4_UNICAST = "ipv4 unicast"
# Prefixes per batch command. ExaBGP parses `announce attributes ... nlri P1 P2 ...` ~6x faster
# than one line per route, and one line stays far below any pipe or JSON limit.
BATCH_SIZE = 500


def all_ints(values: tuple) -> bool:
    """Whether every value is an int (in C: a set of their types)."""
    return not values or set(map(type, values)) == {int}


def _keys_of(event: object) -> None:
    """``keys`` as integer keys: a caller may construct an event with ``IPv4Network`` values."""
    keys = event.keys  # type: ignore[attr-defined]
    if type(keys) is not tuple or not all_ints(keys):
        object.__setattr__(event, "keys", tuple(k if type(k) is int else prefix_key(k) for k in keys))


@dataclass(frozen=True)
class RoutesAnnounced:
    """``keys`` (``prefix_key``) announced by ``peer`` with one next hop (in the order of the UPDATE), the
    UPDATE's route-reflection attributes (RFC 4456): ORIGINATOR_ID and CLUSTER_LIST, if present,
    and what best-path selection compares (RFC 4271 9.1): ``origin`` (0 igp, 1 egp, 2 incomplete),
    ``as_path_len`` (an AS_SET counts as one), ``neighbor_as`` (the first AS of the AS_PATH, None
    when it is empty or starts with an AS_SET: then it is the local AS), LOCAL_PREF and MED (None:
    absent)."""

    peer: IPv4Address
    nexthop: IPv4Address
    keys: tuple[int, ...]
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    # The attributes a reflector passes on unchanged (origin, AS path, LOCAL_PREF, MED,
    # communities), already in ExaBGP's command syntax; the RIB reads the typed fields below.
    attributes: str = ""
    origin: int = 0
    as_path_len: int = 0
    neighbor_as: int | None = None
    local_pref: int | None = None
    med: int | None = None

    __post_init__ = _keys_of

    @property
    def prefixes(self) -> tuple[IPv4Network, ...]:
        return tuple(map(key_network, self.keys))


@dataclass(frozen=True)
class RoutesWithdrawn:
    peer: IPv4Address
    keys: tuple[int, ...]  # prefix_key

    __post_init__ = _keys_of

    @property
    def prefixes(self) -> tuple[IPv4Network, ...]:
        return tuple(map(key_network, self.keys))


@dataclass(frozen=True)
class EndOfRib:
    peer: IPv4Address
    family: str


@dataclass(frozen=True)
class PeerStateChanged:
    """``state`` is lower case: up/down/connected (session events) or an FSM state name."""

    peer: IPv4Address
    state: str
    reason: str = ""


@dataclass(frozen=True)
class OpenReceived:
    """The peer's OPEN. ``restart_time`` is None when it did not offer graceful restart."""

    peer: IPv4Address
    router_id: IPv4Address
    hold_time: int
    restart_time: int | None


@dataclass(frozen=True)
class NotificationReceived:
    peer: IPv4Address
    code: int
    subcode: int
    message: str


@dataclass(frozen=True)
class Ack:
    command: str | None


@dataclass(frozen=True)
class CommandError:
    command: str | None


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Malformed:
    """Input we could not understand. Always the peer's or ExaBGP's fault, never raised."""

    line: str
    reason: str


Event = (
    RoutesAnnounced | RoutesWithdrawn | EndOfRib | PeerStateChanged | OpenReceived
    | NotificationReceived | Ack | CommandError | Text | Malformed
)


class Prefix(IPv4Network):
    """An ``IPv4Network`` whose hash is computed once: equal to, and hashing like, the
    ``IPv4Network`` of the same value, so either finds the other in a dict or set.

    ``IPv4Network.__hash__`` is Python code (two ``int()`` of addresses, ~0.5 us); a learned
    prefix is hashed ~11 times between the parser, the RIB and its change record (100k
    prefixes: 1.1M hashes, the single largest cost of learning). Cached: ~0.08 us.

    >>> Prefix("10.244.1.0/26") == IPv4Network("10.244.1.0/26"), Prefix("10.244.1.0/26")
    (True, IPv4Network('10.244.1.0/26'))
    """

    __slots__ = ("_hash",)

    def __init__(self, address: object, strict: bool = True) -> None:
        super().__init__(address, strict)  # type: ignore[arg-type]
        self._hash = hash(int(self.network_address) ^ int(self.netmask))

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:  # what ipaddress prints for the equal IPv4Network
        return f"IPv4Network({str(self)!r})"


_NETMASKS = [IPv4Network._make_netmask(length)[0] for length in range(33)]  # type: ignore[attr-defined]
_MASKS = [int(m) for m in _NETMASKS]
_new = object.__new__


def _built(network: int, length: int) -> Prefix:
    """``Prefix((network, length))`` without its parsing (0.8 us instead of 2.3): the attributes
    ``IPv4Network.__init__`` sets, set directly. ``_FAST`` checks at import that the result equals
    the constructor's in every attribute; should ipaddress change, the constructor is used."""
    netmask = _NETMASKS[length]
    mask = netmask._ip
    if network & mask != network:
        raise ValueError(f"{IPv4Address(network)}/{length} has host bits set")
    address = _new(IPv4Address)
    address._ip = network
    prefix = _new(Prefix)
    prefix.network_address, prefix.netmask, prefix._prefixlen = address, netmask, length
    prefix._hash = hash(network ^ mask)
    return prefix


def _same(a: Prefix, b: Prefix) -> bool:
    return type(a) is type(b) and vars(a) == vars(b) and a._hash == b._hash and str(a) == str(b)


# /31 and /32 get a `hosts` attribute from the constructor: prefix_of leaves them to it.
_FAST = all(_same(_built(n, length), Prefix((n, length)))
            for n, length in ((0x0AF40100, 26), (0, 0), (0xC0000200, 24), (0x0A000000, 30)))


def prefix_of(network: int, length: int) -> Prefix:
    """The ``Prefix`` ``network/length`` (integers); host bits set is a ValueError.

    >>> prefix_of(0x0AF40140, 26)
    IPv4Network('10.244.1.64/26')
    """
    if _FAST and 0 <= length <= 30:
        return _built(network, length)
    return Prefix((network, length))


LENGTH_SHIFT = 32
"""A key's prefix length is ``key >> LENGTH_SHIFT``."""
ADDRESS_MASK = 0xFFFFFFFF
"""A key's network address is ``key & ADDRESS_MASK``."""


def prefix_key(prefix: IPv4Network) -> int:
    """The integer key of ``prefix``: ``length << 32 | address`` (ipaddress's own slots).

    >>> prefix_key(IPv4Network("10.244.1.64/26")) == 26 << 32 | 0x0AF40140
    True
    """
    return prefix._prefixlen << LENGTH_SHIFT | prefix.network_address._ip


def key_of(network: int, length: int) -> int:
    """The key of ``network/length`` (integers, unchecked).

    >>> key_of(0x0AF40140, 26) == prefix_key(IPv4Network("10.244.1.64/26"))
    True
    """
    return length << LENGTH_SHIFT | network


def key_network(key: int) -> Prefix:
    """The ``IPv4Network`` (a ``Prefix``) of a key.

    >>> key_network(key_of(0x0AF40140, 26))
    IPv4Network('10.244.1.64/26')
    """
    return prefix_of(key & ADDRESS_MASK, key >> LENGTH_SHIFT)


def key_text(key: int) -> str:
    """``a.b.c.d/len`` of a key, without building an ``IPv4Network``.

    >>> key_text(key_of(0x0AF40140, 26))
    '10.244.1.64/26'
    """
    a = key & ADDRESS_MASK
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/{key >> LENGTH_SHIFT}"


def network_order(key: int) -> int:
    """A sort key that orders prefix keys as their networks sort (address, then length), which
    the keys themselves do not (the length is their high bits).

    >>> keys = [key_of(0x0AF40140, 26), key_of(0x0AF40200, 24)]
    >>> [key_text(k) for k in sorted(keys)], [key_text(k) for k in sorted(keys, key=network_order)]
    (['10.244.2.0/24', '10.244.1.64/26'], ['10.244.1.64/26', '10.244.2.0/24'])
    """
    return (key & ADDRESS_MASK) << 6 | key >> LENGTH_SHIFT


class _Bad(ValueError):
    """A field of a JSON message is missing or wrong; becomes a Malformed event."""


class Channel:
    """One ExaBGP API connection: parses what it says, frames what we say, tracks acks."""

    def __init__(self) -> None:
        self._unacked: deque[str] = deque()

    @property
    def outstanding(self) -> int:
        """Commands written but not yet acknowledged."""
        return len(self._unacked)

    def command(self, line: str) -> bytes:
        if "\n" in line or not line.strip():
            raise ValueError(f"command: must be one non-empty line, got {line!r}")
        self._unacked.append(line)
        return line.encode() + b"\n"

    def feed(self, line: str) -> list[Event]:
        line = line.strip()
        if line in ("done", "error"):
            command = self._unacked.popleft() if self._unacked else None
            return [Ack(command) if line == "done" else CommandError(command)]
        if not line.startswith("{"):
            return [Text(line)] if line else []
        try:
            return _parse_json(json.loads(line))
        except json.JSONDecodeError as exc:
            return [Malformed(line, f"invalid JSON: {exc.msg} at column {exc.colno}")]
        except (ValueError, TypeError, AttributeError) as exc:
            # _Bad names the field; the others are shapes the checks did not foresee. Either way
            # it is input we cannot use, and peer input must never crash the speaker.
            return [Malformed(line, str(exc) or type(exc).__name__)]


# -- command builders (pure; return lines for Channel.command) ---------------------------------


def _chunks(prefixes: Iterable[IPv4Network]) -> list[list[str]]:
    ordered = [str(p) for p in sorted(prefixes)]
    return [ordered[i : i + BATCH_SIZE] for i in range(0, len(ordered), BATCH_SIZE)]


def _selector(neighbor: IPv4Address | None) -> str:
    return f"neighbor {neighbor} " if neighbor is not None else ""


def announce_commands(prefixes: Iterable[IPv4Network], neighbor: IPv4Address | None = None) -> list[str]:
    """Batched announcements with next-hop self (to one neighbor, or to all when None).

    Never an empty batch: ExaBGP answers ``error`` to ``nlri`` with no prefixes.
    """
    sel = _selector(neighbor)
    return [f"{sel}announce attributes next-hop self nlri {' '.join(c)}" for c in _chunks(prefixes)]


def withdraw_commands(prefixes: Iterable[IPv4Network], neighbor: IPv4Address | None = None) -> list[str]:
    sel = _selector(neighbor)
    return [f"{sel}withdraw attributes nlri {' '.join(c)}" for c in _chunks(prefixes)]


def _neighbors(targets: Iterable[IPv4Address]) -> str:
    """``neighbor A , neighbor B `` (ExaBGP's syntax for one command to several neighbors)."""
    return " , ".join(f"neighbor {t}" for t in sorted(targets)) + " "


def reflect_commands(targets: Iterable[IPv4Address], nexthop: IPv4Address, originator_id: IPv4Address,
                     cluster_list: Iterable[IPv4Address], prefixes: Iterable[IPv4Network],
                     attributes: str = "") -> list[str]:
    """Reflected routes (RFC 4456) to ``targets``: the next hop unchanged, ``attributes`` (as
    ``RoutesAnnounced.attributes`` gives them) passed on, ORIGINATOR_ID and CLUSTER_LIST as
    given, batched like ``announce_commands``.

    >>> from ipaddress import IPv4Address as A, IPv4Network as N
    >>> [line] = reflect_commands([A("10.0.0.3"), A("10.0.0.2")], A("10.0.0.1"), A("10.0.0.1"),
    ...                           [A("244.0.0.1")], [N("10.244.1.0/26")])
    >>> selector, command = line.split(" announce ")
    >>> selector
    'neighbor 10.0.0.2 , neighbor 10.0.0.3'
    >>> command.split(" nlri ")
    ['attributes next-hop 10.0.0.1 originator-id 10.0.0.1 cluster-list [ 244.0.0.1 ]', '10.244.1.0/26']
    """
    sel = _neighbors(targets)
    clusters = " ".join(str(c) for c in cluster_list)
    passed = f"{attributes} " if attributes else ""
    attrs = f"next-hop {nexthop} {passed}originator-id {originator_id} cluster-list [ {clusters} ]"
    return [f"{sel}announce attributes {attrs} nlri {' '.join(c)}" for c in _chunks(prefixes)]


def withdraw_from_commands(targets: Iterable[IPv4Address], prefixes: Iterable[IPv4Network]) -> list[str]:
    """Withdraw ``prefixes`` from several neighbors at once."""
    sel = _neighbors(targets)
    return [f"{sel}withdraw attributes nlri {' '.join(c)}" for c in _chunks(prefixes)]


def eor_command(neighbor: IPv4Address | None = None) -> str:
    return f"{_selector(neighbor)}announce eor {IPV4_UNICAST}"


def reload_command() -> str:
    return "reload"


CEASE_PEER_DECONFIGURED = 3  # RFC 4486 Cease subcode: a graceful-restart helper drops at once
CEASE_MAX_PREFIXES = 1  # RFC 4486: Maximum Number of Prefixes Reached
CEASE_ADMIN_SHUTDOWN = 2  # RFC 4486: Administrative Shutdown (a node leaving for good)


def teardown_command(address: IPv4Address, subcode: int = CEASE_PEER_DECONFIGURED) -> str:
    """NOTIFICATION Cease/``subcode`` to an Established neighbor, and close its session."""
    if not 1 <= subcode <= 255:
        raise ValueError(f"subcode: {subcode} is not a Cease subcode (1..255)")
    return f"neighbor {IPv4Address(address)} teardown {subcode}"


def probe_command() -> str:
    """A no-op ExaBGP acknowledges (``#`` starts a comment): proof that it still reads its API."""
    return "# pycalico liveness probe"


# -- JSON parsing -------------------------------------------------------------------------------


def _get(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise _Bad(f"missing field {'.'.join(path)}")
        obj = obj[key]
    return obj


def _ipv4(value: object, field: str) -> IPv4Address:
    try:
        return IPv4Address(value)  # type: ignore[arg-type]
    except ValueError:
        raise _Bad(f"{field}: {value!r} is not an IPv4 address") from None


def _prefix_key(value: object, field: str) -> int:
    """The key of a prefix's text, the slow way (``ipaddress`` decides what is valid)."""
    if type(value) is not str:  # IPv4Network() would take an int or a tuple
        raise _Bad(f"{field}: {value!r} is not an IPv4 prefix")
    try:
        return prefix_key(IPv4Network(value))  # strict: host bits set is an error
    except (ValueError, TypeError):
        raise _Bad(f"{field}: {value!r} is not an IPv4 prefix") from None


def _parse_json(msg: object) -> list[Event]:
    kind = _get(msg, "type")
    if kind == "notification" and isinstance(msg, dict) and "neighbor" not in msg:
        return [Text(f"notification: {msg.get('notification')}")]  # e.g. ExaBGP shutting down
    if kind not in _PARSERS and kind != "update":
        return []  # negotiated, signal, keepalive...: not needed by the speaker
    peer = _ipv4(_get(msg, "neighbor", "address", "peer"), "neighbor.address.peer")
    if kind == "update":
        return _parse_update(peer, _get(msg, "neighbor"))
    return _PARSERS[kind](peer, _get(msg, "neighbor"))


def _parse_state(peer: IPv4Address, nb: object) -> list[Event]:
    state = _get(nb, "state")
    reason = nb.get("reason", "") if isinstance(nb, dict) else ""
    return [PeerStateChanged(peer, str(state).lower(), str(reason))]


def _parse_open(peer: IPv4Address, nb: object) -> list[Event]:
    opened = _get(nb, "open")
    caps = _get(opened, "capabilities")
    restart = None
    if isinstance(caps, dict):
        for cap in caps.values():
            if isinstance(cap, dict) and cap.get("name") == "graceful restart":
                restart = cap.get("time")
    if restart is not None and not isinstance(restart, int):
        raise _Bad(f"open.capabilities.graceful restart.time: {restart!r} is not an integer")
    router_id = _ipv4(_get(opened, "router_id"), "open.router_id")
    hold = _get(opened, "hold_time")
    if not isinstance(hold, int):
        raise _Bad(f"open.hold_time: {hold!r} is not an integer")
    return [OpenReceived(peer, router_id, hold, restart)]


def _parse_notification(peer: IPv4Address, nb: object) -> list[Event]:
    note = _get(nb, "notification")
    code, subcode = _get(note, "code"), _get(note, "subcode")
    if not isinstance(code, int) or not isinstance(subcode, int):
        raise _Bad(f"notification: code {code!r} / subcode {subcode!r} are not integers")
    text = note.get("message", "") if isinstance(note, dict) else ""
    return [NotificationReceived(peer, code, subcode, str(text))]


def _parse_update(peer: IPv4Address, nb: object) -> list[Event]:
    message = _get(nb, "message")
    if isinstance(message, dict) and "eor" in message:
        eor = message["eor"]
        family = f"{_get(eor, 'afi')} {_get(eor, 'safi')}"
        return [EndOfRib(peer, family)]
    update = _get(message, "update")
    if not isinstance(update, dict):
        raise _Bad("message.update: not an object")
    return _withdrawals(peer, update) + _announcements(peer, update)


# The prefix lengths a key may have, by their text: a dict lookup where int() parses; and
# shifted into place in a key, with their host masks by the shifted length.
_LENGTHS = {str(n): n for n in range(33)}
_KEY_LENGTHS = {str(n): n << LENGTH_SHIFT for n in range(33)}


_HOSTMASKS = {n << LENGTH_SHIFT: ~m & 0xFFFFFFFF for n, m in enumerate(_MASKS)}


def _nlris(entries: object, field: str) -> tuple[int, ...]:
    """The keys of a list of ``{"nlri": P}`` or (compact) ``P``; the hot loop of learning.

    ``inet_pton`` takes exactly what ``ipaddress`` takes (four decimal octets, no leading zeros).
    A list of compact NLRIs is converted as a whole, each step a C function mapped over the list
    (~0.2 us a prefix, a third of a loop's); any entry that is not a string, that ``inet_pton`` or
    the length check refuses, or that has host bits set, sends the list through ``_nlri_loop``,
    which decides per entry and names the field."""
    if not isinstance(entries, list):
        raise _Bad(f"{field}: not a list")
    try:
        parts = list(map(str.partition, entries, repeat("/")))
        lengths = list(map(_KEY_LENGTHS.get, map(itemgetter(2), parts)))
        packed = b"".join(map(inet_pton, repeat(AF_INET), map(itemgetter(0), parts)))
        networks = unpack(f">{len(parts)}I", packed)
        if not any(map(and_, networks, map(_HOSTMASKS.__getitem__, lengths))):
            return tuple(map(or_, networks, lengths))
    except (TypeError, KeyError, OSError, ValueError, struct_error):  # a dict entry, no length,
        pass  # a bad address
    return _nlri_loop(entries, field)


def _nlri_loop(entries: list, field: str) -> tuple[int, ...]:
    """``_nlris`` one entry at a time: what the whole-list conversion could not take."""
    out, lengths, masks, pton, from_bytes = [], _LENGTHS, _MASKS, inet_pton, int.from_bytes
    for entry in entries:
        text = entry if entry.__class__ is str else _get(entry, "nlri")
        if text.__class__ is str:
            address, _, length = text.partition("/")
            bits = lengths.get(length)
            if bits is not None:
                try:
                    network = from_bytes(pton(AF_INET, address), "big")
                except (OSError, ValueError):  # ValueError: a NUL in the text
                    pass
                else:
                    if network & masks[bits] == network:
                        out.append(bits << LENGTH_SHIFT | network)
                        continue
        out.append(_prefix_key(text, f"{field}.nlri"))
    return tuple(out)


def _withdrawals(peer: IPv4Address, update: dict) -> list[Event]:
    families = update.get("withdraw", {})
    if not isinstance(families, dict):
        raise _Bad("message.update.withdraw: not an object")
    keys = _nlris(families.get(IPV4_UNICAST, []), "withdraw.ipv4 unicast")
    return [RoutesWithdrawn(peer, keys)] if keys else []


def _announcements(peer: IPv4Address, update: dict) -> list[Event]:
    families = update.get("announce", {})
    if not isinstance(families, dict):
        raise _Bad("message.update.announce: not an object")
    by_nexthop = families.get(IPV4_UNICAST, {})
    if not isinstance(by_nexthop, dict):
        raise _Bad("announce.ipv4 unicast: not an object")
    events: list[Event] = []
    reflection = None
    for nexthop, entries in by_nexthop.items():
        hop = _ipv4(nexthop, "announce.ipv4 unicast next-hop")
        keys = _nlris(entries, "announce.ipv4 unicast")
        if keys:
            if reflection is None:
                reflection = _reflection(update.get("attribute", {}))
            events.append(RoutesAnnounced(peer, hop, keys, *reflection))
    return events


def _reflection(attributes: object) -> tuple:
    """The fields of RoutesAnnounced after ``prefixes``, in order: ORIGINATOR_ID, CLUSTER_LIST,
    the passed-on attributes, then origin, AS_PATH length, neighbouring AS, LOCAL_PREF and MED.
    ExaBGP 5 writes ``"originator-id": "10.0.0.1"``, ``"cluster-list": [ "244.0.0.1" ]`` (the
    rest: see ``_passed_on``). Parsed once per UPDATE, shared by all its prefixes."""
    if not isinstance(attributes, dict):
        raise _Bad("message.update.attribute: not an object")
    originator = attributes.get("originator-id")
    if originator is not None:
        originator = _ipv4(originator, "attribute.originator-id")
    clusters = attributes.get("cluster-list", [])
    if not isinstance(clusters, list):
        raise _Bad("attribute.cluster-list: not a list")
    passed = _passed_on(attributes)  # validates origin, AS path, LOCAL_PREF and MED
    origin = _ORIGINS.index(attributes.get("origin", "igp"))
    length, neighbor = _path_length(attributes.get("as-path", {}))
    return (originator, tuple(_ipv4(c, "attribute.cluster-list") for c in clusters), passed,
            origin, length, neighbor, attributes.get("local-preference"), attributes.get("med"))


def _path_length(segments: dict) -> tuple[int, int | None]:
    """(AS_PATH length as RFC 4271 9.1.2.2 a) counts it: an AS_SET is one, confederation
    segments nothing; the neighbouring AS: the first of a leading AS_SEQUENCE, else None).
    ``segments`` was checked by ``_as_path``."""
    length, neighbor = 0, None
    for position, (_, segment) in enumerate(sorted(segments.items(), key=lambda kv: int(kv[0]))):
        kind, asns = segment["element"], segment["value"]
        if kind == "as-sequence":
            length += len(asns)
            if position == 0 and asns:
                neighbor = asns[0]
        elif kind == "as-set":
            length += 1
    return length, neighbor


_ORIGINS = ("igp", "egp", "incomplete")
_SEGMENTS = {"as-sequence": ("[", "]"), "as-set": ("(", ")")}


def _passed_on(attributes: dict) -> str:
    """Origin, AS path, LOCAL_PREF, MED and communities in ExaBGP's command syntax. ExaBGP 5 JSON:
    ``"origin": "igp"``, ``"as-path": {"0": {"element": "as-sequence", "value": [65001]}}``,
    ``"local-preference": 100``, ``"med": 5``, ``"community": [[64512, 100]]``. Confederation
    segments are not passed on (they never leave a confederation); large and extended
    communities are not carried yet."""
    out = []
    origin = attributes.get("origin")
    if origin is not None:
        if origin not in _ORIGINS:
            raise _Bad(f"attribute.origin: {origin!r} is not one of {_ORIGINS}")
        out.append(f"origin {origin}")
    path = _as_path(attributes.get("as-path", {}))
    if path:
        out.append(f"as-path {path}")
    for name in ("local-preference", "med"):
        value = attributes.get(name)
        if value is not None:
            out.append(f"{name} {_uint(value, 32, f'attribute.{name}')}")
    communities = attributes.get("community", [])
    if not isinstance(communities, list):
        raise _Bad("attribute.community: not a list")
    if communities:
        pairs = [f"{_uint(c[0], 16, 'community')}:{_uint(c[1], 16, 'community')}"
                 if isinstance(c, list) and len(c) == 2 else _uint(None, 16, "attribute.community")
                 for c in communities]
        out.append(f"community [ {' '.join(pairs)} ]")
    return " ".join(out)


def _as_path(segments: object) -> str:
    if not isinstance(segments, dict):
        raise _Bad("attribute.as-path: not an object")
    out = []
    for _, segment in sorted(segments.items(), key=lambda kv: int(kv[0])):
        kind = _get(segment, "element")
        asns = _get(segment, "value")
        if not isinstance(asns, list):
            raise _Bad("attribute.as-path.value: not a list")
        brackets = _SEGMENTS.get(kind)
        if brackets is None:
            continue  # confederation segments
        numbers = " ".join(str(_uint(a, 32, "attribute.as-path")) for a in asns)
        out.append(f"{brackets[0]} {numbers} {brackets[1]}")
    return " ".join(out)


def _uint(value: object, bits: int, field: str) -> int:
    if type(value) is not int or not 0 <= value < 2**bits:
        raise _Bad(f"{field}: {value!r} is not a {bits}-bit unsigned integer")
    return value


_PARSERS = {
    "state": _parse_state,
    "fsm": _parse_state,
    "open": _parse_open,
    "notification": _parse_notification,
}
