"""ExaBGP's entry point as the speaker runs it: ``python exabgp_main.py server <conf>``.

Standard library only, run as a script. It makes ``import ssl`` fail, adapts two behaviours (below,
and ``exabgp_share.py``: one parsed route shared by all the peers an API command names, instead of a
deep copy per peer), then runs ExaBGP's own ``__main__`` unchanged.

Cease on teardown: ExaBGP 5.0.15 closes a session whose graceful-restart capability was negotiated
*without* a NOTIFICATION even when the API asked ``neighbor X teardown N`` -- so a peer we remove
(a de-configured BGPPeer) takes the silent close for a restart and keeps our routes as stale for
its whole restart time. For the exact version this was read in, an API teardown turns that
neighbor's graceful-restart off first, so the Cease is sent; any other version is left alone with a
warning (tests/functional/test_bgp_interop.py fails if the behaviour changes under us). An agent
shutdown or restart never uses teardown, so graceful restart keeps working for those. ExaBGP speaks plain BGP over TCP and never uses TLS, but its reactor imports
asyncio, and asyncio imports ssl when it can: OpenSSL mapped and initialised in every node's
ExaBGP, 4 MB of RSS (issue 7's memory budget, ``python -m bench.node_memory``). asyncio treats a
failed ``import ssl`` as "no TLS here" by design.
"""
import runpy
import sys

PINNED_EXABGP = "5.0.15"


def _cease_on_teardown() -> None:
    from exabgp.reactor.peer import Peer
    from exabgp.version import version

    if version != PINNED_EXABGP:
        print(f"pycalico: exabgp {version} is not {PINNED_EXABGP}: teardown left as it is (a removed "
              "peer may keep our routes as stale)", file=sys.stderr)
        return
    original = Peer.teardown

    def teardown(self, code, restart=True):
        self.neighbor["capability"]["graceful-restart"] = False  # the peer is being removed
        original(self, code, restart)

    Peer.teardown = teardown


if __name__ == "__main__":
    from exabgp_share import share_routes  # next to this file: standard library and ExaBGP only

    sys.path.pop(0)  # this file's directory (bgp/): its modules must not shadow anything
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` now raises ImportError
    _cease_on_teardown()
    share_routes()
    sys.argv[0] = "exabgp"
    runpy.run_module("exabgp", run_name="__main__", alter_sys=True)
