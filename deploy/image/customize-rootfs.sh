#!/usr/bin/env bash
# mmdebstrap customize hook of build.sh (not run by hand):
#
#   customize-rootfs.sh ROOTFS WHEEL CONSTRAINTS     (WHEEL, CONSTRAINTS: paths inside ROOTFS)
#
# Makes the virtualenv /opt/pycalico inside ROOTFS with the rootfs's own python3 (so compiled
# dependencies match its Python), installs our wheel and its dependencies from PyPI pinned by
# CONSTRAINTS, and links our console scripts into /usr/local/bin, which is on every PATH, so
# `pycalico-node` and `pycalico-install-cni` run as the DaemonSet's `command:` names them.
set -euo pipefail
umask 022

rootfs=$1 wheel=$2 constraints=$3
venv=/opt/pycalico

# pip reaches PyPI from inside the chroot, through the host's resolver (mmdebstrap copies the
# host's /etc/resolv.conf in; build.sh removes it at the end) and with the host's CA bundle: the
# host may reach PyPI through a TLS-inspecting proxy whose CA only the host trusts. The bundle is
# for the install only and does not stay in the image.
build_ca=/tmp/build-ca.pem
install -m 0644 "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs$build_ca"

chroot "$rootfs" python3 -m venv "$venv"
# A clean environment: the host's PIP_* settings (its find-links, its indexes) are not the image's.
chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT="$build_ca" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    "$venv/bin/pip" install --quiet --constraint "$constraints" "$wheel"

rm -f "$rootfs$build_ca"

for script in "$rootfs$venv"/bin/pycalico*; do
    name=${script##*/}
    ln -sfn "$venv/bin/$name" "$rootfs/usr/local/bin/$name"
done
# What the image holds, for anyone who asks it (`cat /opt/pycalico/requirements.txt`).
chroot "$rootfs" env -i "$venv/bin/pip" freeze --disable-pip-version-check \
    >"$rootfs$venv/requirements.txt"
chmod 0644 "$rootfs$venv/requirements.txt"
