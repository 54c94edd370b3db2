#!/usr/bin/env bash
# Install everything the testbed needs on Debian 12 / Ubuntu 22.04+ and create the project's venv.
# Used unchanged by the README commands, .ci/run and the Vagrantfile; safe to run again (idempotent).
#
# Interpreter: Debian's mininet package installs its Python module for the system python3 and ships the
# mnexec helper, so the venv is made from /usr/bin/python3 with --system-site-packages; everything else
# comes from PyPI into the venv.  The stock kernel image (linux-image-amd64) is installed only for the
# microVM path: it puts a kernel in /boot and never replaces the running one.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "provision.sh: run as root (sudo)" >&2; exit 1; }

packages=(mininet bridge-utils iperf3 tcpdump tshark iputils-ping iproute2 procps net-tools
          python3-venv python3-pip qemu-system-x86 busybox-static)
[ "$(dpkg --print-architecture)" = amd64 ] && packages+=(linux-image-amd64)
# the standard library's distutils for Mininet, where the distribution still ships it (Python <= 3.11): the
# microVM imports it instead of setuptools' shim, 35 s faster under TCG (testbed/net/microvm.py)
apt-cache show python3-distutils >/dev/null 2>&1 && packages+=(python3-distutils)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "provision.sh: installing ${missing[*]}"
    apt-get update -qq
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import mininet.net, pyroute2, scapy, pandas" || {
    echo "provision.sh: the venv cannot import its dependencies" >&2; exit 1; }
echo "provision.sh: ready (.venv/bin/testbed)"
