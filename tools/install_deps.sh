#!/usr/bin/env bash
# Installs the Debian packages isplit needs, only those that are missing.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config
          doctest-dev libbenchmark-dev libstb-dev nlohmann-json3-dev libcli11-dev zlib1g-dev
          python3-torch python3-torchvision python3-numpy python3-pil dataset-fashion-mnist
          # AArch64 cross build and its tests under emulation (docs/arm.md); zlib for the
          # target comes from Debian's multiarch arm64 packages.
          g++-aarch64-linux-gnu qemu-user-static zlib1g-dev:arm64)
# The optional oneDNN inference backend (`--backend onednn`) is built on x86-64 only.
if [ "$(dpkg --print-architecture)" = amd64 ]; then
  packages+=(libdnnl-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Packages of a foreign architecture (name:arm64) need that architecture enabled first.
for p in "${missing[@]}"; do
  case "$p" in
    *:*)
      arch="${p##*:}"
      if [ "$arch" != "$(dpkg --print-architecture)" ] &&
         ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        $SUDO dpkg --add-architecture "$arch"
      fi
      ;;
  esac
done
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
