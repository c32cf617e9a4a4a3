"""Every resource document of the source article loads unchanged, round-trips, and reads back in
the column shapes the article shows calicoctl printing (its whitespace collapsed, so compared by
words)."""
from pathlib import Path

import pytest
import yaml

from crds import load, parse_selector, validate_set
from ctl import documents, output
from datastore.memory import MemoryDatastore

ARTICLE = Path(__file__).parent / "testdata" / "article"
FILES = sorted(ARTICLE.glob("*.yaml"))

# The article's calicoctl output, line by line.
GET_IPPOOL_WIDE = ["NAME CIDR NAT IPIPMODE VXLANMODE DISABLED SELECTOR",
                   "default-ipv4-ippool 10.244.0.0/16 true Never Never false all()"]
GET_IPPOOL_WIDE_IPIP = ["NAME CIDR NAT IPIPMODE VXLANMODE DISABLED SELECTOR",
                        "default-ipv4-ippool 10.244.0.0/16 true Always Never false all()"]
GET_IPPOOL = ["NAME CIDR SELECTOR", "default-ipv4-ippool 10.244.0.0/16 all()"]
GET_BGPCONFIG = ["NAME LOGSEVERITY MESHENABLED ASNUMBER", "default Info false 64512"]
GET_BGPPEER_HEADER = "NAME PEERIP NODE ASN"
GET_NODES_WIDE = ["NAME ASN IPV4 IPV6", "zcsmaster1 (64512) 192.168.40.180/24",
                  "zcsnode1 (64512) 192.168.40.181/24", "zcsnode2 (64512) 192.168.40.182/24"]


def wire_docs(path):
    """The resource documents of a file, List items flattened (as calicoctl reads them)."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        out.extend(doc["items"] if doc["kind"].endswith("List") else [doc])
    return out


def article_resources():
    return [load(d) for path in FILES for d in wire_docs(path)]


def table(kind, items, wide=False, default_asn=64512):
    headers, rows = output.resource_rows(kind, items, wide, default_asn)
    return [" ".join(line.split()) for line in output.columns(headers, rows).splitlines()]


def is_within(small, big):
    """Every key and value the user wrote is in ``big`` unchanged (defaults may be added)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and is_within(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(is_within, small, big))
    return small == big


def test_the_article_documents_are_all_here():
    kinds = sorted(d["kind"] for path in FILES for d in wire_docs(path))
    assert kinds == ["BGPConfiguration", "BGPPeer", "IPPool"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_loads_unchanged_and_round_trips(path):
    for doc in wire_docs(path):
        resource = load(doc)
        assert is_within(doc, resource.to_dict())
        assert load(resource.to_dict()) == resource


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_reads_through_the_cli_document_reader(path):
    assert documents.read_documents(str(path)) == [load(d) for d in wire_docs(path)]


def test_the_article_set_is_consistent_as_a_whole_store():
    validate_set(article_resources(), whole_store=True)


def test_tables_match_the_article():
    by_kind = {}
    for r in article_resources():
        by_kind.setdefault(r.KIND, []).append(r)
    assert table("IPPool", by_kind["IPPool"], wide=True) == GET_IPPOOL_WIDE
    assert table("IPPool", by_kind["IPPool"]) == GET_IPPOOL
    assert table("BGPConfiguration", by_kind["BGPConfiguration"]) == GET_BGPCONFIG
    assert table("BGPPeer", by_kind["BGPPeer"])[0] == GET_BGPPEER_HEADER


def test_switching_the_pool_to_ipip_reads_back_as_the_article_shows():
    [doc] = wire_docs(ARTICLE / "ippool-list.yaml")
    doc["spec"]["ipipMode"] = "Always"  # the article's edit of ipip.yaml
    assert table("IPPool", [load(doc)], wide=True) == GET_IPPOOL_WIDE_IPIP


def article_nodes():
    """The article's three nodes (from its `get nodes -o wide`), with the route-reflector labels and
    cluster ID it adds to zcsnode1 and zcsnode2."""
    nodes = []
    for name, ip in (("zcsmaster1", "192.168.40.180/24"), ("zcsnode1", "192.168.40.181/24"),
                     ("zcsnode2", "192.168.40.182/24")):
        rr = name != "zcsmaster1"
        bgp = {"ipv4Address": ip, **({"routeReflectorClusterID": "244.0.0.1"} if rr else {})}
        nodes.append(load({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                           "metadata": {"name": name, "labels": {"route-reflector": "true"} if rr else {}},
                           "spec": {"bgp": bgp}}))
    return nodes


def test_nodes_wide_shows_the_inherited_asn_as_the_article_does():
    assert table("Node", article_nodes(), wide=True) == GET_NODES_WIDE


def test_the_article_peer_selects_the_labelled_route_reflectors():
    [peer] = [r for r in article_resources() if r.KIND == "BGPPeer"]
    nodes = article_nodes()
    local = parse_selector(peer.spec.node_selector)
    remote = parse_selector(peer.spec.peer_selector)
    assert [n.name for n in nodes if local.matches(n.metadata.labels)] == [n.name for n in nodes]
    assert [n.name for n in nodes if remote.matches(n.metadata.labels)] == ["zcsnode1", "zcsnode2"]


def test_applied_to_a_datastore_they_read_back_the_same():
    ds = MemoryDatastore()
    for r in article_resources() + article_nodes():
        ds.apply(r)
    asn = ds.get("BGPConfiguration", "default").spec.as_number
    assert table("IPPool", ds.list("IPPool").items, wide=True) == GET_IPPOOL_WIDE
    assert table("BGPConfiguration", ds.list("BGPConfiguration").items) == GET_BGPCONFIG
    assert table("Node", ds.list("Node").items, wide=True, default_asn=asn) == GET_NODES_WIDE
    [peer] = ds.list("BGPPeer").items
    assert table("BGPPeer", [peer])[1] == "peer-with-route-reflectors all() 0"


def test_get_ippool_yaml_is_the_articles_list_shape():
    [doc] = yaml.safe_load_all((ARTICLE / "ippool-list.yaml").read_text())
    pools = [load(d) for d in doc["items"]]
    rendered = yaml.safe_load(output.documents("IPPool", pools, 223175, "yaml", single=False))
    assert is_within(doc, rendered)


@pytest.mark.parametrize("typed, kind", [("bgppeer", "BGPPeer"), ("nodes", "Node"), ("ipPool", "IPPool"),
                                         ("ippool", "IPPool"), ("bgpconfig", "BGPConfiguration"),
                                         ("node", "Node")])
def test_the_kind_names_the_article_types_resolve(typed, kind):
    from crds import kind_class
    assert kind_class(typed).KIND == kind


def test_applied_and_read_back_through_the_cli_verbs(capsys):
    """`calicoctl apply -f` each article file, then the article's `get` commands, word for word."""
    import argparse

    from ctl import resources

    ds = MemoryDatastore()
    for path in FILES:
        assert resources.write(ds, "apply", documents.read_documents(str(path))) == 0
    for node in article_nodes():
        ds.apply(node)
    capsys.readouterr()

    def get(kind, wide=False):
        args = argparse.Namespace(kind=kind, name=None, namespace=None, output="wide" if wide else None)
        assert resources.get(ds, args) == 0
        return [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]

    assert get("ipPool", wide=True) == GET_IPPOOL_WIDE
    assert get("ippool") == GET_IPPOOL
    assert get("bgpconfig") == GET_BGPCONFIG
    assert get("bgppeer")[0] == GET_BGPPEER_HEADER
    assert get("nodes", wide=True) == GET_NODES_WIDE
