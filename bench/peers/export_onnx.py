#!/usr/bin/python3
"""Exports torchvision's VGG16 and ResNet-50 (eval mode, seeded random weights) to ONNX.

One file per model and input size, build/peers/<model>-<size>.onnx, batch dimension
dynamic, plus a reference input and PyTorch's logits for it (<model>-<size>.input.f32,
<model>-<size>.logits.f32) that `node bench/peers/ort_bench.js --check` compares against.

  /usr/bin/python3 bench/peers/export_onnx.py [--models vgg16,resnet50] [--sizes 64,224]

VGG16's AdaptiveAvgPool2d((7,7)) has no ONNX form when the feature map is not a multiple
of 7 (e.g. 2x2 at 64x64 input); there it is replaced by the same average written as two
constant matrix products (PyTorch's bins [floor(i*H/7), ceil((i+1)*H/7))), which gives the
same numbers.
"""
import argparse
import os
import sys

import torch
import torchvision

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join("build", "peers")


def pool_matrix(n_in, n_out):
    """Matrix whose row i averages input positions [floor(i*n/o), ceil((i+1)*n/o))."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class MatrixAdaptivePool(torch.nn.Module):
    """AdaptiveAvgPool2d for a fixed input size as y = Ph @ x @ Pw^T (exportable)."""

    def __init__(self, h, w, out):
        """Stores the row and column pooling matrices for an h x w input."""
        super().__init__()
        self.register_buffer("ph", pool_matrix(h, out))
        self.register_buffer("pwt", pool_matrix(w, out).t().contiguous())

    def forward(self, x):
        """Pools the last two dimensions of x."""
        return torch.matmul(torch.matmul(self.ph, x), self.pwt)


def build(name, size, seed):
    """Returns the seeded eval-mode model, with VGG's adaptive pool made exportable."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)().eval()
    if name == "vgg16":
        with torch.no_grad():
            fh = model.features(torch.zeros(1, 3, size, size)).shape[-1]
        if fh % 7 != 0:
            ref = model.avgpool
            model.avgpool = MatrixAdaptivePool(fh, fh, 7)
            probe = torch.randn(2, 512, fh, fh)
            assert torch.allclose(model.avgpool(probe), ref(probe), atol=1e-6), "pool replacement differs"
    return model


def export(name, size, seed, opset):
    """Writes the ONNX file and the reference input/logits for one model and size."""
    model = build(name, size, seed)
    base = os.path.join(OUT, f"{name}-{size}")
    torch.manual_seed(seed + 1)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        torch.onnx.export(model, x, base + ".onnx", opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    x.numpy().tofile(base + ".input.f32")
    logits.numpy().tofile(base + ".logits.f32")
    print(f"wrote {base}.onnx ({os.path.getsize(base + '.onnx') / 1e6:.0f} MB)")


def main():
    """Parses arguments and exports every requested model and size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg16,resnet50")
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--force", action="store_true", help="re-export files that exist")
    args = ap.parse_args()
    os.chdir(ROOT)
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    for name in args.models.split(","):
        if name not in ("vgg16", "resnet50"):
            sys.exit(f"unknown model {name}")
        for size in [int(s) for s in args.sizes.split(",")]:
            path = os.path.join(OUT, f"{name}-{size}.onnx")
            if os.path.exists(path) and not args.force:
                print(f"{path} exists (use --force to redo)")
                continue
            export(name, size, args.seed, args.opset)


if __name__ == "__main__":
    main()
