"""ExaBGP's entry point as the speaker runs it: ``python exabgp_main.py server <conf>``.

Standard library only, run as a script. It makes ``import ssl`` fail, then runs ExaBGP's own
``__main__`` unchanged. ExaBGP speaks plain BGP over TCP and never uses TLS, but its reactor imports
asyncio, and asyncio imports ssl when it can: OpenSSL mapped and initialised in every node's
ExaBGP, 4 MB of RSS (issue 7's memory budget, ``python -m bench.node_memory``). asyncio treats a
failed ``import ssl`` as "no TLS here" by design.
"""
import runpy
import sys

if __name__ == "__main__":
    sys.path.pop(0)  # this file's directory (bgp/): its modules must not shadow anything
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` now raises ImportError
    sys.argv[0] = "exabgp"
    runpy.run_module("exabgp", run_name="__main__", alter_sys=True)
