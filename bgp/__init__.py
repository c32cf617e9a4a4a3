"""BGP for pycalico: which sessions to have, what peers taught us, and the ExaBGP child that speaks.

Contract (what felix/agent.py uses):
- ``peers.bgp_peers(local, nodes, cfg, explicit, passwords) -> frozenset[PeerSpec]``: the desired
  sessions (mesh, route reflectors, BGPPeers); ``secret_refs`` names the password Secrets to
  resolve, ``password_problems`` says which cannot be used (their sessions are left out).
- ``speaker.Speaker``: ``start``, ``stop(for_good=False)`` (a restart: the sessions close without
  a Cease and graceful-restart peers keep our routes as stale until the next speaker's End-of-RIB;
  ``for_good``, a node leaving: a Cease (Administrative Shutdown) to every session first, on which
  peers drop our routes at once), ``set_peers(peers, cluster_id=None)`` (exactly these
  sessions, at once; a cluster id makes us an RFC 4456 route reflector for the peers whose
  ``rr_client`` is set), ``want_peers(peers, cluster_id=None)`` (the same, make-before-break:
  sessions no longer wanted stay until others cover their routes, ``transition``),
  ``drop_peers()`` (BGP switched off for this node: every session goes at once, a Cease to each),
  ``set_local(asn, listen_port)`` (a change restarts ExaBGP; peers keep routes by graceful restart),
  ``set_advertisements`` (only the diff is sent; a session that comes up gets everything, reflected
  routes included, then End-of-RIB -- which a route reflector that has just started defers
  until it has learned what it reflects, RFC 4724 4.1), ``set_import_filter``, ``set_origins`` (origin validation:
  block -> owning node's address, borrowed address -> holder's),
  ``learned_routes`` (best paths the import policy accepts, graceful-restart stale routes
  included), ``peer_status`` (why a session is not up, in BIRD's words:
  ``Active Socket: Connection refused``, ``Received: Bad peer AS (2/2)``, ``max-prefix exceeded``),
  ``counters`` (``received``, ``rejected_<reason>``, ``malformed``, ``max_prefix_exceeded``,
  ``end_of_rib_received``),
  ``check_routes_in_sync()`` (True once routes are complete; latched by events, not by reading). ``on_change()`` is called (coalesced, on the
  event loop) whenever learned routes or peer status may have changed: reconcile level-triggered.

I/O: only ``speaker`` (files in run_dir, the ExaBGP child, a unix socket; it executes what
``speaker_core`` decides) and ``exabgp_child`` (the child's command line, environment, socat
relay, log rotation, /proc parent check); ``settings`` reads ``PYCALICO_BGP_*`` from the
environment.
Pure, no I/O: ``speaker_core`` (every decision of the speaker: events, calls and timer expiry in
with the time passed in; lines to send, timers, reloads, restarts, Cease, make-before-break,
graceful-restart expiry and max-prefix hold-down out), ``effects`` (those outputs and the
timers' names), ``supervision`` (the ExaBGP child's status, why it was replaced, the delay
before the next), ``core`` (one session's state, status
and causes, what a session that comes up is sent), ``peers``, ``transition`` (make-before-break between two sets of sessions), ``rib``
(Adj-RIB-In, best path, max-prefix, reflection loop checks, RFC 4724 helper, injected clock),
``policy`` (the one import filter, origin validation, the best-path steps), ``reflect`` (RFC 4456
reflection: targets, attributes, Adj-RIB-Out),
``exabgp_conf`` (config rendering), ``protocol`` (sans-I/O ExaBGP 5 line protocol).
"""
