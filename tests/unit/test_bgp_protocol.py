"""Parsing real ExaBGP 5.0.15 output (captured from two ExaBGPs peering in namespaces)."""
from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import protocol as p

LINES = (Path(__file__).parent / "testdata" / "bgp" / "exabgp5_events.jsonl").read_text().splitlines()
PEER = A("10.250.0.2")


def events_of(kind: str) -> list:
    ch = p.Channel()
    for _ in range(10):
        ch.command("x")  # so acks in the capture have something to match
    return [e for line in LINES for e in ch.feed(line) if isinstance(e, kind)]


def test_real_capture_has_no_malformed_lines():
    assert events_of(p.Malformed) == []


def test_state_and_fsm_events():
    states = [(e.peer, e.state, e.reason) for e in events_of(p.PeerStateChanged)]
    assert (PEER, "up", "") in states
    assert (PEER, "connected", "") in states
    assert (PEER, "active", "") in states
    assert (A("10.250.0.3"), "down", "closing connection") in states


def test_update_announce_withdraw_and_eor():
    announced = [(e.peer, e.nexthop, prefix) for e in events_of(p.RoutesAnnounced) for prefix in e.prefixes]
    assert announced[:2] == [(PEER, PEER, N("10.244.2.0/26")), (PEER, PEER, N("10.244.3.0/26"))]
    withdrawn = [(e.peer, prefix) for e in events_of(p.RoutesWithdrawn) for prefix in e.prefixes]
    assert (PEER, N("10.244.4.0/26")) in withdrawn
    assert p.EndOfRib(PEER, "ipv4 unicast") in events_of(p.EndOfRib)


def test_open_carries_graceful_restart_time():
    opened = events_of(p.OpenReceived)[0]
    assert (opened.peer, opened.router_id, opened.hold_time, opened.restart_time) == (PEER, PEER, 9, 120)


def test_acks_match_commands_in_order_and_text_is_not_an_ack():
    ch = p.Channel()
    assert ch.command("reload") == b"reload\n"
    ch.command("bogus")
    assert ch.outstanding == 2
    assert ch.feed("reload in progress\n") == [p.Text("reload in progress")]
    assert ch.feed("done\n") == [p.Ack("reload")]
    assert ch.feed("error") == [p.CommandError("bogus")]
    assert ch.outstanding == 0
    assert ch.feed("done") == [p.Ack(None)]


@pytest.mark.parametrize("line,reason", [
    ('{"type": "update", "neighbor": ', "invalid JSON"),
    ('{"type": "update"}', "missing field neighbor"),
    ('{"type": "update", "neighbor": {"address": {"peer": "nope"}}}', "neighbor.address.peer"),
    ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": {"announce":'
     ' {"ipv4 unicast": {"10.0.0.1": [{"nlri": "10.244.1.1/26"}]}}}}}}', "not an IPv4 prefix"),
    ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": {"announce":'
     ' {"ipv4 unicast": {"null": [{"nlri": "10.244.1.0/26"}]}}}}}}', "next-hop"),
    ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": {"withdraw":'
     ' {"ipv4 unicast": {"oops": 1}}}}}}', "not a list"),
    ('{"type": "open", "neighbor": {"address": {"peer": "10.0.0.1"}, "open": {"router_id": "1.1.1.1",'
     ' "hold_time": "9", "capabilities": {}}}}', "hold_time"),
    ('{}', "missing field type"),
    ('{"type": "state", "neighbor": {"address": {"peer": "10.0.0.1"}}}', "missing field state"),
])
def test_malformed_input_becomes_an_event_never_an_exception(line, reason):
    [event] = p.Channel().feed(line)
    assert isinstance(event, p.Malformed) and reason in event.reason, event


def _update(announce: str = "", withdraw: str = "") -> str:
    parts = [f'"announce": {{"ipv4 unicast": {announce}}}' if announce else "",
             f'"withdraw": {{"ipv4 unicast": {withdraw}}}' if withdraw else ""]
    return ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": {'
            + ", ".join(x for x in parts if x) + '}}}}')


def test_one_event_per_next_hop_and_compact_nlri_accepted():
    """ExaBGP packs many prefixes per UPDATE: one event per next hop, not per route; with
    exabgp.api.compact=true an NLRI is a bare string."""
    line = _update(announce='{"10.0.0.1": [{"nlri": "10.244.2.0/26"}, "10.244.3.0/26"],'
                            ' "10.0.0.9": ["10.244.5.0/26"]}',
                   withdraw='["10.244.4.0/26", {"nlri": "10.244.6.0/26"}]')
    peer = A("10.0.0.1")
    assert p.Channel().feed(line) == [
        p.RoutesWithdrawn(peer, (N("10.244.4.0/26"), N("10.244.6.0/26"))),
        p.RoutesAnnounced(peer, peer, (N("10.244.2.0/26"), N("10.244.3.0/26"))),
        p.RoutesAnnounced(peer, A("10.0.0.9"), (N("10.244.5.0/26"),))]
    assert p.Channel().feed(_update(announce='{"10.0.0.1": []}', withdraw="[]")) == []


def test_events_carry_prefix_keys_and_the_channel_keeps_no_cache():
    """A learned prefix is an integer key (length << 32 | address) from the parser on: no
    IPv4Network per route, and no per-prefix cache in the channel (100k: 10 MB)."""
    ch = p.Channel()
    [event] = ch.feed(_update(withdraw='["10.244.4.0/26", {"nlri": "10.244.1.0/24"}]'))
    assert event.keys == (26 << 32 | 0x0AF40400, 24 << 32 | 0x0AF40100)
    assert event.keys == tuple(map(p.prefix_key, event.prefixes))
    assert event == p.RoutesWithdrawn(A("10.0.0.1"), (N("10.244.4.0/26"), N("10.244.1.0/24")))
    assert [p.key_text(k) for k in event.keys] == ["10.244.4.0/26", "10.244.1.0/24"]
    assert list(vars(ch)) == ["_unacked"]


@pytest.mark.parametrize("entries,reason", [
    ('["10.244.1.1/26"]', "not an IPv4 prefix"),  # host bits set
    ('[{"nlri": 5}]', "not an IPv4 prefix"),  # IPv4Network(5) would be 0.0.0.5/32
    ('[{"prefix": "10.244.1.0/26"}]', "missing field nlri"),
    ('[["10.244.1.0/26"]]', "missing field nlri"),
])
def test_bad_nlri_in_a_batch_is_malformed(entries, reason):
    [event] = p.Channel().feed(_update(withdraw=entries))
    assert isinstance(event, p.Malformed) and reason in event.reason, event


def test_other_families_and_message_types_are_ignored():
    ch = p.Channel()
    v6 = ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": {"announce":'
          ' {"ipv6 unicast": {"::1": [{"nlri": "2001:db8::/64"}]}}}}}}')
    assert ch.feed(v6) == []
    assert ch.feed('{"type": "keepalive", "neighbor": {}}') == []
    assert ch.feed('{"type": "notification", "notification": "shutdown"}') == [p.Text("notification: shutdown")]


def test_command_builders_batch_sorted_and_never_empty():
    prefixes = [N(f"10.244.{i}.0/26") for i in range(3)]
    assert p.announce_commands(reversed(prefixes)) == [
        "announce attributes next-hop self nlri 10.244.0.0/26 10.244.1.0/26 10.244.2.0/26"]
    assert p.withdraw_commands(prefixes[:1], A("10.0.0.2")) == [
        "neighbor 10.0.0.2 withdraw attributes nlri 10.244.0.0/26"]
    assert p.announce_commands([]) == []
    many = [N(f"10.{i // 256}.{i % 256}.0/24") for i in range(p.BATCH_SIZE + 1)]
    assert [len(c.split("nlri ")[1].split()) for c in p.announce_commands(many)] == [p.BATCH_SIZE, 1]
    assert p.eor_command(A("10.0.0.2")) == "neighbor 10.0.0.2 announce eor ipv4 unicast"


def test_command_rejects_multiline():
    with pytest.raises(ValueError, match="command"):
        p.Channel().command("reload\nshutdown")


octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "00", "0x1", " 1", "", "1e1"]))
prefix_text = st.builds(lambda a, b, c, d, slash, length: f"{a}.{b}.{c}.{d}{slash}{length}",
                        octet, octet, octet, octet, st.sampled_from(["/", "", "//"]),
                        st.one_of(st.integers(-1, 40).map(str),
                                  st.sampled_from(["026", "", " 8", "255.255.255.0", "٣"])))


@settings(max_examples=500, deadline=None)
@given(st.one_of(prefix_text, st.text(max_size=20)))
def test_fast_prefix_parse_accepts_exactly_what_ipaddress_accepts(text):
    try:
        expected = N(text)
    except ValueError:
        expected = None
    try:
        [key] = p._nlris([text], "nlri")
        got = p.key_network(key)
    except p._Bad:
        got = None
    assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.one_of(prefix_text, st.text(max_size=20)))
def test_nlri_batch_parse_accepts_exactly_what_ipaddress_accepts(text):
    """The batch loop parses compact NLRIs inline: same answers as ipaddress, twice on one
    channel, and a bad one makes the UPDATE Malformed."""
    import json

    try:
        expected = N(text)
    except ValueError:
        expected = None
    ch = p.Channel()
    for _ in range(2):
        [event] = ch.feed(_update(withdraw=json.dumps([text, "10.0.0.0/8"])))
        if expected is None:
            assert isinstance(event, p.Malformed) and "not an IPv4 prefix" in event.reason
        else:
            assert event.prefixes == (expected, N("10.0.0.0/8"))
            assert hash(event.prefixes[0]) == hash(expected)


# ExaBGP 5's encoding of the RFC 4456 attributes (bgp/message/update/attribute/attributes.py:
# ORIGINATOR_ID is 'inet', a string; CLUSTER_LIST is 'list', a JSON array of strings).
REFLECTED_UPDATE = (
    '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "10.250.0.1", '
    '"peer": "10.250.0.9" }, "asn": { "local": 64512, "peer": 64512 }, "direction": "receive", '
    '"message": { "update": { "attribute": { "origin": "igp", "local-preference": 100, '
    '"originator-id": "10.250.0.2", "cluster-list": [ "244.0.0.1", "244.0.0.2" ] }, '
    '"announce": { "ipv4 unicast": { "10.250.0.2": [ "10.244.2.0/26" ] } } } } } }')


def test_update_with_originator_id_and_cluster_list():
    [event] = p.Channel().feed(REFLECTED_UPDATE)
    assert event == p.RoutesAnnounced(A("10.250.0.9"), A("10.250.0.2"), (N("10.244.2.0/26"),),
                                      A("10.250.0.2"), (A("244.0.0.1"), A("244.0.0.2")),
                                      "origin igp local-preference 100", local_pref=100)


def test_attributes_passed_on_by_a_reflector_in_exabgp_syntax():
    line = REFLECTED_UPDATE.replace('"local-preference": 100', (
        '"as-path": { "0": { "element": "as-sequence", "value": [ 65001, 65002 ] }, '
        '"1": { "element": "as-set", "value": [ 65003, 65004 ] } }, "local-preference": 200, '
        '"med": 5, "community": [ [ 64512, 100 ], [ 65535, 65281 ] ]'))
    [event] = p.Channel().feed(line)
    assert event.attributes == ("origin igp as-path [ 65001 65002 ] ( 65003 65004 ) "
                                "local-preference 200 med 5 community [ 64512:100 65535:65281 ]")


def test_update_without_reflection_attributes_has_none():
    event = events_of(p.RoutesAnnounced)[0]
    assert (event.originator_id, event.cluster_list) == (None, ())


@pytest.mark.parametrize("good,bad", [
    ('"originator-id": "10.250.0.2"', '"originator-id": "x"'),
    ('"cluster-list": [ "244.0.0.1", "244.0.0.2" ]', '"cluster-list": "244.0.0.1"'),
    ('"cluster-list": [ "244.0.0.1", "244.0.0.2" ]', '"cluster-list": [ "244.0.0.300" ]'),
    ('"origin": "igp"', '"origin": "best"'), ('"local-preference": 100', '"local-preference": -1'),
    ('"local-preference": 100', '"community": [ [ 1, 70000 ] ]'),
    ('"local-preference": 100', '"as-path": { "0": { "element": "as-sequence", "value": "1" } }')])
def test_bad_reflection_attributes_are_malformed(good, bad):
    line = REFLECTED_UPDATE.replace(good, bad)
    [event] = p.Channel().feed(line)
    assert isinstance(event, p.Malformed)


def test_reflect_and_withdraw_commands_to_several_neighbors():
    assert p.reflect_commands([A("10.0.0.3"), A("10.0.0.2")], A("10.0.0.1"), A("10.0.0.1"),
                              [A("244.0.0.1"), A("244.0.0.2")], [N("10.244.1.0/26"), N("10.244.0.0/26")]) == [
        "neighbor 10.0.0.2 , neighbor 10.0.0.3 announce attributes next-hop 10.0.0.1 originator-id "
        "10.0.0.1 cluster-list [ 244.0.0.1 244.0.0.2 ] nlri 10.244.0.0/26 10.244.1.0/26"]
    assert p.withdraw_from_commands([A("10.0.0.2")], [N("10.244.1.0/26")]) == [
        "neighbor 10.0.0.2 withdraw attributes nlri 10.244.1.0/26"]


def test_teardown_command_is_a_cease_with_a_valid_subcode():
    from ipaddress import IPv4Address

    from bgp.protocol import CEASE_PEER_DECONFIGURED, teardown_command
    assert teardown_command(IPv4Address("10.0.0.2")) == "neighbor 10.0.0.2 teardown 3"
    assert CEASE_PEER_DECONFIGURED == 3  # RFC 4486: Peer De-configured
    with pytest.raises(ValueError, match="subcode: 0"):
        teardown_command(IPv4Address("10.0.0.2"), 0)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_prefix_of_is_the_ipv4network_of_the_same_value(address, length):
    """prefix_of sets ipaddress's attributes itself: the result must be indistinguishable from
    the constructor's (equal, same hash both ways, same attributes, str, repr, order, pickle)."""
    import pickle

    network = address & (2**32 - 1 - (2 ** (32 - length) - 1))
    expected = N((network, length))
    got = p.prefix_of(network, length)
    assert type(got) is p.Prefix and got == expected and expected == got
    assert hash(got) == hash(expected) and {expected: 1}[got] == 1 and {got: 1}[expected] == 1
    def plain(net):  # /31 and /32 hold `hosts`, a method bound to the instance
        return {k: v for k, v in vars(net).items() if k != "hosts"}

    assert plain(got) == plain(expected) and vars(got).keys() == vars(expected).keys()
    assert (str(got), repr(got)) == (str(expected), repr(expected))
    if length >= 30:
        assert list(got.hosts()) == list(expected.hosts())
    assert got.num_addresses == expected.num_addresses and got.hostmask == expected.hostmask
    assert not got < expected and not expected < got and got.supernet(0) == expected.supernet(0)
    assert pickle.loads(pickle.dumps(got)) == got
    if network != address:
        with pytest.raises(ValueError, match="host bits"):
            p.prefix_of(address, length)


def test_prefix_fast_path_is_on_for_this_python():
    """The import-time self-check passed: parsed prefixes are built without ipaddress's parser
    (should a Python release change ipaddress's internals, this says so; parsing stays right)."""
    assert p._FAST


def test_parsed_prefixes_hash_once():
    """The RIB hashes each learned prefix ~11 times; a parsed prefix computes its hash once."""
    [event] = p.Channel().feed(_update(withdraw='["10.244.4.0/26", {"nlri": "10.244.1.0/24"}]'))
    assert [type(x) for x in event.prefixes] == [p.Prefix, p.Prefix]
    prefix = event.prefixes[0]
    object.__setattr__(prefix, "network_address", A("10.9.9.0"))  # what __hash__ would read
    assert hash(prefix) == hash(N("10.244.4.0/26"))


def test_parsed_prefixes_reach_the_rib_best_paths():
    from bgp.rib import Rib

    rib = Rib(clock=lambda: 0.0)
    rib.set_import_filter(frozenset({N("10.244.0.0/16")}), frozenset())
    for event in p.Channel().feed(_update(announce='{"10.0.0.1": ["10.244.2.0/26", "10.244.3.0/26"]}')):
        rib.apply(event)
    assert sorted(str(r.prefix) for r in rib.best()) == ["10.244.2.0/26", "10.244.3.0/26"]
    assert rib.counters["malformed"] == 0
