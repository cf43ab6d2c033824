#!/usr/bin/python3
"""Reference CUI curves for the analysis conformance test, computed by
tools/isplit_reference.py (PyTorch, float64) on the weights of make_fixtures.py's 64x64
cases and on a fixed batch of images:

  OUT/analysis/<arch>/data.safetensors   input [N,3,64,64], labels [N]
  OUT/analysis/<arch>/<config>/cui.csv, cui_by_class.csv

where <config> names the options, e.g. gradcam-predicted-post-all. Run after
make_fixtures.py (it reads OUT/<arch>_64/weights.safetensors).
"""
import argparse
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import write_safetensors  # noqa: E402

# (method, target, relu-grad, points, classes)
CONFIGS = [
    ("gradcam", "predicted", "post", "all", ""),
    ("gradcam", "label", "post", "default", ""),
    ("gradcam", "predicted", "pre", "default", ""),
    ("gradcam++", "predicted", "post", "default", ""),
    ("layercam", "predicted", "post", "default", ""),
    ("xgradcam", "predicted", "post", "default", ""),
    ("gradcam", "label", "pre", "default", "1,2"),
]


def config_name(method, target, relu, points, classes):
    name = f"{method}-{target}-{relu}-{points}"
    return name + ("-classes" + classes.replace(",", "_") if classes else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="fixture directory of make_fixtures.py")
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "isplit_reference.py")
    for arch in ("resnet50", "vgg16"):
        weights = os.path.join(args.out, f"{arch}_64", "weights.safetensors")
        base = os.path.join(args.out, "analysis", arch)
        os.makedirs(base, exist_ok=True)
        g = torch.Generator().manual_seed(4321)
        data = {"input": torch.randn(args.images, 3, 64, 64, generator=g),
                "labels": (torch.arange(args.images) % 4).float()}
        data_path = os.path.join(base, "data.safetensors")
        write_safetensors(data_path, data)
        # VGG16 is slower in float64: the configurations that exercise its own structure.
        configs = CONFIGS if arch == "resnet50" else [CONFIGS[0], CONFIGS[4], CONFIGS[6]]
        for cfg in configs:
            method, target, relu, points, classes = cfg
            cmd = [sys.executable, tool, "--model", arch, "--weights", weights,
                   "--data", data_path, "--out", os.path.join(base, config_name(*cfg)),
                   "--method", method, "--target", target, "--relu-grad", relu,
                   "--points", points, "--double"]
            if classes:
                cmd += ["--classes", classes]
            subprocess.run(cmd, check=True)
        print(f"analysis fixtures for {arch} written", flush=True)


if __name__ == "__main__":
    main()
