"""``pycalico-install-cni``: the DaemonSet's init container puts the CNI path on the host.

Does file I/O only. Like Calico's install-cni it writes three things, each atomically
(a temporary file in the same directory, then ``rename``), and only if it differs:

- the conflist ``<net dir>/10-pycalico.conflist`` (0644: kubelet and the runtime read it), from the
  template in ``CNI_NETWORK_CONFIG`` (the ConfigMap's ``cni_network_config``) or a built-in one,
  with ``__KUBECONFIG_FILEPATH__``, ``__CNI_MTU__`` and ``__NODENAME__`` replaced;
- for a ``kubernetes`` datastore, the CNI path's kubeconfig ``<net dir>/pycalico-kubeconfig``
  (0600: it holds the service account's token), from ``<sa dir>/{token,ca.crt}`` and
  ``KUBERNETES_SERVICE_HOST``/``_PORT``;
- the plugins (0755) into ``<bin dir>``. ``--plugin venv`` (the default): ``pycalico-cni`` and
  ``pycalico-ipam``, the console scripts of the running interpreter's bin directory (or
  ``--plugin-dir``) -- they need that virtualenv on the host, as the lab has. ``--plugin thin``:
  ``pycalico-cni`` is ``cni/thin.py``, standard library only (it runs on any host's
  ``/usr/bin/python3`` and forwards to the agent's CNI socket), and no ``pycalico-ipam`` is needed.

Ownership: a file named ``pycalico-*`` is ours; the conflist is ours only if its first plugin's
``type`` is ``pycalico-cni`` -- a different file at that path is never overwritten, nor removed by
``--uninstall``, and no other file in either directory is ever touched.

>>> substitute('{"nodename": "__NODENAME__", "mtu": __CNI_MTU__}', {"__NODENAME__": "n1",
...            "__CNI_MTU__": "1440"})
'{"nodename": "n1", "mtu": 1440}'
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostio
from cni.config import parse_netconf
from cni.errors import CNIError

CONFLIST_NAME = "10-pycalico.conflist"
KUBECONFIG_NAME = "pycalico-kubeconfig"
PLUGINS = ("pycalico-cni", "pycalico-ipam")
OUR_TYPE = "pycalico-cni"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CONF_MODE, SECRET_MODE, EXEC_MODE = 0o644, 0o600, 0o755

DEFAULT_TEMPLATE = """\
{
  "name": "k8s-pod-network",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "pycalico-cni",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "nodename": "__NODENAME__",
      "mtu": __CNI_MTU__,
      "ipam": {"type": "pycalico-ipam"},
      "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"}
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"""


class InstallError(Exception):
    """Names the file or setting and the reason; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    bin_dir: Path
    net_dir: Path
    sa_dir: Path
    plugin_dir: Path
    plugin: str  # "venv" | "thin"
    template: str
    mtu: str
    nodename: str
    env: Mapping[str, str]


@dataclass(frozen=True)
class Wanted:
    """One file we want on the host: its content and mode."""

    path: Path
    data: bytes
    mode: int


# -- pure: what the files should be --

def substitute(template: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def conflist(s: Settings) -> dict[str, Any]:
    """The template filled in and checked: JSON, our plugin first, a config our plugin accepts."""
    if not s.mtu.isdigit() or int(s.mtu) == 0:
        raise InstallError(f"CNI_MTU: {s.mtu!r} is not a positive integer")
    text = substitute(s.template, {"__KUBECONFIG_FILEPATH__": str(s.net_dir / KUBECONFIG_NAME),
                                   "__CNI_MTU__": s.mtu, "__NODENAME__": s.nodename,
                                   "__KUBERNETES_NODE_NAME__": s.nodename})
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InstallError(f"CNI_NETWORK_CONFIG: not valid JSON after substitution ({exc})") from None
    if not is_ours(data):
        raise InstallError("CNI_NETWORK_CONFIG: the first plugin's type must be "
                           f"{OUR_TYPE!r} (it is how install-cni recognises its own conflist)")
    first = {"cniVersion": data.get("cniVersion"), "name": data.get("name"), **data["plugins"][0]}
    try:
        parse_netconf(json.dumps(first).encode())
    except CNIError as exc:
        raise InstallError(f"CNI_NETWORK_CONFIG: plugins[0]: {exc.msg}") from None
    return data


def is_ours(conf: Any) -> bool:
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    return (isinstance(plugins, list) and bool(plugins) and isinstance(plugins[0], dict)
            and plugins[0].get("type") == OUR_TYPE)


def kubeconfig(s: Settings) -> str:
    """A kubeconfig (JSON, which is YAML) with the service account's token and CA inlined."""
    token = _read(s.sa_dir / "token").strip()
    ca = s.sa_dir / "ca.crt"
    _read(ca)
    host, port = s.env.get("KUBERNETES_SERVICE_HOST"), s.env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise InstallError("KUBERNETES_SERVICE_HOST: not set (it is set in every pod; running "
                           "outside one, set it to the API server's address)")
    host = f"[{host}]" if ":" in host else host
    cluster = {"server": f"https://{host}:{port}",
               "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "pycalico-cni", "user": {"token": token}}],
        "contexts": [{"name": "pycalico-context",
                      "context": {"cluster": "local", "user": "pycalico-cni"}}],
        "current-context": "pycalico-context"}, indent=2) + "\n"


def _read(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InstallError(f"--sa-dir: {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise InstallError(f"--sa-dir: {path}: empty")
    return text


def wanted(s: Settings) -> list[Wanted]:
    conf = conflist(s)
    files = [Wanted(s.net_dir / CONFLIST_NAME, (json.dumps(conf, indent=2) + "\n").encode(),
                    CONF_MODE)]
    if conf["plugins"][0].get("datastore_type") == "kubernetes":
        files.append(Wanted(s.net_dir / KUBECONFIG_NAME, kubeconfig(s).encode(), SECRET_MODE))
    for name, source in plugin_sources(s).items():
        try:
            files.append(Wanted(s.bin_dir / name, source.read_bytes(), EXEC_MODE))
        except OSError as exc:
            raise InstallError(f"--plugin-dir: {source}: {exc.strerror or exc}") from None
    return files


def plugin_sources(s: Settings) -> dict[str, Path]:
    """Installed name -> the file copied there."""
    if s.plugin == "thin":
        import cni.thin  # a file we copy, not code we run

        return {"pycalico-cni": Path(cni.thin.__file__)}
    return {name: s.plugin_dir / name for name in PLUGINS}


# -- I/O --

def install(s: Settings) -> list[str]:
    """Writes what differs; returns one line per file (``wrote`` or ``unchanged``)."""
    files = wanted(s)  # everything is read and checked before anything is written
    _refuse_foreign(s.net_dir / CONFLIST_NAME)
    report = []
    for f in files:
        if _current(f.path) == (f.data, f.mode):
            report.append(f"unchanged {f.path}")
            continue
        make_dirs(f.path.parent)
        hostio.write_private(f.path, f.data, mode=f.mode)  # atomic, mode set whatever the umask
        report.append(f"wrote {f.path} ({f.mode:04o})")
    for name in set(PLUGINS) - set(plugin_sources(s)):
        stale = s.bin_dir / name  # ours, from a --plugin venv install; the thin path never runs it
        if stale.exists():
            stale.unlink()
            report.append(f"removed {stale} (not used with --plugin {s.plugin})")
    return report + shadowing(s.net_dir)


def shadowing(net_dir: Path) -> list[str]:
    """The runtime uses the lexically first config in the directory: say if another CNI's wins."""
    first = sorted(p.name for p in net_dir.iterdir()
                   if p.suffix in (".conf", ".conflist", ".json") and not p.name.startswith("."))
    if first and first[0] != CONFLIST_NAME:
        return [f"warning: {net_dir / first[0]} sorts before {CONFLIST_NAME}; the container "
                "runtime uses the first, so pods will not use pycalico until it is removed"]
    return []


def make_dirs(path: Path) -> None:
    """Missing directories made 0755 (kubelet reads them), whatever the umask; existing ones are
    not ours to change."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)


def uninstall(s: Settings) -> list[str]:
    """Removes exactly our files; a foreign conflist at our path stays."""
    report = []
    ours = [s.net_dir / KUBECONFIG_NAME, *(s.bin_dir / name for name in PLUGINS)]
    conf = s.net_dir / CONFLIST_NAME
    if conf.exists():
        if _conflist_is_ours(conf):
            ours.insert(0, conf)
        else:
            report.append(f"left {conf} (not ours)")
    for path in ours:
        try:
            path.unlink()
            report.append(f"removed {path}")
        except FileNotFoundError:
            pass
    return report


def _current(path: Path) -> tuple[bytes, int] | None:
    try:
        st = path.lstat()
        return (path.read_bytes(), st.st_mode & 0o7777) if path.is_file() \
            and not path.is_symlink() else None
    except OSError:
        return None


def _conflist_is_ours(path: Path) -> bool:
    try:
        return is_ours(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return False


def _refuse_foreign(path: Path) -> None:
    if path.exists() and not _conflist_is_ours(path):
        raise InstallError(f"{path}: exists and is not ours (its first plugin is not "
                           f"{OUR_TYPE!r}); refusing to overwrite it", code=1)


# -- command line --

def settings(argv: list[str] | None, env: Mapping[str, str]) -> tuple[Settings, bool]:
    p = argparse.ArgumentParser(prog="pycalico-install-cni", description=__doc__.splitlines()[0])
    p.add_argument("--cni-bin-dir", default=env.get("CNI_BIN_DIR", "/opt/cni/bin"),
                   help="where the plugins go (env CNI_BIN_DIR)")
    p.add_argument("--cni-net-dir", default=env.get("CNI_NET_DIR", "/etc/cni/net.d"),
                   help="where the conflist and kubeconfig go (env CNI_NET_DIR)")
    p.add_argument("--sa-dir", default=env.get("SERVICEACCOUNT_DIR", SA_DIR),
                   help="the service account's token and ca.crt (env SERVICEACCOUNT_DIR)")
    p.add_argument("--plugin-dir", default=env.get("PYCALICO_PLUGIN_DIR",
                                                   str(Path(sys.executable).parent)),
                   help="where pycalico-cni and pycalico-ipam are copied from "
                        "(env PYCALICO_PLUGIN_DIR; default: this interpreter's bin directory)")
    p.add_argument("--plugin", choices=("venv", "thin"),
                   default=env.get("PYCALICO_CNI_PLUGIN", "venv"),
                   help="venv: the console scripts; thin: the stdlib-only cni/thin.py, which "
                        "forwards to the agent (env PYCALICO_CNI_PLUGIN)")
    p.add_argument("--uninstall", action="store_true", help="remove our files and nothing else")
    a = p.parse_args(argv)
    if a.plugin not in ("venv", "thin"):  # argparse checks choices only for values given as flags
        p.error(f"PYCALICO_CNI_PLUGIN: {a.plugin!r} is not venv or thin")
    s = Settings(bin_dir=Path(a.cni_bin_dir), net_dir=Path(a.cni_net_dir), sa_dir=Path(a.sa_dir),
                 plugin_dir=Path(a.plugin_dir), plugin=a.plugin,
                 template=env.get("CNI_NETWORK_CONFIG") or DEFAULT_TEMPLATE,
                 mtu=env.get("CNI_MTU", "1500"),
                 nodename=env.get("NODENAME") or env.get("KUBERNETES_NODE_NAME")
                 or socket.gethostname(), env=env)
    return s, a.uninstall


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    s, remove = settings(argv, os.environ if env is None else env)
    try:
        lines = uninstall(s) if remove else install(s)
    except InstallError as exc:
        print(f"pycalico-install-cni: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"pycalico-install-cni: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    changed = [line for line in lines if line.startswith(("wrote", "removed"))]
    print("install-cni: nothing to do" if not changed else
          f"install-cni: {len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
