"""Properties of the models and of whole-set validation, over generated input."""
import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from crds import InvalidResource, load, validate_set

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
asns = st.one_of(st.integers(1, 2**32 - 1),
                 st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
                 .filter(lambda t: t != (0, 0)).map(lambda t: f"{t[0]}.{t[1]}"))
v4 = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
peer_ips = st.one_of(v4, st.tuples(v4, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"))
selectors = st.sampled_from(["all()", "route-reflector == 'true'", "has(zone) && zone != 'a'",
                             "rack in {'r1', 'r2'}"])


@st.composite
def peers(draw):
    spec = {}
    scope = draw(st.sampled_from(["global", "node", "nodeSelector"]))
    if scope == "node":
        spec["node"] = draw(names)
    elif scope == "nodeSelector":
        spec["nodeSelector"] = draw(selectors)
    if draw(st.booleans()):
        spec.update(peerIP=draw(peer_ips), asNumber=draw(asns))
    else:
        spec["peerSelector"] = draw(selectors)
    for key, strategy in (("ttlSecurity", st.integers(0, 255)), ("filters", st.lists(names, max_size=3)),
                          ("nextHopMode", st.sampled_from(["Auto", "Self", "Keep"])),
                          ("maxRestartTime", st.sampled_from(["120s", "2m", "1m30s", "0"])),
                          ("reversePeering", st.sampled_from(["Auto", "Manual"]))):
        if draw(st.booleans()):
            spec[key] = draw(strategy)
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
            "metadata": {"name": draw(names)}, "spec": spec}


@given(peers())
def test_valid_peers_load_and_round_trip(doc):
    p = load(doc)
    assert load(p.to_dict()) == p and load(p.to_dict()).to_dict() == p.to_dict()
    for key, value in doc["spec"].items():
        if key != "asNumber":  # dotted "high.low" is stored as the number it means
            assert p.to_dict()["spec"][key] == value


def pool(i, cidr):
    return load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": f"p{i}"},
                 "spec": {"cidr": cidr}})


cidrs = st.one_of(
    st.tuples(st.integers(0, 255), st.integers(8, 24))
    .map(lambda t: str(ipaddress.ip_network(f"10.{t[0]}.0.0/{t[1]}", strict=False))),
    st.tuples(st.integers(0, 15), st.integers(100, 122))
    .map(lambda t: str(ipaddress.ip_network(f"fd00:{t[0]}::/{t[1]}", strict=False))),
)


@settings(max_examples=200)
@given(st.lists(cidrs, min_size=1, max_size=6), st.randoms())
def test_pool_overlap_is_found_whatever_the_order(cidr_list, rnd):
    pools = [pool(i, c) for i, c in enumerate(cidr_list)]
    nets = [p.spec.network for p in pools]
    expected = any(a.version == b.version and a.overlaps(b) for a, b in itertools.combinations(nets, 2))
    shuffled = pools[:]
    rnd.shuffle(shuffled)
    for order in (pools, shuffled):
        try:
            validate_set(order)
            found = False
        except InvalidResource as exc:
            assert exc.field == "spec.cidr" and "overlaps" in exc.reason
            found = True
        assert found is expected


@given(peers())
def test_every_valid_peer_is_accepted_by_the_shipped_crd_schema(doc):
    """Model and CRD agree on every peer shape: the API server would store what load() accepts
    (asNumber as the number load() stores: the CRD, like Calico's, types it integer)."""
    from crds import KINDS
    from crds.manifests import definition
    from tests.unit.test_crds_manifests import conforms

    schema = definition(KINDS["BGPPeer"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert conforms(load(doc).to_dict()["spec"], schema["properties"]["spec"]) == []
