#!/usr/bin/python3
"""Compares two raw little-endian float32 files of the same length: prints the largest
difference relative to the largest magnitude of the reference and exits 1 when it exceeds
the tolerance.  Usage: compare_f32.py OURS.f32 REFERENCE.f32 [TOL] [LABEL]"""
import array
import sys


def read(path):
    data = array.array("f")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) % 4:
        sys.exit(f"{path}: {len(raw)} bytes is not a whole number of float32 values")
    data.frombytes(raw)
    if sys.byteorder != "little":
        data.byteswap()
    return data


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ours, ref = read(sys.argv[1]), read(sys.argv[2])
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-5
    label = sys.argv[4] if len(sys.argv) > 4 else sys.argv[1]
    if len(ours) != len(ref) or not ref:
        sys.exit(f"{label}: {len(ours)} values, reference has {len(ref)}")
    scale = max(abs(v) for v in ref) or 1.0
    err = max(abs(a - b) for a, b in zip(ours, ref)) / scale
    print(f"{label}: {len(ref)} values, max relative difference {err:.2e} (tolerance {tol:g})")
    if not err <= tol:
        sys.exit(f"{label}: outputs differ by {err:.2e} > {tol:g}")


if __name__ == "__main__":
    main()
