"""Import a big library's few modules we use without its package ``__init__`` importing the rest.

Two of our dependencies import everything from their top-level ``__init__``: ``pyroute2`` (NDB,
IPDB, conntrack, nl80211, wireguard...: 163 modules, 12.7 MB of RSS, where the agent uses
``iproute.linux`` and ``netlink``: 99 modules, 6.6 MB) and ``kubernetes`` (client, dynamic, watch,
stream, informer..., where the datastore uses ``ApiClient``, ``Configuration``, the exceptions and
the config loaders: 4 MB less). Every node pays for it in RSS (issue 7's memory budget; see
``python -m bench.node_memory``).

``lean(package, light=...)`` registers the package as a *lazy package* before anything imports it.
A lazy package resolves an attribute first from ``light`` (a name -> the submodule defining it),
then as a submodule, and only then runs its real ``__init__`` into itself. So the library's own
modules load unchanged, ``from pyroute2.iproute.linux import IPRoute`` costs only what it needs,
and any other code in the process that asks for ``pyroute2.NDB`` or ``kubernetes.client.CoreV1Api``
still gets it. If the package is already imported, ``lean`` does nothing. Standard library only.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Mapping
from pathlib import Path

__all__ = ["lean", "lean_kubernetes", "lean_pyroute2"]


class _LazyPackage(types.ModuleType):
    _light: Mapping[str, str] = {}

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        home = self._light.get(name)
        if home is not None:
            return getattr(importlib.import_module(home), name)
        sub = f"{self.__name__}.{name}"
        if not self.__dict__.get("_lean_completed") and importlib.util.find_spec(sub) is not None:
            return importlib.import_module(sub)
        self._complete()
        if name in self.__dict__:
            return self.__dict__[name]
        own = self.__dict__.get("__getattr__")  # the package's own lazy loader (PEP 562), if any
        if own is not None:
            return own(name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def _complete(self) -> None:
        """Run the package's real ``__init__`` into this module, once."""
        if self.__dict__.get("_lean_completed"):
            return
        self.__dict__["_lean_completed"] = True
        init = Path(self.__spec__.origin)
        exec(compile(init.read_bytes(), str(init), "exec"), self.__dict__)  # noqa: S102


def lean(package: str, light: Mapping[str, str] | None = None) -> bool:
    """Register ``package`` (a dotted name; its parents must be importable or lean already) as a
    lazy package. Returns False, doing nothing, when it is already imported or not installed."""
    if package in sys.modules:
        return False
    parent, _, child = package.rpartition(".")
    if parent:
        location = Path(sys.modules[parent].__path__[0]) / child / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            package, location, submodule_search_locations=[str(location.parent)])
    else:
        spec = importlib.util.find_spec(package)
        if spec is None:
            return False
    module = _LazyPackage(package)
    module._light = dict(light or {})
    module.__spec__, module.__file__, module.__package__ = spec, spec.origin, package
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[package] = module
    if parent:
        setattr(sys.modules[parent], child, module)
    return True


def lean_pyroute2() -> None:
    lean("pyroute2", {"AsyncIPRoute": "pyroute2.iproute.linux", "IPRoute": "pyroute2.iproute.linux"})


def lean_kubernetes() -> None:
    if lean("kubernetes"):
        lean("kubernetes.client", {
            "ApiClient": "kubernetes.client.api_client",
            "Configuration": "kubernetes.client.configuration",
            "ApiException": "kubernetes.client.exceptions",
        })
        lean("kubernetes.client.models")
        # In a cluster the agent uses the in-cluster loader only; kube_config (a kubeconfig file)
        # brings requests and oauthlib along: 6 MB, loaded only when a kubeconfig is used.
        lean("kubernetes.config", {
            "load_incluster_config": "kubernetes.config.incluster_config",
            "ConfigException": "kubernetes.config.config_exception",
            "new_client_from_config": "kubernetes.config.kube_config",
            "load_kube_config": "kubernetes.config.kube_config",
            "KUBE_CONFIG_DEFAULT_LOCATION": "kubernetes.config.kube_config",
        })
