"""The CNI plugin (spec 1.0): ``pycalico-cni`` wires a pod, ``pycalico-ipam`` hands out its address.

Does I/O: netlink and /proc/sys in the node's namespace and the pod's, exec of the IPAM plugin
(spec delegation), and the datastore (WorkloadEndpoint, IPAM blocks). Short-lived processes: one
invocation per ADD / DEL / CHECK / VERSION, result or error JSON on stdout, logs on stderr.
``cni.names`` (interface, endpoint and handle names) is purely computational.
"""
# Before anything imports pyroute2: load only the parts we use (hostio.lean: 6 MB less per node).
from hostio.lean import lean_pyroute2 as _lean_pyroute2  # noqa: E402

_lean_pyroute2()

