"""The lab: a multi-node cluster on one machine, in network namespaces (the project's main job).

``lab up`` starts a real etcd, N node namespaces on one bridge, a ``pycalico-node`` in each, and pods
made by the real CNI plugin; ``lab ping`` proves every pod reaches every other; ``lab restart`` ends
one agent with SIGKILL (``--signal TERM``: as a rolling update stops it) and starts it again; ``lab down`` removes everything (idempotent). Does I/O.
"""
