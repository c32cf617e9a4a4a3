"""Who may announce what over BGP, kept by difference (felix.cluster.BgpOrigins, agent
_set_origins, bgp.policy.change_origins): a reconfigure costs what changed, not every block, and
the result is what a fresh computation from the whole state gives."""
from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.policy import ImportPolicy
from datastore.syncer import Update
from felix import cluster
from tests.unit.test_felix_agent_loop import make_agent
from tests.unit.test_felix_cluster import RESOURCES, block_with, res, state_of, upd

NODES = ("n1", "n2", "n3")
CIDRS = tuple(f"10.244.{i}.0/26" for i in range(1, 5))


class _Speaker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_origins(self, blocks, borrowed) -> None:
        self.calls.append(("set", dict(blocks), dict(borrowed)))

    def change_origins(self, blocks, borrowed) -> None:
        self.calls.append(("change", dict(blocks), dict(borrowed)))


class _OnlyGet(dict):
    """State blocks that may be looked up by key but not walked: walking is O(blocks)."""

    def __iter__(self):
        raise AssertionError("every block walked")

    keys = values = items = __iter__


def test_one_changed_block_is_one_origin_change_and_no_other_block_is_read(tmp_path):
    agent = make_agent(tmp_path)
    many = [res("IPAMBlock", f"10-245-{i >> 2}-{(i & 3) * 64}-26",
                {"cidr": f"10.245.{i >> 2}.{(i & 3) * 64}/26", "affinity": "host:n2"})
            for i in range(1000)]
    agent.state = state_of(RESOURCES + many)
    speaker = _Speaker()
    agent._origins.update(agent.state, agent.state.take_changes())
    agent._set_origins(speaker)
    [(kind, blocks, borrowed)] = speaker.calls
    assert kind == "set" and len(blocks) == 1003 and blocks[N("10.245.0.0/26")] == A("10.99.0.2")
    assert (blocks, borrowed) == cluster.bgp_origins(agent.state)

    agent.state.blocks = _OnlyGet(agent.state.blocks)
    agent.state.apply([upd(res("IPAMBlock", "10-245-0-0-26",
                               {"cidr": "10.245.0.0/26", "affinity": "host:n1"}))])
    agent._origins.update(agent.state, agent.state.take_changes())
    agent._set_origins(speaker)
    assert speaker.calls[-1] == ("change", {N("10.245.0.0/26"): A("10.99.0.1")}, {})
    agent._origins.update(agent.state, agent.state.take_changes())  # nothing changed
    agent._set_origins(speaker)
    assert speaker.calls[-1] == ("change", {}, {})


def test_a_new_speaker_gets_the_whole_set(tmp_path):
    agent = make_agent(tmp_path)
    agent.state = state_of(RESOURCES)
    agent._origins.update(agent.state, agent.state.take_changes())
    first, second = _Speaker(), _Speaker()
    agent._set_origins(first)
    agent._set_origins(second)
    assert [c[0] for c in first.calls + second.calls] == ["set", "set"]
    assert second.calls[0][1:] == cluster.bgp_origins(agent.state)


def _node(name: str, host: int | None):
    spec = {"bgp": {"ipv4Address": f"10.99.0.{host}/24"}} if host is not None else {}
    return res("Node", name, spec)


def _block(cidr: str, owner: str | None, lent: dict[int, str]):
    return block_with(lent, affinity=f"host:{owner}" if owner else None, cidr=cidr)


steps = st.one_of(
    st.tuples(st.just("Node"), st.sampled_from(NODES), st.one_of(st.none(), st.integers(1, 3))),
    st.tuples(st.just("block"), st.sampled_from(CIDRS), st.one_of(st.none(), st.sampled_from(NODES)),
              st.dictionaries(st.integers(0, 3), st.sampled_from(NODES), max_size=2)),
    st.tuples(st.just("gone-node"), st.sampled_from(NODES)),
    st.tuples(st.just("gone-block"), st.sampled_from(CIDRS)),
)


def _update(step) -> Update:
    if step[0] == "Node":
        return upd(_node(step[1], step[2]))
    if step[0] == "block":
        return upd(_block(step[1], step[2], step[3]))
    if step[0] == "gone-node":
        return Update("Node", None, step[1], None)
    return Update("IPAMBlock", None, step[1].replace(".", "-").replace("/", "-"), None)


PROBES = [N(c) for c in CIDRS] + [N(f"10.244.{i}.{o}/32") for i in range(1, 5) for o in range(4)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(steps, min_size=1, max_size=4), min_size=1, max_size=6))
def test_changes_match_a_fresh_computation_at_every_step(batches):
    state = state_of([res("IPPool", "pool", {"cidr": "10.244.0.0/16"}), _node("n1", 1)])
    origins, policy = cluster.BgpOrigins(), ImportPolicy()
    policy.set_filter(frozenset({N("10.244.0.0/16")}), frozenset())
    origins.update(state, state.take_changes())
    policy.set_origins(origins.blocks, origins.borrowed)
    origins.take_changes()
    for batch in batches:
        state.apply([_update(step) for step in batch])
        origins.update(state, state.take_changes())
        policy.change_origins(*origins.take_changes())
        blocks, borrowed = cluster.bgp_origins(state)
        assert (origins.blocks, origins.borrowed) == (blocks, borrowed)
        fresh = ImportPolicy()
        fresh.set_filter(policy.pools, policy.own)
        fresh.set_origins(blocks, borrowed)
        for prefix in PROBES:
            for host in (1, 2, 3):
                who = ipaddress.IPv4Address(f"10.99.0.{host}")
                assert policy.rejection(prefix, who) == fresh.rejection(prefix, who), (prefix, who)


def test_the_speaker_takes_origins_whole_then_by_difference(tmp_path):
    from bgp.speaker import Speaker

    speaker = Speaker(node_name="n1", router_id=A("10.99.0.1"), local_address=A("10.99.0.1"),
                      local_asn=64512, run_dir=tmp_path, on_change=lambda: None)
    speaker.set_import_filter(frozenset({N("10.244.0.0/16")}), frozenset())
    block = N("10.244.9.0/26")
    speaker.set_origins({}, {})
    policy = speaker._core._rib.policy
    assert policy.rejection(block, A("10.99.0.2")) == "rejected_origin_unknown"
    speaker.change_origins({block: A("10.99.0.2")}, {})
    assert policy.rejection(block, A("10.99.0.2")) is None
    speaker.change_origins({block: None}, {})
    assert policy.rejection(block, A("10.99.0.2")) == "rejected_origin_unknown"
