"""Our own IPv4 route netlink: a ``struct``-packed codec and a small blocking socket. Stdlib only.

Why not pyroute2 here: its request pipeline encodes a few thousand messages a second and decodes every
attribute of every dumped route into dicts; at 100k routes that is 13-70x slower than ``ip -batch``.
The route hot path needs three things only, all done here:

- **encode** RTM_NEWROUTE (``NLM_F_CREATE | NLM_F_REPLACE``) / RTM_DELROUTE with no per-message ACK;
- **write in batches**: many messages per ``send``, the kernel reporting only errors (no NLM_F_ACK),
  then one ACKed ``NLMSG_NOOP`` as a barrier: the kernel handles a ``send`` in order, so once the
  barrier's ACK is read every error of the batch has been read. Errors map back by sequence number.
  The routes of one template are encoded in bulk (``encode_requests``: one message repeated, the
  sequence numbers and destinations copied in by strided slices);
- **dump** with the table filtered in the kernel (``NETLINK_GET_STRICT_CHK``) and the rtmsg header read
  before any attribute, so foreign routes cost little.

The codec functions are pure (bytes in, bytes/tuples out) and unit-tested against pyroute2's parser;
``RtnlSocket`` is blocking: callers in asyncio run it in a thread (``asyncio.to_thread``).

A dumped route of ours is kept as its *template*, keyed by ``route_key(dst_int, prefixlen)`` -- one
int, no ``ipaddress`` objects in the hot loop. The template is the undecoded image (rtmsg + attributes)
without the 4 bytes of the destination address (``route_template``), interned: the routes of one shape
(type, scope, gateway, device) share one ``bytes`` object, so 100k dumped routes cost their keys and
dict slots, not 100k images (~8 MB). ``route_from_template`` gives the image back, ``decode_route`` the
fields of the few that differ:

>>> image = route_image(dst=0x0AF40100, dst_len=26, table=254, proto=80, rtype=RTN_BLACKHOLE)
>>> dump = RouteDump(table=254, proto=80)
>>> parse_route_dump(encode_request(RTM_NEWROUTE, 7, image), dump)
False
>>> dump.ours == {route_key(0x0AF40100, 26): route_template(image)}
True
>>> route_from_template(route_key(0x0AF40100, 26), dump.ours[route_key(0x0AF40100, 26)]) == image
True
>>> r = decode_route(image)
>>> (hex(key_parts(r.key)[0]), key_parts(r.key)[1], r.proto, r.type)
('0xaf40100', 26, 80, 6)
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import operator
import os
import socket
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import NamedTuple

# -- constants (linux/netlink.h, linux/rtnetlink.h) -------------------------------------------------

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 1, 10, 11, 12
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x300, 0x100, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # in NLMSG_ERROR replies
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFLA_IFNAME = 3
IFF_UP = 0x1
RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 1, 2, 6, 7, 8
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RTNH_F_ONLINK = 0x4
RTM_F_FIB_MATCH = 0x2000  # RTM_GETROUTE: answer with the FIB entry that matches, not a lookup result
RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE = 1, 7
RTMGRP_LINK, RTMGRP_IPV4_ROUTE = 1 << (RTNLGRP_LINK - 1), 1 << (RTNLGRP_IPV4_ROUTE - 1)
SO_ATTACH_FILTER, SO_RCVBUFFORCE = 26, 33

TYPES = {"unicast": RTN_UNICAST, "local": RTN_LOCAL, "blackhole": RTN_BLACKHOLE,
         "unreachable": RTN_UNREACHABLE, "prohibit": RTN_PROHIBIT}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
SCOPES = {"universe": RT_SCOPE_UNIVERSE, "link": RT_SCOPE_LINK, "host": RT_SCOPE_HOST,
          "nowhere": RT_SCOPE_NOWHERE}
SCOPE_NAMES = {v: k for k, v in SCOPES.items()}

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
# nlmsghdr + rtmsg + what follows in the usual layout: len, type, rtm_dst_len, rtm_table,
# rtm_protocol, RTA_TABLE's value, RTA_DST's header as a u32, the dst as it is on the wire
# (big-endian, read native: ``socket.ntohl`` makes it the address)
_HDR_ROUTE = struct.Struct("=IH11xB2xBB6x4xIII")
_PAD = bytes(_HDR_ROUTE.size)  # so that _HDR_ROUTE can be read at any message of a buffer
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_ATTR = struct.Struct("=HH")
_U32_ATTR = struct.Struct("=HHI")
_BE32 = struct.Struct(">I")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")
_DST_ATTR = _ATTR.pack(8, RTA_DST)
_DST_ATTR_U32 = _U32.unpack(_DST_ATTR)[0]
RT_TABLE_COMPAT = 252  # rtm_table of a table > 255 (the real id is in RTA_TABLE)
_ROUTE_FLAGS = {RTM_NEWROUTE: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, RTM_DELROUTE: NLM_F_REQUEST}


class Route(NamedTuple):
    """One dumped IPv4 route. ``key = route_key(dst, dst_len)``; ``gateway`` an int or None,
    ``oif`` an ifindex or 0; ``type``/``scope`` kernel numbers; ``flags`` rtm_flags."""

    key: int
    proto: int
    type: int
    scope: int
    flags: int
    tos: int
    priority: int
    gateway: int | None
    oif: int
    table: int


_LENGTH_SHIFT, _ADDRESS_MASK = 32, 0xFFFFFFFF  # felix.calc.LENGTH_SHIFT, ADDRESS_MASK (stdlib only here)


def route_key(dst: int, dst_len: int) -> int:
    """One int for (dst, prefixlen): cheap to hash, cheap to keep 100k of. The same key as
    ``felix.calc.dst_key`` (every desired map is keyed by it; ``felix.calc`` also converts it to
    and from networks and text), packed here from a route's fields, unchecked: ``dst_len << 32 |
    dst``, the address in the low bits that a dict or set indexes by.

    >>> route_key(0x0AF40140, 26) == 26 << 32 | 0x0AF40140
    True
    """
    return dst_len << _LENGTH_SHIFT | dst


def key_parts(key: int) -> tuple[int, int]:
    """(dst, prefixlen) of a ``route_key``.

    >>> key_parts(route_key(0x0AF40140, 26)) == (0x0AF40140, 26)
    True
    """
    return key & _ADDRESS_MASK, key >> _LENGTH_SHIFT


class NetlinkFailure(OSError):
    """A request the kernel refused: ``errno`` is the code, ``strerror`` the kernel's text (ext ack)
    or the libc text."""

    def __init__(self, code: int, text: str | None = None) -> None:
        super().__init__(code, text or os.strerror(code))

    def describe(self) -> str:
        return f"{errno.errorcode.get(self.errno, str(self.errno))}: {self.strerror}"


# -- encoding ----------------------------------------------------------------------------------


def route_image(*, dst: int, dst_len: int, table: int, proto: int, rtype: int = RTN_UNICAST,
                scope: int = RT_SCOPE_UNIVERSE, gateway: int | None = None, oif: int = 0,
                onlink: bool = False, priority: int = 0, tos: int = 0) -> bytes:
    """rtmsg + attributes of a route, laid out as the kernel dumps it (RTA_TABLE, RTA_DST,
    RTA_PRIORITY, RTA_GATEWAY, RTA_OIF): the body of our requests *and* what a dump of the route
    gives back byte for byte, so "already there" is one ``bytes`` comparison."""
    parts = [_RTMSG.pack(socket.AF_INET, dst_len, 0, tos, RT_TABLE_COMPAT if table > 255 else table,
                         proto, scope, rtype, RTNH_F_ONLINK if onlink else 0),
             _U32_ATTR.pack(8, RTA_TABLE, table)]
    if dst_len:
        parts.append(_DST_ATTR + _BE32.pack(dst))
    if priority:
        parts.append(_U32_ATTR.pack(8, RTA_PRIORITY, priority))
    if gateway is not None:
        parts.append(_ATTR.pack(8, RTA_GATEWAY) + _BE32.pack(gateway))
    if oif:
        parts.append(_U32_ATTR.pack(8, RTA_OIF, oif))
    return b"".join(parts)


_DST_HDR_AT, _DST_AT = 20, 24  # in a usual image: RTA_DST's header after rtmsg and RTA_TABLE


def route_template(image: bytes) -> bytes:
    """``image`` without its destination address (the 4 bytes of RTA_DST at its usual place),
    which the key already holds; an image without RTA_DST there (a default route) stays whole.
    Lossless: ``route_from_template(key, route_template(image)) == image``."""
    if image[_DST_HDR_AT:_DST_AT] == _DST_ATTR:
        return image[:_DST_AT] + image[_DST_AT + 4:]
    return image


def route_from_template(key: int, template: bytes) -> bytes:
    """The route image of ``key`` and a ``route_template``."""
    if template[_DST_HDR_AT:_DST_AT] == _DST_ATTR:
        return template[:_DST_AT] + (key & _ADDRESS_MASK).to_bytes(4, "big") + template[_DST_AT:]
    return template


def encode_request(cmd: int, seq: int, image: bytes) -> bytes:
    """RTM_NEWROUTE (create|replace) or RTM_DELROUTE around a ``route_image``, no NLM_F_ACK: the
    kernel answers only if it fails."""
    return _HDR.pack(16 + len(image), cmd, _ROUTE_FLAGS[cmd], seq, 0) + image


def encode_requests(cmd: int, template: bytes, keys: Sequence[int], seqs: Iterable[int]) -> bytearray:
    """``encode_request(cmd, seq, route_from_template(key, template))`` of each key and seq
    (``seqs``: as many as ``keys``, e.g. a ``range``), one after another, built in bulk: the first
    message repeated, then the sequence numbers and the destinations copied into it with strided
    slices (loops in C, no Python per route: this is what a 100k-route apply sends).

    >>> keys = [route_key(0x0AF40100, 26), route_key(0x0AF40140, 26)]
    >>> t = route_template(route_image(dst=0, dst_len=26, table=254, proto=80, rtype=RTN_BLACKHOLE))
    >>> bytes(encode_requests(RTM_NEWROUTE, t, keys, range(7, 9))) == b"".join(
    ...     encode_request(RTM_NEWROUTE, 7 + i, route_from_template(k, t)) for i, k in enumerate(keys))
    True
    """
    seqs = array("I", seqs)
    if not keys:
        return bytearray()
    first = encode_request(cmd, seqs[0], route_from_template(keys[0], template))
    size = len(first)
    if size % 4:  # never for an image of ours (every attribute is 8 bytes); one by one then
        return bytearray(b"".join(encode_request(cmd, seq, route_from_template(key, template))
                                  for seq, key in zip(seqs, keys)))
    out = bytearray(first * len(keys))
    words, stride = memoryview(out).cast("I"), size // 4
    words[2::stride] = seqs  # nlmsg_seq
    if template[_DST_HDR_AT:_DST_AT] == _DST_ATTR:  # the address, big-endian, after nlmsghdr,
        dsts = array("I", map(operator.and_, keys, itertools.repeat(_ADDRESS_MASK)))  # rtmsg,
        if sys.byteorder == "little":  # RTA_TABLE and RTA_DST's header
            dsts.byteswap()
        words[(16 + _DST_AT) // 4::stride] = dsts
    return out


def encode_route(cmd: int, seq: int, **route) -> bytes:
    """``encode_request(cmd, seq, route_image(**route))``."""
    return encode_request(cmd, seq, route_image(**route))


def oif_attr(oif: int) -> bytes:
    """RTA_OIF as it ends the image of a route through ``oif`` (kernel order: it comes last)."""
    return _U32_ATTR.pack(8, RTA_OIF, oif)


def encode_noop(seq: int) -> bytes:
    """The barrier: NLMSG_NOOP with NLM_F_ACK is answered (error 0) after everything sent before it."""
    return _HDR.pack(16, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, 0)


def encode_route_dump(seq: int, table: int = 0) -> bytes:
    """RTM_GETROUTE dump of AF_INET; with strict checking the kernel dumps only ``table``."""
    attrs = _U32_ATTR.pack(8, RTA_TABLE, table) if table else b""
    return (_HDR.pack(28 + len(attrs), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0) + attrs)


def encode_route_get(seq: int, key: int) -> bytes:
    """RTM_GETROUTE of the FIB entry matching the address of ``key`` (``ip route get fibmatch``;
    the policy rules choose the table: strict checking refuses RTA_TABLE here)."""
    dst, _ = key_parts(key)
    attrs = _DST_ATTR + _BE32.pack(dst)
    return (_HDR.pack(28 + len(attrs), RTM_GETROUTE, NLM_F_REQUEST, seq, 0)
            + _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, RTM_F_FIB_MATCH) + attrs)


def encode_link_dump(seq: int) -> bytes:
    return _HDR.pack(32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(16)


# -- parsing -----------------------------------------------------------------------------------


def parse_error(buf: bytes, off: int, length: int) -> tuple[int, str | None]:
    """(errno, kernel text or None) of an NLMSG_ERROR at ``off``; errno 0 is an ACK."""
    code = -_ERR.unpack_from(buf, off + 16)[0]
    flags = _HDR.unpack_from(buf, off)[2]
    if not code or not flags & NLM_F_ACK_TLVS:
        return code, None
    # TLVs follow the echoed request: its header only when capped, else the whole request.
    echoed = 16 if flags & NLM_F_CAPPED else _HDR.unpack_from(buf, off + 20)[0]
    pos, end = off + 20 + _align(echoed), off + length
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, pos)
        if alen < 4:
            break
        if atype == NLMSGERR_ATTR_MSG:
            return code, bytes(buf[pos + 4:pos + alen]).rstrip(b"\0").decode(errors="replace")
        pos += _align(alen)
    return code, None


def parse_errors(buf: bytes) -> Iterator[tuple[int, int, str | None]]:
    """(seq, errno, text) of every NLMSG_ERROR in ``buf`` (errno 0: an ACK)."""
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, mtype, _, seq, _ = _HDR.unpack_from(buf, off)
        if length < 16:
            break
        if mtype == NLMSG_ERROR:
            yield (seq, *parse_error(buf, off, length))
        off += _align(length)


class RouteDump:
    """What a route dump gave, sorted as the writer needs it; filled by ``parse_route_dump``.

    ``ours``: {key: template} of routes of ``proto`` (the first per key; ``route_template``, each
    one interned in ``templates``); ``dups``: whole images of further routes of ours at a key
    already seen (another tos/metric: never matchable, so strays); ``foreign``: {key: proto} of
    other owners' routes.
    """

    __slots__ = ("table", "proto", "ours", "dups", "foreign", "templates")

    def __init__(self, table: int = 0, proto: int = 0) -> None:
        self.table, self.proto = table, proto
        self.ours: dict[int, bytes] = {}
        self.dups: list[bytes] = []
        self.foreign: dict[int, int] = {}
        self.templates: dict[bytes, bytes] = {}  # each template once

    def images(self) -> dict[int, bytes]:
        """{key: whole image} of ``ours`` (for tests and the few callers that decode them all)."""
        return {key: route_from_template(key, t) for key, t in self.ours.items()}


def parse_route_dump(buf: bytes, into: RouteDump) -> bool:
    """Sort the AF_INET routes in ``buf`` into ``into``; True once NLMSG_DONE is seen.

    The hot loop: one unpack of the headers per message; other tables are skipped there; the key
    comes from RTA_DST at its fixed place (right after RTA_TABLE), no attribute is decoded, and a
    route of ours stays an undecoded template, interned (of another owner's, only the key and
    proto are kept). Raises NetlinkFailure for an error in the dump.
    """
    unpack, ntohl, dst_attr = _HDR_ROUTE.unpack_from, socket.ntohl, _DST_ATTR_U32
    table, proto, ours, dups, foreign = into.table, into.proto, into.ours, into.dups, into.foreign
    intern = into.templates.setdefault
    table_byte = RT_TABLE_COMPAT if table > 255 else table
    off, size = 0, len(buf)
    buf += _PAD  # one copy per buffer, instead of a slice per route to read the dst
    while off + 28 <= size:
        length, mtype, dst_len, rtm_table, rproto, table_id, dst_hdr, dst = unpack(buf, off)
        end = off + length
        if mtype != RTM_NEWROUTE or length < 28 or (table and (rtm_table != table_byte or (
                table > 255 and table_id != table))):
            if mtype == NLMSG_DONE or mtype == NLMSG_ERROR or length < 16:
                return _dump_end(buf, off, length)
        elif length >= 44 and dst_hdr == dst_attr:  # the usual layout: RTA_DST after RTA_TABLE
            key = dst_len << 32 | ntohl(dst)  # route_key, inline (the hot loop)
            if rproto != proto:
                foreign.setdefault(key, rproto)  # another owner's: only its key matters
            elif key in ours:
                dups.append(buf[off + 16:end])
            else:
                template = buf[off + 16:off + 40] + buf[off + 44:end]
                ours[key] = intern(template, template)
        else:  # a default route (no RTA_DST), an unusual layout: decode it properly
            _add_decoded(buf[off + 16:end], into)
        off = (end + 3) & ~3
    if off + 16 <= size:  # a bare NLMSG_DONE (20 bytes) at the end
        return _dump_end(buf, off, _HDR.unpack_from(buf, off)[0])
    return False


def _add_decoded(image: bytes, into: RouteDump) -> None:
    route = decode_route(image)
    if route.proto != into.proto:
        into.foreign.setdefault(route.key, route.proto)
    elif route.key in into.ours:
        into.dups.append(image)
    else:
        template = route_template(image)
        into.ours[route.key] = into.templates.setdefault(template, template)


def _dump_end(buf: bytes, off: int, length: int) -> bool:
    mtype = _HDR.unpack_from(buf, off)[1]
    if length < 16:
        raise NetlinkFailure(errno.EBADMSG, f"netlink message of length {length}")
    if mtype == NLMSG_ERROR:
        code, text = parse_error(buf, off, length)
        if code:
            raise NetlinkFailure(code, text)
        return False
    if mtype != NLMSG_DONE:
        return False
    code = -_ERR.unpack_from(buf, off + 16)[0] if length >= 20 else 0
    if code:
        raise NetlinkFailure(code)
    return True


def decode_route(image: bytes) -> Route:
    """The fields of a route image (rtmsg + attributes), for the few routes that need them."""
    family, dst_len, _, tos, rtm_table, rproto, scope, rtype, rflags = _RTMSG.unpack_from(image, 0)
    dst, gateway, oif, priority, table = 0, None, 0, 0, rtm_table
    pos, end = 12, len(image)
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(image, pos)
        if alen < 4:
            break
        if alen >= 8:
            if atype == RTA_DST:
                dst = _BE32.unpack_from(image, pos + 4)[0]
            elif atype == RTA_GATEWAY:
                gateway = _BE32.unpack_from(image, pos + 4)[0]
            elif atype == RTA_OIF:
                oif = _U32.unpack_from(image, pos + 4)[0]
            elif atype == RTA_TABLE:
                table = _U32.unpack_from(image, pos + 4)[0]
            elif atype == RTA_PRIORITY:
                priority = _U32.unpack_from(image, pos + 4)[0]
        pos += _align(alen)
    return Route(route_key(dst, dst_len), rproto, rtype, scope, rflags, tos, priority, gateway, oif, table)


def parse_link_dump(buf: bytes, out: dict[int, str], flags: dict[int, int] | None = None) -> bool:
    """Add {ifindex: name} (and {ifindex: ifi_flags}) of the RTM_NEWLINKs in ``buf``; True at DONE."""
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, mtype = _HDR.unpack_from(buf, off)[:2]
        if length < 16:
            break
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            code, text = parse_error(buf, off, length)
            if code:
                raise NetlinkFailure(code, text)
        elif mtype == RTM_NEWLINK:
            index, ifi_flags, name = parse_link(buf, off, length)
            out[index] = name
            if flags is not None:
                flags[index] = ifi_flags
        off += _align(length)
    return False


def parse_link(buf: bytes, off: int, length: int) -> tuple[int, int, str]:
    """(ifindex, ifi_flags, name) of an RTM_NEWLINK/RTM_DELLINK at ``off``."""
    index, ifi_flags = struct.unpack_from("=iI", buf, off + 20)
    pos, end, name = off + 32, off + length, ""
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, pos)
        if alen < 4:
            break
        if atype == IFLA_IFNAME:
            name = bytes(buf[pos + 4:pos + alen]).rstrip(b"\0").decode()
            break
        pos += _align(alen)
    return index, ifi_flags, name


def parse_events(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(nlmsg_type, nlmsg_flags, message) of each message in a notification ``buf``. The message
    keeps its header: ``message[16:]`` of an RTM_NEWROUTE/RTM_DELROUTE is a route image
    (``decode_route``); ``parse_link(message, 0, len(message))`` reads an RTM_NEWLINK/DELLINK."""
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, mtype, flags = _HDR.unpack_from(buf, off)[:3]
        if length < 16:
            break
        yield mtype, flags, bytes(buf[off:off + length])
        off += _align(length)


def _align(n: int) -> int:
    return (n + 3) & ~3


# -- the socket --------------------------------------------------------------------------------

CHUNK = 128 * 1024  # bytes of requests per send(); the kernel handles each send in one go
BULK_GROUPS = 16  # write_templates: more (command, template) groups than this go one by one (< 256)
RECV_SIZE = 64 * 1024  # a dump skb is at most 32 KB
RCVBUF = 32 * 1024 * 1024  # an error storm (one error per request) must not overflow: ENOBUFS


class RtnlSocket:
    """A blocking NETLINK_ROUTE socket, opened inside ``netns`` (a path under /run/netns or a name)
    when given. A socket keeps the namespace it was created in, whichever thread uses it later.

    ``groups``: a bitmask of RTMGRP_* for an event socket (then use ``recv`` only).
    """

    def __init__(self, netns: str | None = None, groups: int = 0, rcvbuf: int | None = None) -> None:
        with _entered(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_ROUTE)
        try:
            self._configure(groups, rcvbuf or RCVBUF)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def _configure(self, groups: int, rcvbuf: int) -> None:
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass  # older kernels: longer errors, no text, filters applied by us instead
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root only
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * CHUNK)
        self.sock.bind((0, groups))

    def close(self) -> None:
        self.sock.close()

    @property
    def port_id(self) -> int:
        """The netlink port id the kernel gave this socket (``nlmsg_pid`` of what it causes)."""
        return self.sock.getsockname()[0]

    def ignore_sender(self, port_id: int) -> None:
        """Drop, in the kernel, notifications caused by the socket ``port_id`` (our own writes:
        the writer already knows what it did, and 100k echoes would cost a resync via ENOBUFS).

        A classic BPF filter on nlmsg_pid; BPF loads words big-endian, the field is host order.
        """
        pid = int.from_bytes(port_id.to_bytes(4, sys.byteorder), "big")
        program = b"".join(struct.pack("=HBBI", *insn) for insn in (
            (0x20, 0, 0, 12),  # ld [12]: nlmsg_pid
            (0x15, 0, 1, pid),  # jeq #pid, drop, accept
            (0x06, 0, 0, 0),  # drop
            (0x06, 0, 0, 0xFFFFFFFF),  # accept
        ))
        code = ctypes.create_string_buffer(program)
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(code))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def recv_nowait(self) -> bytes | None:
        """One pending message batch, or None when nothing is queued. Raises OSError(ENOBUFS)
        when the kernel dropped notifications (the receive buffer overflowed): resync."""
        try:
            return self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def reserve(self, count: int) -> int:
        """The first of ``count`` fresh sequence numbers, for requests encoded by the caller."""
        first = self._seq + 1
        self._seq += count
        return first

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def write(self, requests: Iterable[tuple[int, bytes]]) -> dict[int, NetlinkFailure]:
        """Send ``(RTM_NEWROUTE | RTM_DELROUTE, route image)`` requests in chunks of ~CHUNK bytes,
        each closed by a NOOP barrier. Returns {index in requests: failure} for those that failed;
        the others are done when this returns."""
        failed: dict[int, NetlinkFailure] = {}
        self._discard_pending()
        barrier = self.reserve(1)
        first = barrier + 1
        pack, flags = _HDR.pack, _ROUTE_FLAGS
        chunk: list[bytes] = []
        size = count = 0
        for cmd, image in requests:
            length = 16 + len(image)
            chunk.append(pack(length, cmd, flags[cmd], first + count, 0))
            chunk.append(image)
            size += length
            count += 1
            if size >= CHUNK:
                self._seq = first + count - 1
                self._send_chunk(chunk, barrier, first, count, failed)
                chunk, size = [], 0
        self._seq = first + count - 1
        if chunk:
            self._send_chunk(chunk, barrier, first, count, failed)
        return failed

    def write_templates(self, cmds: Sequence[int], keys: Sequence[int], templates: Sequence[bytes]
                        ) -> dict[int, NetlinkFailure]:
        """``write`` of the requests ``(cmds[i], route_from_template(keys[i], templates[i]))``,
        encoded in bulk (``encode_requests``) per group of one command and one template: an
        apply's writes are mostly a few shapes. The groups go in the order of their first request
        (so deletes put in front go first), each in its own order; with more than
        ``BULK_GROUPS`` groups (e.g. a route per pod device), the requests go as ``write``
        sends them, in order, one by one."""
        pairs = dict.fromkeys(zip(cmds, templates))  # the groups, in order of first request
        if len(pairs) > BULK_GROUPS:
            return self.write(zip(cmds, map(route_from_template, keys, templates)))
        failed: dict[int, NetlinkFailure] = {}
        self._discard_pending()
        barrier = self.reserve(1)
        first = barrier + 1
        count = len(keys)
        self._seq = first + count - 1
        if len(pairs) == 1:
            groups = [(*next(iter(pairs)), range(count))]
        else:
            # Arrays, not lists: 100k int objects of indexes were ~5 MB of a delete-all's peak.
            number = {pair: n for n, pair in enumerate(pairs)}
            of = array("B", map(number.__getitem__, zip(cmds, templates)))
            groups = [(cmd, template, array("I", itertools.compress(range(count), map(n.__eq__, of))))
                      for n, (cmd, template) in enumerate(pairs)]
        chunk: list[bytes] = []
        size = 0  # bytes in ``chunk``
        for cmd, template, indexes in groups:
            per = 20 + len(template)  # bytes per request (template + dst + nlmsghdr), about
            i = 0
            while i < len(indexes):
                take = min(len(indexes) - i, max(1, (CHUNK - size) // per))
                part = indexes[i:i + take]
                chunk.append(encode_requests(cmd, template, list(map(keys.__getitem__, part)),
                                             map(first.__add__, part)))
                size += len(chunk[-1])
                i += take
                if size >= CHUNK - per:
                    self._send_chunk(chunk, barrier, first, count, failed)
                    chunk, size = [], 0
        if chunk:
            self._send_chunk(chunk, barrier, first, count, failed)
        return failed

    def _send_chunk(self, chunk: list[bytes], barrier: int, first: int, count: int,
                    failed: dict[int, NetlinkFailure]) -> None:
        chunk.append(encode_noop(barrier))
        self.sock.send(b"".join(chunk))
        while True:  # the kernel has handled the whole chunk when send returns: read its answers
            try:
                answers = self.recv()
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # answers were dropped, maybe the barrier's too
                    self._discard_pending()
                    raise NetlinkFailure(errno.ENOBUFS, "answers to a route batch were lost") from err
                raise
            for seq, code, text in parse_errors(answers):
                if seq == barrier:
                    if code:
                        raise AssertionError(f"Bug: the barrier NOOP failed: {code} {text}")
                    return
                if code and 0 <= seq - first < count:
                    failed[seq - first] = NetlinkFailure(code, text)

    def dump_routes(self, table: int = 0, proto: int = 0) -> RouteDump:
        """The AF_INET routes of ``table`` (0: all tables), ours being those of ``proto``."""
        self._discard_pending()
        self.sock.send(encode_route_dump(self.reserve(1), table))
        dump = RouteDump(table, proto)
        try:
            while not parse_route_dump(self.recv(), dump):
                pass
        except NetlinkFailure as err:
            self._discard_pending()
            if err.errno == errno.ENOENT and table:  # the table does not exist yet: it is empty
                return RouteDump(table, proto)
            raise
        return dump

    def _discard_pending(self) -> None:
        """Drop whatever an earlier, failed operation left queued: answers are read in order."""
        try:
            while True:
                self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise

    def fib_match(self, key: int) -> Route | None:
        """The route the kernel's FIB matches for the address of ``key`` (None if nothing does):
        for a gateway route written without a device, the device it resolved."""
        self._discard_pending()
        seq = self.reserve(1)
        self.sock.send(encode_route_get(seq, key))
        while True:
            buf = self.recv()
            for mtype, _, msg in parse_events(buf):
                if _HDR.unpack_from(msg, 0)[3] != seq:
                    continue
                if mtype == RTM_NEWROUTE:
                    return decode_route(msg[16:])
                if mtype == NLMSG_ERROR:
                    return None  # ENETUNREACH and the like: nothing matches

    def dump_links(self, flags: dict[int, int] | None = None) -> dict[int, str]:
        """{ifindex: name} of every link (and their ifi_flags into ``flags`` when given)."""
        self._discard_pending()
        self.sock.send(encode_link_dump(self.reserve(1)))
        names: dict[int, str] = {}
        while not parse_link_dump(self.recv(), names, flags):
            pass
        return names


def _entered(netns: str | None):
    if not netns:
        return nullcontext()
    import hostio  # our lowest layer, stdlib only

    path = netns if "/" in netns else f"/run/netns/{netns}"
    return hostio.netns_entered(path)
