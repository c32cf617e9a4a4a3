"""``get <kind>`` tables for every kind, in calicoctl's column shapes."""
import pytest

from crds import KINDS, load
from ctl import output


def res(kind, name, spec=None):
    d = {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}}
    return load(d if spec is None else {**d, "spec": spec})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_a_table_in_both_widths(kind):
    for wide in (False, True):
        headers, rows = output.resource_rows(kind, [], wide)
        assert headers[0] in ("NAME", "NAMESPACE") and rows == []


def test_bgppeer_columns_as_calicoctl_prints_them():
    peers = [res("BGPPeer", "peer-with-route-reflectors",
                 {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}),
             res("BGPPeer", "tor", {"peerIP": "192.168.40.1", "asNumber": 64567}),
             res("BGPPeer", "n1-tor", {"node": "zcsnode1", "peerIP": "192.168.40.2:1179",
                                       "asNumber": "1.10"})]
    headers, rows = output.resource_rows("BGPPeer", peers, wide=False)
    assert headers == ["NAME", "PEERIP", "NODE", "ASN"]
    assert rows == [["peer-with-route-reflectors", "", "all()", "0"],
                    ["tor", "192.168.40.1", "(global)", "64567"],
                    ["n1-tor", "192.168.40.2:1179", "zcsnode1", "65546"]]
    assert output.resource_rows("BGPPeer", peers, wide=True) == (headers, rows)
    lines = output.columns(headers, rows).splitlines()
    assert lines[0].split() == headers and lines[2].split() == rows[1]


def test_ipreservation_wide_joins_and_truncates_cidrs_like_calicoctl():
    many = [f"10.0.{i}.0/24" for i in range(20)]
    r = res("IPReservation", "keep", {"reservedCIDRs": many})
    assert output.resource_rows("IPReservation", [r], wide=False) == (["NAME"], [["keep"]])
    headers, [[name, cidrs]] = output.resource_rows("IPReservation", [r], wide=True)
    assert headers == ["NAME", "CIDRS"] and len(cidrs) == 80 and cidrs.endswith("...")
    assert cidrs.startswith("10.0.0.0/24,10.0.1.0/24,")


def test_felix_ipam_handle_filter_and_config_tables():
    felix = res("FelixConfiguration", "default", {"routeTableRange": {"min": 10, "max": 20}})
    assert output.resource_rows("FelixConfiguration", [felix], False) == (["NAME"], [["default"]])
    assert output.resource_rows("FelixConfiguration", [felix], True)[1] == \
        [["default", "Info", "90s", "10-20"]]
    handle = res("IPAMHandle", "h", {"handleID": "h", "block": {"10.244.1.0/26": 2, "10.0.0.0/26": 1}})
    assert output.resource_rows("IPAMHandle", [handle], False)[1] == \
        [["h", "h", "3", "10.0.0.0/26,10.244.1.0/26"]]
    config = res("IPAMConfig", "default", {"strictAffinity": True})
    assert output.resource_rows("IPAMConfig", [config], False)[1] == [["default", "true", "true", "0"]]
    bgpf = res("BGPFilter", "f", {"exportV4": [{"action": "Reject"}, {"action": "Accept"}]})
    assert output.resource_rows("BGPFilter", [bgpf], True)[1] == [["f", "2", "0", "0", "0"]]


def test_unknown_kind_has_no_table():
    with pytest.raises(ValueError, match="no table for Pod"):
        output.resource_rows("Pod", [], False)
