#!/usr/bin/env bash
# Builds the pycalico/node image without pulling anything from a container registry.
#
#   deploy/image/build.sh [OUT_DIR]        (default: deploy/image/out)
#
# 1. Our wheel, built here from the working tree (`pip wheel --no-deps`).
# 2. A Debian root filesystem (mmdebstrap, variant minbase) with what the node runs at run time,
#    and a virtualenv /opt/pycalico holding the wheel and its dependencies (from PyPI, pinned to
#    the versions installed in $PYTHON's environment, i.e. the ones the tests ran against). Its
#    console scripts are linked into /usr/local/bin. Written to OUT_DIR/rootfs.tar.gz.
# 3. If a container engine works here (podman, buildah or a docker daemon), the image
#    `FROM scratch` + that tarball, tagged as deploy/pycalico.yaml names it. If none works, the
#    script stops after step 2 and says why: the tarball is still what tests/image/ checks.
#
# Environment: SUITE (bookworm), MIRROR (http://deb.debian.org/debian), SECURITY_MIRROR
# (http://deb.debian.org/debian-security), PYTHON (default: the repo's .venv, else python3),
# ENGINE (podman|buildah|docker: use this one, or fail; none: stop after the rootfs).
# Needs root (mmdebstrap's chroot) and network access to the Debian archive and PyPI.
set -euo pipefail
umask 022  # what we write is world-readable: the image's files must be usable by any user

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/out}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
security_mirror=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $root/.venv/bin/python ]]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
# Run-time needs of the node: python3-venv for /opt/pycalico; iproute2 (`ip netns exec` for
# ExaBGP in the lab); nftables (NAT outgoing); socat (an ExaBGP relay candidate); ca-certificates
# (TLS to the API server and etcd); iputils-ping for debugging from inside the pod.
packages=python3,python3-venv,iproute2,nftables,socat,ca-certificates,iputils-ping

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (mmdebstrap builds the root filesystem in a chroot)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"

# The tag is the manifest's: both containers of the DaemonSet run the same image.
tags=$(sed -n 's/^ *image: *//p' "$root/deploy/pycalico.yaml" | sort -u)
[[ $(wc -l <<<"$tags") == 1 && -n $tags ]] \
    || die "deploy/pycalico.yaml: expected one image for all containers, found: ${tags//$'\n'/ }"
tag=$tags
version=$(sed -n 's/^version *= *//p' "$root/setup.cfg")
[[ ${tag##*:} == "$version" ]] \
    || die "deploy/pycalico.yaml runs $tag but setup.cfg's version is $version: make them agree"
revision=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pycalico-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -m 0755 "$tmp/src" "$tmp/stage"

say "wheel: pycalico $version ($revision) with $PYTHON"
# Built from a copy of the working tree's files (tracked and untracked, not ignored), so the
# build leaves no build/ or egg-info behind in the repo.
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | tar -C "$root" --null --files-from=- --ignore-failed-read -cf - \
    | tar -C "$tmp/src" -xf -
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$tmp/stage" "$tmp/src"
wheel=$(cd "$tmp/stage" && ls pycalico-"$version"-*.whl)
# Pins: the dependency versions the tests ran against. A requirement that is not a plain
# name==version (a direct URL, our own editable install) is no pin and is left out.
"$PYTHON" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -E '^[A-Za-z0-9._-]+==[^ ;]+$' | grep -viE '^pycalico==' >"$tmp/stage/constraints.txt" \
    || say "no pins from $PYTHON's environment: taking the newest versions setup.cfg allows"
chmod 0644 "$tmp/stage"/*

constraints=/tmp/stage/constraints.txt  # as the chroot sees it
say "rootfs: Debian $suite minbase + $packages + /opt/pycalico"
started=$SECONDS
# Documentation, man pages and locales are of no use in the image; copyright files stay. The
# build host's resolv.conf and hostname (mmdebstrap copies them in for apt and pip) do not stay:
# a container engine provides both at run time.
# The hooks' "$1" is the chroot's path, expanded by mmdebstrap's `sh -c`, not by us.
# shellcheck disable=SC2016
mmdebstrap --variant=minbase --include="$packages" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="copy-in '$tmp/stage' /tmp" \
    --customize-hook="'$here/customize-rootfs.sh' \"\$1\" /tmp/stage/$wheel $constraints" \
    --customize-hook='rm -rf "$1/tmp/stage"' \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    "$suite" "$tmp/rootfs.tar.gz" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb $security_mirror $suite-security main"
# Into place by rename, so an interrupted build never leaves a truncated tarball to be reused.
install -d -m 0755 "$out"
install -m 0644 "$tmp/rootfs.tar.gz" "$out/.rootfs.tar.gz.new"
mv -f "$out/.rootfs.tar.gz.new" "$out/rootfs.tar.gz"
install -m 0644 "$here/Containerfile" "$out/Containerfile"
say "wrote $out/rootfs.tar.gz ($(du -h "$out/rootfs.tar.gz" | cut -f1), $((SECONDS - started))s)"

# A container engine "works" if it can talk to whatever runs its containers: the docker CLI
# alone, with no daemon behind it, does not.
engine_works() {
    case $1 in
        podman) podman info >/dev/null 2>&1 ;;
        buildah) buildah info >/dev/null 2>&1 ;;
        docker) docker info >/dev/null 2>&1 ;;
        *) die "ENGINE=$1: expected podman, buildah or docker" ;;
    esac
}
if [[ ${ENGINE:-} == none ]]; then
    say "stopped after the rootfs: ENGINE=none"
    exit 0
fi
engine=""
for candidate in ${ENGINE:-podman buildah docker}; do
    if command -v "$candidate" >/dev/null && engine_works "$candidate"; then
        engine=$candidate
        break
    fi
done
if [[ -z $engine ]]; then
    [[ -z ${ENGINE:-} ]] || die "ENGINE=$ENGINE does not work here"
    why="no podman or buildah, and no docker daemon"
    command -v docker >/dev/null && why="no podman or buildah; docker CLI present but no daemon"
    say "stopped after the rootfs: $why. To build the image elsewhere:"
    say "  docker build -t $tag -f $out/Containerfile $out"
    exit 0
fi
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")
if [[ $engine == buildah ]]; then
    buildah bud "${build_args[@]}" -t "$tag" -f "$out/Containerfile" "$out"
else
    "$engine" build "${build_args[@]}" -t "$tag" -f "$out/Containerfile" "$out"
fi
say "built $tag with $engine"
