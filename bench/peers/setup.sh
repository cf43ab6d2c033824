#!/usr/bin/env bash
# Prepares every peer of run_peers.py: builds the oneDNN driver, installs onnxruntime-node
# and exports the ONNX models. Usage: bench/peers/setup.sh [SIZES], SIZES default "64,224".
set -euo pipefail
cd "$(dirname "$0")/../.."   # repository root
SIZES="${1:-64,224}"

echo "== Debian packages"
# OpenMP OpenBLAS for the PyTorch peer (run_peers.py preloads it; without it Debian's torch
# runs on the slow reference BLAS and its column means nothing). Only when missing.
if ! dpkg-query -W -f='${Status}' libopenblas0-openmp 2>/dev/null | grep -q "install ok installed"; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends libopenblas0-openmp
fi

echo "== oneDNN driver"
bench/peers/build.sh

echo "== onnxruntime-node"
if ! command -v npm >/dev/null; then
    echo "npm not found: install Node.js (Debian: apt-get install nodejs npm); ORT will be skipped" >&2
else
    # The package's post-install step downloads optional GPU files and fails offline;
    # skipping it keeps the CPU runtime that ships inside the package.
    (cd bench/peers && ONNXRUNTIME_NODE_INSTALL=skip nice -n 10 npm install --no-audit --no-fund)
fi

echo "== ONNX export (sizes $SIZES)"
nice -n 10 /usr/bin/python3 bench/peers/export_onnx.py --sizes "$SIZES"
if command -v node >/dev/null && [ -d bench/peers/node_modules/onnxruntime-node ]; then
    for m in resnet50 vgg16; do
        for s in ${SIZES//,/ }; do
            nice -n 10 node bench/peers/ort_bench.js --model "$m" --input-size "$s" --check
        done
    done
fi
echo "setup done; check the oneDNN network with: /usr/bin/python3 bench/peers/check_onednn.py"
