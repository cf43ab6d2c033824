#!/usr/bin/env bash
# Installs the Debian packages isplit needs, only those that are missing.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config
          doctest-dev libbenchmark-dev libstb-dev nlohmann-json3-dev libcli11-dev zlib1g-dev
          python3-torch python3-torchvision python3-numpy python3-pil dataset-fashion-mnist)
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
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
