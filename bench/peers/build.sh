#!/usr/bin/env bash
# Builds the oneDNN peer driver into build/peers/onednn_driver (needs libdnnl-dev).
set -euo pipefail
cd "$(dirname "$0")/../.."   # repository root
mkdir -p build/peers
if [ ! -f /usr/include/dnnl.hpp ] && [ ! -f /usr/include/oneapi/dnnl/dnnl.hpp ]; then
    echo "build.sh: dnnl.hpp not found; install libdnnl-dev (apt-get install libdnnl-dev)" >&2
    exit 1
fi
CXX="${CXX:-g++}"
# -fopenmp: Debian's libdnnl runs on OpenMP; the driver sets its thread count through it.
nice -n 10 "$CXX" -O2 -std=c++17 -Wall -Wextra -fopenmp \
    bench/peers/onednn_driver.cpp -o build/peers/onednn_driver -ldnnl
echo "built build/peers/onednn_driver"
