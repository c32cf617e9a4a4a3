"""``pycalicoctl``: calicoctl's resource verbs (apply/create/replace/delete/get, -o wide|yaml|json),
per-node inspection (``node status``, ``node routes``: read from the agent's local unix socket), IPAM
views, and the lab. Does I/O (datastore, unix sockets); the table/document shapes in ``output`` are pure.
"""
