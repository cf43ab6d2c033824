#!/usr/bin/python3
"""Compares two logits CSVs (file,logit_0,...): same files, same top-5, and
max |a - b| <= tol * max |b| per row. Exit 1 with a message on any difference."""
import sys


def read(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = [line.strip().split(",") for line in f if line.strip()]
    return header, {r[0]: [float(v) for v in r[1:]] for r in rows}


def main():
    ours_path, ref_path = sys.argv[1], sys.argv[2]
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    h1, ours = read(ours_path)
    h2, ref = read(ref_path)
    if h1 != h2 or ours.keys() != ref.keys():
        sys.exit("logits files differ in header or images")
    for name, b in ref.items():
        a = ours[name]
        scale = max(abs(v) for v in b)
        err = max(abs(x - y) for x, y in zip(a, b)) / scale
        top_a = sorted(range(len(a)), key=lambda j: -a[j])[:5]
        top_b = sorted(range(len(b)), key=lambda j: -b[j])[:5]
        print(f"{name}: max relative error {err:.2e}, top-5 {top_a}, reference {top_b}")
        if err > tol:
            sys.exit(f"{name}: logits differ by {err:.2e} > {tol}")
        if top_a != top_b:
            sys.exit(f"{name}: top-5 differ")


if __name__ == "__main__":
    main()
