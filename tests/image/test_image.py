"""The pycalico/node image runs what the DaemonSet's containers run.

By hand, as root::

    PYCALICO_IMAGE_TESTS=1 pytest tests/image                  # builds with deploy/image/build.sh
    PYCALICO_IMAGE_TESTS=1 PYCALICO_IMAGE_ROOTFS=deploy/image/out/rootfs.tar.gz pytest tests/image

Each command runs two ways:

- ``engine``: the image itself, built ``FROM scratch`` from the rootfs tarball and the
  Containerfile under a throwaway tag (removed afterwards), run by podman or docker -- skipped,
  with the reason, where no engine works;
- ``chroot``: the same rootfs, extracted, in fresh mount and PID namespaces (``unshare``) and a
  ``chroot``, with the host directories bind-mounted where the pod would see them. It needs only
  root, so the image's contents are tested on any build host. The mounts die with the namespace.

The commands: ``pycalico-node --version`` (must name the version of the package we test) and
``pycalico-install-cni`` with the init container's environment from the manifest, into temporary
host directories mounted at the manifest's paths (/opt/cni/bin, /etc/cni/net.d) plus a service
account directory where kubelet mounts it.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

import pytest

from cni.install import CONFLIST_NAME, KUBECONFIG_NAME, SA_DIR
from lab.manifest import documents, find
# The init container's environment as kubelet resolves it: one definition, shared with the
# functional test of the same command outside the image.
from tests.functional.test_install_cni import init_container_env

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "image" / "build.sh"
CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile"
ENABLED = os.environ.get("PYCALICO_IMAGE_TESTS") == "1"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the Containerfile's

pytestmark = [
    pytest.mark.skipif(not ENABLED, reason="image tier: run by hand with PYCALICO_IMAGE_TESTS=1 "
                                           "(builds a Debian rootfs, minutes)"),
    pytest.mark.timeout(1200),  # the first test also waits for the rootfs build
]

Mounts = Mapping[Path, str]  # host directory -> where the container sees it
Runner = Callable[[list[str], Mapping[str, str], Mounts], subprocess.CompletedProcess]


# -- the rootfs: built once per run, or given --

@pytest.fixture(scope="module")
def rootfs_tarball(tmp_path_factory) -> Path:
    given = os.environ.get("PYCALICO_IMAGE_ROOTFS")
    if given:
        path = Path(given).resolve()
        assert path.is_file(), f"PYCALICO_IMAGE_ROOTFS={given}: no such file"
        return path
    if os.geteuid() != 0:
        pytest.skip("image tier: building the rootfs needs root (mmdebstrap's chroot)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("image tier: mmdebstrap is missing (apt-get install mmdebstrap), and no "
                    "PYCALICO_IMAGE_ROOTFS tarball was given")
    out = tmp_path_factory.mktemp("image-out")
    # The rootfs only: the engine fixture builds its own throwaway image from it, so a test run
    # leaves no pycalico/node image behind in an engine's storage.
    build = subprocess.run([str(BUILD), str(out)], env={**os.environ, "ENGINE": "none"},
                           capture_output=True, text=True, timeout=1100)
    assert build.returncode == 0, build.stdout + build.stderr
    return out / "rootfs.tar.gz"


@pytest.fixture(scope="module")
def rootfs(rootfs_tarball, tmp_path_factory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("image tier: chroot and unshare need root")
    base = tmp_path_factory.mktemp("rootfs")
    try:
        with tarfile.open(rootfs_tarball) as tar:
            tar.extractall(base, filter="fully_trusted")  # ours, with device nodes and owners
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)  # some hundreds of MB: not left for pytest's 3 runs


def inside(root: Path, path: str, _depth: int = 0) -> Path:
    """``path`` as the chroot sees it, as a host path: symlinks resolved against ``root``, never
    against the host (``/var/run`` is ``-> /run``; resolved on the host it would be the host's)."""
    parts = PurePosixPath(path).parts[1:]
    resolved = PurePosixPath("/")
    for i, part in enumerate(parts):
        candidate = root / (resolved / part).relative_to("/")
        if candidate.is_symlink():
            assert _depth < 40, f"{path}: too many levels of symbolic links in {root}"
            target = PurePosixPath(os.readlink(candidate))
            rest = PurePosixPath("/", *parts[i + 1:]).relative_to("/")
            whole = (target if target.is_absolute() else resolved / target) / rest
            return inside(root, os.path.normpath(whole), _depth + 1)
        resolved = resolved / part
    return root / resolved.relative_to("/")


# -- the two runners --

def engine_or_reason() -> tuple[str | None, str]:
    """A container engine that can run containers here, or why there is none."""
    for engine in ("podman", "docker"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True,
                                                   timeout=60).returncode == 0:
            return engine, ""
    if shutil.which("docker"):
        return None, "no container engine: docker CLI present but no daemon"
    return None, "no container engine: neither podman nor docker is installed"


@pytest.fixture(scope="module")
def engine_image(rootfs_tarball, tmp_path_factory) -> Iterator[tuple[str, str]]:
    engine, reason = engine_or_reason()
    if engine is None:
        pytest.skip(reason)
    context = tmp_path_factory.mktemp("image-context")
    shutil.copy(rootfs_tarball, context / "rootfs.tar.gz")
    shutil.copy(CONTAINERFILE, context / "Containerfile")
    tag = f"localhost/pycalico-node-test:{os.getpid()}"
    built = subprocess.run([engine, "build", "-t", tag, "-f", str(context / "Containerfile"),
                            str(context)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        # An engine that builds may still be unable to run anything here (a sandbox that forbids
        # the runtime's setrlimit, say): that is the host's limit, not the image's.
        probe = subprocess.run([engine, "run", "--rm", "--network=none", tag, "true"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            pytest.skip(f"no container engine: {engine} builds the image but cannot run a "
                        f"container here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        yield engine, tag
    finally:
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=120)
        shutil.rmtree(context, ignore_errors=True)


def run_in_engine(engine: str, tag: str) -> Runner:
    def run(argv, env, mounts):
        volumes = [arg for host, path in mounts.items() for arg in ("-v", f"{host}:{path}")]
        # `-e NAME` takes the value from the client's environment: values with newlines (the
        # conflist template) pass unchanged.
        names = [arg for name in env for arg in ("-e", name)]
        return subprocess.run([engine, "run", "--rm", "--network=none", *volumes, *names, tag,
                               *argv], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=120)
    return run


def run_in_chroot(root: Path) -> Runner:
    def run(argv, env, mounts):
        binds = []
        for host, path in mounts.items():
            target = inside(root, path)
            target.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(host))} {shlex.quote(str(target))}")
        clean_env = [f"{k}={v}" for k, v in {"PATH": IMAGE_PATH, "LANG": "C.UTF-8", **env}.items()]
        script = " && ".join([*binds, 'exec chroot "$0" /usr/bin/env -i "$@"'])
        return subprocess.run(["unshare", "--mount", "--pid", "--fork",
                               f"--mount-proc={root / 'proc'}", "sh", "-ec", script, str(root),
                               *clean_env, *argv], capture_output=True, text=True, timeout=120)
    return run


@pytest.fixture(params=["engine", "chroot"])
def run_image(request) -> Runner:
    if request.param == "engine":
        return run_in_engine(*request.getfixturevalue("engine_image"))
    return run_in_chroot(request.getfixturevalue("rootfs"))


# -- the tests --

def test_node_version_is_the_package_version(run_image):
    result = run_image(["pycalico-node", "--version"], {}, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-1:] == [importlib.metadata.version("pycalico")], result.stdout


def test_image_runs_the_manifests_commands():
    """The tag we build is the one the manifest runs, and both containers run our scripts."""
    pod = find(documents(), "DaemonSet", "pycalico-node")["spec"]["template"]["spec"]
    containers = pod["initContainers"] + pod["containers"]
    version = importlib.metadata.version("pycalico")
    assert {c["image"] for c in containers} == {f"pycalico/node:{version}"}
    assert [c["command"] for c in containers] == [["pycalico-install-cni"], ["pycalico-node"]]


@pytest.fixture
def host_dirs(tmp_path):
    """The host's CNI directories and a service account, as kubelet would mount them."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    bin_dir, net_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    bin_dir.mkdir()
    net_dir.mkdir()
    return bin_dir, net_dir, sa


def test_install_cni_puts_the_thin_plugin_and_conflist_on_the_host(run_image, host_dirs):
    bin_dir, net_dir, sa = host_dirs
    env = {**init_container_env("node-a"), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    mounts = {bin_dir: env["CNI_BIN_DIR"], net_dir: env["CNI_NET_DIR"], sa: SA_DIR}

    result = run_image(["pycalico-install-cni"], env, mounts)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("install-cni: 3 file(s) changed"), result.stdout
    conf = json.loads((net_dir / CONFLIST_NAME).read_text())
    plugin = conf["plugins"][0]
    assert (plugin["type"], plugin["nodename"], plugin["mtu"]) == ("pycalico-cni", "node-a", 1440)
    # The path the plugin reads on the host: the manifest mounts each host directory at its own
    # path, so the container's path is the host's.
    assert plugin["kubernetes"]["kubeconfig"] == f"{env['CNI_NET_DIR']}/{KUBECONFIG_NAME}"
    assert json.loads((net_dir / KUBECONFIG_NAME).read_text())["users"][0]["user"]["token"] \
        == "sa-token"
    assert [p.name for p in bin_dir.iterdir()] == ["pycalico-cni"]
    installed = bin_dir / "pycalico-cni"
    assert os.access(installed, os.X_OK)

    # The host runs what the image installed, with its own python3 and nothing of the image's.
    version = subprocess.run(
        [str(installed)], input=json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"],
                                            **plugin}),
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60)
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
