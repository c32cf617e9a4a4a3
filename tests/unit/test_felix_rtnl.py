"""felix.rtnl's codec, checked against pyroute2's own parser and encoder; no sockets, no root."""
from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from felix import rtnl

GW = int(IPv4Address("192.168.5.2"))
DST = int(IPv4Address("10.244.1.0"))


def pyroute2_parse(data: bytes) -> rtmsg:
    msg = rtmsg(data)
    msg.decode()
    return msg


def pyroute2_route(dst: str | None, dst_len: int, *, proto=80, table=254, rtype=1, scope=0, flags=0,
                   gateway=None, oif=None, priority=None, tos=0) -> bytes:
    """A route as the kernel would dump it, encoded by pyroute2 (NLM_F_MULTI, attrs in kernel order)."""
    msg = rtmsg()
    msg["header"]["type"], msg["header"]["flags"] = rtnl.RTM_NEWROUTE, rtnl.NLM_F_MULTI
    msg["header"]["sequence_number"] = 9
    for name, value in (("family", socket.AF_INET), ("dst_len", dst_len), ("tos", tos),
                        ("table", table if table < 256 else 252), ("proto", proto),
                        ("scope", scope), ("type", rtype), ("flags", flags)):
        msg[name] = value
    attrs = [("RTA_TABLE", table)]
    for name, value in (("RTA_DST", dst), ("RTA_PRIORITY", priority), ("RTA_GATEWAY", gateway),
                        ("RTA_OIF", oif)):
        if value is not None:
            attrs.append((name, value))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


DONE = struct.pack("=IHHIIi", 20, rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 9, 0, 0)


def error(seq: int, code: int, text: str | None = None, capped: bool = True) -> bytes:
    """An NLMSG_ERROR as the kernel sends it (NETLINK_CAP_ACK: only the request's header echoed)."""
    echoed = struct.pack("=IHHII", 60, rtnl.RTM_NEWROUTE, 0x501, seq, 0)
    if not capped:
        echoed += bytes(44)
    flags = rtnl.NLM_F_CAPPED if capped else 0
    tlv = b""
    if text is not None:
        raw = text.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(raw), rtnl.NLMSGERR_ATTR_MSG) + raw
        tlv += bytes(-len(tlv) % 4)
        flags |= rtnl.NLM_F_ACK_TLVS
    body = struct.pack("=i", -code) + echoed + tlv
    return struct.pack("=IHHII", 16 + len(body), rtnl.NLMSG_ERROR, flags, seq, 0) + body


# -- encoder vs pyroute2's parser ----------------------------------------------------------------


def test_new_route_request_parses_in_pyroute2_with_every_field():
    data = rtnl.encode_route(rtnl.RTM_NEWROUTE, 5, dst=DST, dst_len=26, table=254, proto=80,
                             gateway=GW, oif=3, onlink=True, scope=rtnl.RT_SCOPE_UNIVERSE)
    msg = pyroute2_parse(data)
    assert msg["header"]["type"] == rtnl.RTM_NEWROUTE
    assert msg["header"]["flags"] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    assert not msg["header"]["flags"] & rtnl.NLM_F_ACK  # errors only: no ACK per route
    assert (msg["header"]["sequence_number"], msg["header"]["length"]) == (5, len(data))
    assert (msg["family"], msg["dst_len"], msg["proto"], msg["type"], msg["scope"], msg["table"]) == (
        socket.AF_INET, 26, 80, rtnl.RTN_UNICAST, 0, 254)
    assert msg["flags"] == rtnl.RTNH_F_ONLINK
    assert (msg.get_attr("RTA_DST"), msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF")) == (
        "10.244.1.0", "192.168.5.2", 3)
    assert msg.get_attr("RTA_TABLE") == 254


def test_delete_request_carries_our_proto_and_a_big_table_goes_in_rta_table():
    data = rtnl.encode_route(rtnl.RTM_DELROUTE, 6, dst=DST, dst_len=26, table=1000, proto=80,
                             rtype=rtnl.RTN_BLACKHOLE, priority=100, tos=4)
    msg = pyroute2_parse(data)
    assert (msg["header"]["type"], msg["header"]["flags"]) == (rtnl.RTM_DELROUTE, rtnl.NLM_F_REQUEST)
    assert (msg["proto"], msg["type"], msg["tos"], msg["table"]) == (80, rtnl.RTN_BLACKHOLE, 4, 252)
    assert (msg.get_attr("RTA_TABLE"), msg.get_attr("RTA_PRIORITY")) == (1000, 100)
    assert msg.get_attr("RTA_GATEWAY") is None and msg.get_attr("RTA_OIF") is None


def test_default_route_has_no_rta_dst():
    msg = pyroute2_parse(rtnl.encode_route(rtnl.RTM_NEWROUTE, 1, dst=0, dst_len=0, table=254,
                                           proto=80, gateway=GW))
    assert msg["dst_len"] == 0 and msg.get_attr("RTA_DST") is None
    assert msg.get_attr("RTA_GATEWAY") == "192.168.5.2"


def test_barrier_and_dump_requests():
    noop = rtnl.encode_noop(77)
    assert struct.unpack("=IHHII", noop) == (16, rtnl.NLMSG_NOOP, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, 77, 0)
    msg = pyroute2_parse(rtnl.encode_route_dump(3, table=254))
    assert msg["header"]["type"] == rtnl.RTM_GETROUTE
    assert msg["header"]["flags"] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP
    assert (msg["family"], msg.get_attr("RTA_TABLE")) == (socket.AF_INET, 254)


# -- dump parser on pyroute2's bytes ---------------------------------------------------------------


def test_dump_parser_reads_what_pyroute2_encodes():
    buf = b"".join([
        pyroute2_route("10.244.1.0", 26, gateway="192.168.5.2", oif=3),
        pyroute2_route("10.244.2.0", 26, rtype=rtnl.RTN_BLACKHOLE),
        pyroute2_route("10.244.1.5", 32, oif=7, scope=rtnl.RT_SCOPE_LINK),
        pyroute2_route("10.244.3.0", 26, gateway="172.16.0.1", oif=9, flags=rtnl.RTNH_F_ONLINK),
        pyroute2_route("10.244.9.0", 24, proto=3, gateway="192.168.5.2", oif=3),  # another owner's
        pyroute2_route("10.244.8.0", 24, table=100, oif=3),  # another table
        pyroute2_route("10.244.2.0", 26, priority=100, oif=3),  # a second copy of ours
        pyroute2_route(None, 0, gateway="192.168.5.1", oif=3),  # default route: no RTA_DST
        DONE,
    ])
    dump = rtnl.RouteDump(table=254, proto=80)
    assert rtnl.parse_route_dump(buf, dump) is True
    routes = {key: rtnl.decode_route(image) for key, image in dump.images().items()}
    key = lambda a, n: rtnl.route_key(int(IPv4Address(a)), n)  # noqa: E731
    assert set(routes) == {key("10.244.1.0", 26), key("10.244.2.0", 26), key("10.244.1.5", 32),
                           key("10.244.3.0", 26), 0}
    gw = routes[key("10.244.1.0", 26)]
    assert (gw.proto, gw.type, gw.scope, gw.gateway, gw.oif, gw.table) == (80, 1, 0, GW, 3, 254)
    assert routes[key("10.244.2.0", 26)].type == rtnl.RTN_BLACKHOLE
    assert routes[key("10.244.1.5", 32)].scope == rtnl.RT_SCOPE_LINK
    assert routes[key("10.244.3.0", 26)].flags & rtnl.RTNH_F_ONLINK
    assert routes[0].gateway == int(IPv4Address("192.168.5.1"))
    assert dump.foreign == {key("10.244.9.0", 24): 3}
    assert [rtnl.decode_route(d).priority for d in dump.dups] == [100]


def test_dump_parser_across_buffers_and_errors():
    dump = rtnl.RouteDump(table=254, proto=80)
    assert rtnl.parse_route_dump(pyroute2_route("10.244.1.0", 26, oif=3), dump) is False
    assert rtnl.parse_route_dump(DONE, dump) is True
    failed = struct.pack("=IHHIIi", 20, rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 9, 0, -errno.EINTR)
    with pytest.raises(rtnl.NetlinkFailure) as info:
        rtnl.parse_route_dump(failed, rtnl.RouteDump())
    assert info.value.errno == errno.EINTR
    with pytest.raises(rtnl.NetlinkFailure) as info:
        rtnl.parse_route_dump(error(9, errno.ENOENT, "ipv4: FIB table does not exist"), rtnl.RouteDump())
    assert (info.value.errno, info.value.strerror) == (errno.ENOENT, "ipv4: FIB table does not exist")


# -- errors by sequence number ---------------------------------------------------------------------


def test_errors_are_read_with_their_seq_and_kernel_text():
    buf = error(11, errno.ENODEV, "Nexthop device is not up") + error(12, errno.ESRCH) + error(
        13, errno.ENETUNREACH, "Nexthop has invalid gateway", capped=False) + error(14, 0)
    assert list(rtnl.parse_errors(buf)) == [
        (11, errno.ENODEV, "Nexthop device is not up"), (12, errno.ESRCH, None),
        (13, errno.ENETUNREACH, "Nexthop has invalid gateway"), (14, 0, None)]


class FakeKernel:
    """Stands in for the netlink socket: answers each send with the errors of the requests whose
    destination is in ``refuse``, then the barrier's ACK; one message per recv, as the kernel does."""

    def __init__(self, refuse: dict[int, int]) -> None:
        self.refuse, self.sent, self.queue = refuse, [], []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        off = 0
        while off < len(data):
            length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", data, off)
            if mtype == rtnl.NLMSG_NOOP:
                assert flags & rtnl.NLM_F_ACK
                self.queue.append(error(seq, 0))
            else:
                route = rtnl.decode_route(data[off + 16:off + length])
                dst, _ = rtnl.key_parts(route.key)
                if dst in self.refuse:
                    self.queue.append(error(seq, self.refuse[dst], "refused"))
            off += length
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.queue and flags & socket.MSG_DONTWAIT:
            raise BlockingIOError
        answer = self.queue.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_write_maps_each_error_to_its_request_by_seq(monkeypatch):
    monkeypatch.setattr(rtnl, "CHUNK", 200)  # several chunks, each closed by its own barrier
    images = [rtnl.route_image(dst=DST + 256 * i, dst_len=24, table=254, proto=80, oif=3)
              for i in range(20)]
    kernel = FakeKernel({DST + 256 * 3: errno.ENODEV, DST + 256 * 17: errno.EEXIST})
    sock = object.__new__(rtnl.RtnlSocket)
    sock.sock, sock._seq = kernel, 41
    failed = sock.write((rtnl.RTM_NEWROUTE, image) for image in images)
    assert {i: (e.errno, e.strerror) for i, e in failed.items()} == {
        3: (errno.ENODEV, "refused"), 17: (errno.EEXIST, "refused")}
    assert len(kernel.sent) > 1 and kernel.queue == []
    assert failed[3].describe() == "ENODEV: refused"
    assert sock.reserve(1) == 41 + 1 + 20 + 1  # after the barrier and the 20 requests


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """(seq, message) of each request in ``data``, in order."""
    out, off = [], 0
    while off < len(data):
        length, _, _, seq, _ = struct.unpack_from("=IHHII", data, off)
        out.append((seq, data[off:off + length]))
        off += length
    return out


@pytest.mark.parametrize("interleaved", [False, True])
def test_write_templates_sends_what_write_sends_and_maps_errors_across_groups_and_chunks(
        monkeypatch, interleaved):
    monkeypatch.setattr(rtnl, "CHUNK", 300)  # several chunks; a group of one template spans them
    shapes = [rtnl.route_template(rtnl.route_image(dst=0, dst_len=24, table=254, proto=80, oif=oif))
              for oif in (3, 3, 4)] + [rtnl.route_image(dst=0, dst_len=0, table=254, proto=80, gateway=GW)]
    cmds, keys, templates = [], [], []
    for i in range(40):  # 5 deletes, then adds of 3 shapes (0 and 1 are equal), runs or interleaved
        cmds.append(rtnl.RTM_DELROUTE if i < 5 else rtnl.RTM_NEWROUTE)
        shape = (i % 4 if interleaved else i // 10) if i >= 5 else 0
        keys.append(0 if shape == 3 else rtnl.route_key(DST + 256 * i, 24))
        templates.append(shapes[shape])
    refuse = {DST + 256 * 3: errno.ESRCH, DST + 256 * 17: errno.EEXIST, DST + 256 * 29: errno.ENODEV}
    refuse = {dst: code for dst, code in refuse.items() if keys[(dst - DST) // 256]}
    sent = []
    for method in ("write", "write_templates"):
        kernel = FakeKernel(refuse)
        sock = object.__new__(rtnl.RtnlSocket)
        sock.sock, sock._seq = kernel, 41
        if method == "write":
            failed = sock.write(zip(cmds, map(rtnl.route_from_template, keys, templates)))
        else:
            failed = sock.write_templates(cmds, keys, templates)
        assert {i: e.errno for i, e in failed.items()} == {
            (dst - DST) // 256: code for dst, code in refuse.items()}
        assert len(kernel.sent) > 1 and kernel.queue == []
        assert sock.reserve(1) == 41 + 1 + 40 + 1  # after the barrier and the 40 requests
        sent.append(messages(b"".join(kernel.sent).replace(rtnl.encode_noop(42), b"")))
    assert sorted(sent[0]) == sorted(sent[1])  # the same requests, each with its own seq
    kinds = [m[4:6] for _, m in sent[1]]
    assert kinds == sorted(kinds, reverse=True)  # RTM_DELROUTE (25) before RTM_NEWROUTE (24)


def test_write_templates_of_many_templates_sends_them_in_order(monkeypatch):
    templates = [rtnl.route_template(rtnl.route_image(dst=0, dst_len=32, table=254, proto=80, oif=oif))
                 for oif in range(rtnl.BULK_GROUPS + 5)]
    keys = [rtnl.route_key(DST + i, 32) for i in range(len(templates))]
    kernel = FakeKernel({DST + 2: errno.ENODEV})
    sock = object.__new__(rtnl.RtnlSocket)
    sock.sock, sock._seq = kernel, 0
    failed = sock.write_templates([rtnl.RTM_NEWROUTE] * len(keys), keys, templates)
    assert {i: e.errno for i, e in failed.items()} == {2: errno.ENODEV}
    assert [m for _, m in messages(b"".join(kernel.sent).replace(rtnl.encode_noop(1), b""))] == [
        rtnl.encode_request(rtnl.RTM_NEWROUTE, 2 + i, rtnl.route_from_template(k, t))
        for i, (k, t) in enumerate(zip(keys, templates))]


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 32)), min_size=1, max_size=50),
       st.integers(1, 2**31), st.sampled_from([rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE]),
       st.none() | st.integers(0, 2**32 - 1), st.integers(0, 2**31 - 1))
def test_requests_encoded_in_bulk_equal_those_encoded_one_by_one(dsts, seq, cmd, gateway, oif):
    keys = [rtnl.route_key(dst, dst_len) for dst, dst_len in dsts]
    template = rtnl.route_template(rtnl.route_image(dst=0, dst_len=24, table=254, proto=80,
                                                    gateway=gateway, oif=oif))
    seqs = [seq + 3 * i for i in range(len(keys))]
    assert bytes(rtnl.encode_requests(cmd, template, keys, seqs)) == b"".join(
        rtnl.encode_request(cmd, s, rtnl.route_from_template(key, template))
        for s, key in zip(seqs, keys))


# -- round trips -----------------------------------------------------------------------------------

routes = st.fixed_dictionaries({
    "dst": st.integers(0, 2**32 - 1), "dst_len": st.integers(0, 32),
    "table": st.sampled_from([254, 100, 1000, 2**31]), "proto": st.integers(1, 255),
    "rtype": st.sampled_from(sorted(rtnl.TYPE_NAMES)), "scope": st.sampled_from(sorted(rtnl.SCOPE_NAMES)),
    "gateway": st.none() | st.integers(0, 2**32 - 1), "oif": st.integers(0, 2**31 - 1),
    "onlink": st.booleans(), "priority": st.integers(0, 2**32 - 1), "tos": st.integers(0, 255),
})


@given(routes)
def test_image_round_trips_through_the_dump_parser_and_pyroute2(spec):
    if not spec["dst_len"]:
        spec["dst"] = 0
    image = rtnl.route_image(**spec)
    dump = rtnl.RouteDump(table=spec["table"], proto=spec["proto"])
    rtnl.parse_route_dump(rtnl.encode_request(rtnl.RTM_NEWROUTE, 1, image) + DONE, dump)
    key = rtnl.route_key(spec["dst"], spec["dst_len"])
    assert dump.ours == {key: rtnl.route_template(image)} and dump.images() == {key: image}
    assert rtnl.route_from_template(key, dump.ours[key]) == image
    route = rtnl.decode_route(image)
    assert route == rtnl.Route(key, spec["proto"], spec["rtype"], spec["scope"],
                               rtnl.RTNH_F_ONLINK if spec["onlink"] else 0, spec["tos"],
                               spec["priority"], spec["gateway"], spec["oif"], spec["table"])
    msg = pyroute2_parse(rtnl.encode_request(rtnl.RTM_NEWROUTE, 1, image))
    assert msg["dst_len"] == spec["dst_len"] and msg.get_attr("RTA_TABLE") == spec["table"]
    expected_dst = str(IPv4Address(spec["dst"])) if spec["dst_len"] else None
    assert msg.get_attr("RTA_DST") == expected_dst
    expected_gw = None if spec["gateway"] is None else str(IPv4Address(spec["gateway"]))
    assert msg.get_attr("RTA_GATEWAY") == expected_gw


@given(st.integers(0, 2**32 - 1), st.integers(1, 32))
def test_pyroute2_encoded_prefix_parses_to_its_key(dst, dst_len):
    address = str(IPv4Address(dst))
    dump = rtnl.RouteDump(table=254, proto=80)
    rtnl.parse_route_dump(pyroute2_route(address, dst_len, oif=2), dump)
    assert list(dump.ours) == [rtnl.route_key(dst, dst_len)]
    assert rtnl.key_parts(rtnl.route_key(dst, dst_len)) == (dst, dst_len)


def test_link_dump_parser():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    def link(index: int, name: str, flags: int) -> bytes:
        msg = ifinfmsg()
        msg["header"]["type"], msg["index"], msg["flags"] = rtnl.RTM_NEWLINK, index, flags
        msg["attrs"] = [("IFLA_MTU", 1500), ("IFLA_IFNAME", name)]
        msg.encode()
        return bytes(msg.data)

    names, flags = {}, {}
    assert rtnl.parse_link_dump(link(1, "lo", 9) + link(7, "cali0123456789a", 0), names, flags) is False
    assert rtnl.parse_link_dump(DONE, names) is True
    assert names == {1: "lo", 7: "cali0123456789a"} and flags == {1: 9, 7: 0}


def test_notifications_keep_their_header_and_route_images_end_with_their_oif():
    new = pyroute2_route("10.244.1.0", 26, gateway="192.168.5.2", oif=3)
    gone = bytearray(pyroute2_route("10.244.1.5", 32, oif=7, scope=rtnl.RT_SCOPE_LINK))
    struct.pack_into("=HH", gone, 4, rtnl.RTM_DELROUTE, 0)
    events = list(rtnl.parse_events(new + bytes(gone)))
    assert [(t, f) for t, f, _ in events] == [(rtnl.RTM_NEWROUTE, rtnl.NLM_F_MULTI), (rtnl.RTM_DELROUTE, 0)]
    assert [rtnl.decode_route(m[16:]).oif for _, _, m in events] == [3, 7]
    assert events[0][2][16:].endswith(rtnl.oif_attr(3)) and events[1][2][16:].endswith(rtnl.oif_attr(7))


def test_write_ignores_answers_left_by_an_earlier_failed_operation():
    kernel = FakeKernel({})
    kernel.queue.append(error(3, errno.EEXIST, "left over"))  # e.g. from a batch that raised
    sock = object.__new__(rtnl.RtnlSocket)
    sock.sock, sock._seq = kernel, 2
    assert sock.write([(rtnl.RTM_NEWROUTE, rtnl.route_image(dst=DST, dst_len=24, table=254, proto=80))]) == {}


def test_lost_answers_raise_instead_of_waiting_for_a_barrier_that_may_never_come():
    class Overflowing(FakeKernel):
        def send(self, data: bytes) -> int:
            self.queue.append(OSError(errno.ENOBUFS, "No buffer space available"))
            return len(data)

    sock = object.__new__(rtnl.RtnlSocket)
    sock.sock, sock._seq = Overflowing({}), 0
    with pytest.raises(rtnl.NetlinkFailure) as info:
        sock.write([(rtnl.RTM_NEWROUTE, rtnl.route_image(dst=DST, dst_len=24, table=254, proto=80))])
    assert info.value.errno == errno.ENOBUFS


def test_routes_of_one_shape_share_one_template_object():
    """100k dumped routes must not cost 100k images: routes of one shape hold one ``bytes``."""
    images = [rtnl.route_image(dst=DST + 256 * i, dst_len=24, table=254, proto=80, oif=3)
              for i in range(3)] + [rtnl.route_image(dst=DST + 1024, dst_len=24, table=254, proto=80,
                                                     oif=4)]
    dump = rtnl.RouteDump(table=254, proto=80)
    rtnl.parse_route_dump(b"".join(rtnl.encode_request(rtnl.RTM_NEWROUTE, 1, i) for i in images)
                          + DONE, dump)
    assert len({id(t) for t in dump.ours.values()}) == 2 and len(dump.templates) == 2
    assert sorted(dump.images().values()) == sorted(images)
