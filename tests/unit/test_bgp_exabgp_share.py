"""bgp/exabgp_share.py: pinned to the installed ExaBGP, and the same UPDATEs to every peer with it.

The behavioural tests drive real ExaBGP objects in process: a configuration with three neighbors
parsed by ExaBGP, API lines parsed by ExaBGP's own API parser, ``inject_change`` as shipped and as
adapted, and each neighbor's Adj-RIB-Out read through ``OutgoingRIB.updates`` as the reactor reads it
before sending. No sockets: what a session sends is tested in tests/functional/test_bgp_reflector.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BGP_DIR = str(Path(__file__).resolve().parents[2] / "bgp")
# ExaBGP's logger reads this when it is imported. Only for the imports: left in os.environ, every
# ExaBGP a later test starts would inherit it and log nothing (test_bgp_speaker counts reloads in
# exabgp.log, test_bgp_config reads validate's output).
_LOG_ENABLE = os.environ.get("exabgp.log.enable")
os.environ["exabgp.log.enable"] = "false"

from bgp import exabgp_share  # noqa: E402
from exabgp.bgp.message import Action  # noqa: E402
from exabgp.configuration.configuration import Configuration, _Configuration  # noqa: E402
from exabgp.environment import getenv  # noqa: E402
from exabgp.logger import log  # noqa: E402
from exabgp.reactor.api import API  # noqa: E402
from exabgp.reactor.api.command import announce, limit  # noqa: E402

if _LOG_ENABLE is None:
    del os.environ["exabgp.log.enable"]
else:
    os.environ["exabgp.log.enable"] = _LOG_ENABLE

SHIPPED = _Configuration.inject_change
SHIPPED_MATCH = announce.match_neighbors
NEIGHBORS = {"10.0.0.2": "10.0.0.1", "10.0.0.3": "10.0.0.1", "10.0.1.4": "10.0.1.1"}  # peer: local


def test_the_installed_exabgp_is_the_pinned_one():
    """Fails when ExaBGP changes under the adaptation: re-read the functions named, then re-pin."""
    from exabgp.version import release

    assert release == exabgp_share.PINNED_RELEASE
    assert exabgp_share.mismatches() == []
    assert exabgp_share.refusal(release) is None


def test_another_release_or_changed_code_is_refused():
    assert "5.0.16 is not 5.0.15" in exabgp_share.refusal("5.0.16")
    name = "exabgp.rib.outgoing:OutgoingRIB.del_from_rib"
    why = exabgp_share.refusal(exabgp_share.PINNED_RELEASE, {name: "0" * 64})
    assert why is not None and name in why
    missing = "exabgp.rib.outgoing:OutgoingRIB.no_such_function"
    assert exabgp_share.mismatches({missing: "0" * 64}) == [missing]


def test_switched_off_leaves_exabgp_as_shipped():
    assert exabgp_share.share_routes({exabgp_share.ENV_SWITCH: "0"}) is False
    assert _Configuration.inject_change is SHIPPED
    assert announce.match_neighbors is SHIPPED_MATCH is limit.match_neighbors


PEER_NAMES = [f"neighbor 10.0.{i // 3}.{i} local-ip 10.0.{i // 3}.1 local-as 64512 peer-as "
              f"{64512 + i % 2} router-id 10.0.0.1 family-allowed in-open" for i in range(2, 14)]


@pytest.mark.parametrize("line", [
    "announce route 10.244.0.0/26 next-hop self",
    "neighbor 10.0.0.2 announce route 10.244.0.0/26 next-hop self",
    "neighbor 10.0.1.3 , neighbor 10.0.0.2 , neighbor 10.0.2.6 announce attributes nlri 10.244.0.0/26",
    "neighbor 10.0.1.1 announce route 10.244.0.0/26 next-hop self",  # a local address: no peer
    "neighbor 10.0.1.3 peer-as 64513 , neighbor 10.0.1.4 peer-as 64513 withdraw route 10.244.0.0/26",
    "neighbor 10.0.1.3 local-as 64512 , neighbor 10.0.2.8 , neighbor 10.0.1.3 withdraw attributes nlri 10.0.0.0/8",
    "neighbor * announce route 10.244.0.0/26 next-hop self",
    "neighbor 10.0.0 announce route 10.244.0.0/26 next-hop self",
])
def test_the_selector_matches_the_peers_it_matches_as_shipped(line):
    descriptions, _ = limit.extract_neighbors(line)
    shipped = limit.match_neighbors(PEER_NAMES, descriptions)
    assert exabgp_share.memo_match_neighbors(PEER_NAMES, descriptions) == shipped
    assert exabgp_share.memo_match_neighbors(PEER_NAMES, descriptions) == shipped  # from the table
    assert exabgp_share.memo_match_neighbors(PEER_NAMES[::-1], descriptions) == shipped[::-1]


def test_exabgp_main_loads_it_by_file_name():
    """exabgp_main.py imports it as a top-level module from its own directory."""
    sys.path.insert(0, BGP_DIR)
    try:
        import exabgp_share as top_level
        assert top_level.PINNED_SOURCES == exabgp_share.PINNED_SOURCES
    finally:
        sys.path.remove(BGP_DIR)
        sys.modules.pop("exabgp_share", None)


@pytest.fixture
def exabgp(tmp_path):
    log.init(getenv())
    conf = tmp_path / "exabgp.conf"
    conf.write_text("".join(
        f"neighbor {peer} {{ router-id 10.0.0.1; local-address {local}; local-as 64512; "
        f"peer-as 64512; family {{ ipv4 unicast; }} }}\n" for peer, local in NEIGHBORS.items()))
    configuration = Configuration([str(conf)])
    assert configuration.reload() is True, configuration.error
    _fresh_ribs(configuration)
    api = API(object())
    names = {n.split()[1]: n for n in configuration.neighbors}
    yield configuration, api, names
    _Configuration.inject_change = SHIPPED
    announce.match_neighbors = SHIPPED_MATCH


def _fresh_ribs(configuration) -> None:
    """Empty Adj-RIBs: ExaBGP keeps each neighbor's RIBs across configurations (for reloads)."""
    for neighbor in configuration.neighbors.values():
        neighbor.rib.uncache()
        neighbor.make_rib()


def _send(configuration, api, names, targets, line: str) -> None:
    peers = [names[t] for t in targets]
    changes = api.api_attributes(line, peers)
    assert changes, line
    for change in changes:
        change.nlri.action = Action.WITHDRAW if line.startswith("withdraw") else Action.ANNOUNCE
        assert configuration.inject_change(peers, change)


def _drain(configuration, names) -> dict[str, list[tuple[str, str, str]]]:
    """Per peer: what its next UPDATEs carry, as (action, NLRI with next hop, attributes)."""
    out = {}
    for peer, name in names.items():
        outgoing = configuration.neighbors[name].rib.outgoing
        out[peer] = sorted((str(n.action), str(n), str(u.attributes))
                           for u in outgoing.updates(True) for n in u.nlris)
    return out


SCENARIO = [
    (["10.0.0.2", "10.0.0.3", "10.0.1.4"], "announce attributes next-hop 10.0.9.1 origin igp "
     "local-preference 100 originator-id 10.0.9.1 cluster-list [ 244.0.0.1 ] "
     "nlri 10.244.1.0/26 10.244.1.64/26"),
    (["10.0.0.2", "10.0.1.4"], "announce attributes next-hop self nlri 10.244.2.0/26"),
    (["10.0.0.2"], "withdraw attributes nlri 10.244.1.0/26"),
    (["10.0.0.3"], "announce attributes next-hop 10.0.9.2 originator-id 10.0.9.2 "
     "cluster-list [ 244.0.0.1 ] nlri 10.244.1.64/26"),
]


def _run(configuration, api, names) -> list[dict]:
    steps = []
    for targets, line in SCENARIO:
        _send(configuration, api, names, targets, line)
        steps.append(_drain(configuration, names))
    cached = {peer: sorted(str(c.nlri) for c in
                           configuration.neighbors[name].rib.outgoing.cached_changes())
              for peer, name in names.items()}
    return [*steps, cached]


def test_every_peer_sends_what_it_sends_as_shipped(exabgp, tmp_path):
    configuration, api, names = exabgp
    shipped = _run(configuration, api, names)
    assert exabgp_share.share_routes() is True
    assert _Configuration.inject_change is exabgp_share.shared_inject_change
    assert announce.match_neighbors is exabgp_share.memo_match_neighbors
    _fresh_ribs(configuration)
    assert _run(configuration, api, names) == shipped

    first, self_nexthop, withdrawn, replaced, cached = shipped
    assert all(len(first[p]) == 2 for p in NEIGHBORS)  # the sanity of the scenario itself
    assert [n for _, n, _ in self_nexthop["10.0.1.4"]] == ["10.244.2.0/26 next-hop 10.0.1.1"]
    assert [n for _, n, _ in self_nexthop["10.0.0.2"]] == ["10.244.2.0/26 next-hop 10.0.0.1"]
    assert withdrawn == {"10.0.0.2": [("withdraw", "10.244.1.0/26", "")], "10.0.0.3": [],
                         "10.0.1.4": []}
    assert [n for _, n, _ in replaced["10.0.0.3"]] == ["10.244.1.64/26 next-hop 10.0.9.2"]
    assert cached["10.0.1.4"] == ["10.244.1.0/26 next-hop 10.0.9.1", "10.244.1.64/26 next-hop 10.0.9.1",
                                  "10.244.2.0/26 next-hop 10.0.1.1"]


def test_one_route_object_reaches_every_target(exabgp):
    configuration, api, names = exabgp
    assert exabgp_share.share_routes() is True
    _send(configuration, api, names, list(NEIGHBORS), SCENARIO[0][1])
    queued = [{str(c.nlri): c for c in configuration.neighbors[n].rib.outgoing.queued_changes()}
              for n in names.values()]
    assert queued[0].keys() == {"10.244.1.0/26 next-hop 10.0.9.1", "10.244.1.64/26 next-hop 10.0.9.1"}
    for prefix, change in queued[0].items():
        assert all(q[prefix] is change for q in queued[1:])

