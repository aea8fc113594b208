#!/usr/bin/env bash
# Installs the Debian packages commitd needs, only those missing.
set -euo pipefail

packages=(containerd runc etcd-server etcd-client containernetworking-plugins
  nftables iptables conntrack docker-registry skopeo umoci busybox-static
  protobuf-compiler curl iproute2 kmod git pkg-config libssl-dev
  openssh-client openssh-server)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start system-wide daemons where an init system runs
# them; commitd never uses those, it starts its own with private paths.
command -v cargo >/dev/null || { echo "error: cargo (Rust) is required" >&2; exit 1; }
