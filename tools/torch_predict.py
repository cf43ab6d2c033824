#!/usr/bin/python3
"""PyTorch's side of `isplit predict`: the same preprocessing and model, logits to CSV.

Used by the tests to prove that `isplit predict` prints what PyTorch computes:
  torch_predict.py --model resnet50 --weights W.safetensors [--input-size 224]
                   --logits OUT.csv IMAGE...
Images are decoded with PIL, made RGB, scaled to [0,1], resized with bilinear
interpolation (align_corners=False, no antialiasing) when their size differs, and
normalised with ImageNet's mean and std, exactly as DESIGN.md specifies.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import read_safetensors  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load(path, size):
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    if x.shape[2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=False)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=["vgg16", "resnet50"])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--logits", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    state = read_safetensors(args.weights)
    head = "classifier.6.weight" if args.model == "vgg16" else "fc.weight"
    model = getattr(torchvision.models, args.model)(weights=None,
                                                     num_classes=state[head].shape[0])
    model.load_state_dict(state, strict=False)
    model.eval()
    rows = []
    with torch.no_grad():
        for path in args.images:
            logits = model(load(path, args.input_size))[0]
            rows.append(path + "," + ",".join(f"{v:.9g}" for v in logits.tolist()))
    classes = state[head].shape[0]
    with open(args.logits, "w") as f:
        f.write("file," + ",".join(f"logit_{j}" for j in range(classes)) + "\n")
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
