#!/usr/bin/python3
"""Checks that the oneDNN driver computes torchvision's network: same logits as PyTorch.

For each model and input size: a seeded torchvision model in eval mode, with its BatchNorm
parameters and running statistics randomised (so the folding is really exercised), is
written to build/peers/check/ in the driver's ISPLITW1 format together with a random
input; the driver runs one pass on them and its logits are compared with PyTorch's.

  /usr/bin/python3 bench/peers/check_onednn.py [--models resnet50,vgg16] [--sizes 64,224]

Run from anywhere; paths are relative to the repository root. Exit status 1 on a mismatch.
"""
import argparse
import os
import struct
import subprocess
import sys

import torch
import torchvision

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER = os.path.join("build", "peers", "onednn_driver")
OUT = os.path.join("build", "peers", "check")


def seeded_model(name, seed):
    """Builds the torchvision model with seeded weights and non-trivial BatchNorm state."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def write_weights(model, path):
    """Writes every float tensor of the state_dict as magic, count, (name, dims, data)*."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    with open(path, "wb") as f:
        f.write(b"ISPLITW1")
        f.write(struct.pack("<I", len(tensors)))
        for name, t in tensors:
            raw = name.encode()
            f.write(struct.pack("<I", len(raw)))
            f.write(raw)
            f.write(struct.pack("<I", t.dim()))
            f.write(struct.pack("<%dq" % t.dim(), *t.shape))
            f.write(t.detach().to(torch.float32).contiguous().numpy().tobytes())


def check(name, size, seed, threads):
    """Runs one comparison and returns True when the logits agree."""
    model = seeded_model(name, seed)
    wpath = os.path.join(OUT, f"{name}-seed{seed}.isplitw")
    if not os.path.exists(wpath):
        write_weights(model, wpath)
    torch.manual_seed(seed + 1000 + size)
    x = torch.randn(1, 3, size, size)
    xpath = os.path.join(OUT, f"input-{size}.f32")
    lpath = os.path.join(OUT, f"{name}-{size}-onednn.f32")
    x.numpy().tofile(xpath)
    with torch.no_grad():
        ref = model(x)[0]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [DRIVER, "--model", name, "--input-size", str(size), "--iters", "1", "--warmup", "0",
           "--weights", wpath, "--input", xpath, "--logits-out", lpath]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{name} {size}: driver failed ({res.returncode}): {res.stderr.strip()}")
        return False
    got = torch.from_file(lpath, size=1000, dtype=torch.float32)
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    rel = diff / max(scale, 1e-12)
    same_top = int(got.argmax()) == int(ref.argmax())
    top5 = set(got.topk(5).indices.tolist()) == set(ref.topk(5).indices.tolist())
    ok = rel < 1e-4 and same_top
    print(f"{name} {size}x{size}: max |oneDNN - PyTorch| = {diff:.3g} (max |logit| {scale:.3g}, "
          f"relative {rel:.2g}); top-1 {'same' if same_top else 'DIFFERENT'}, "
          f"top-5 set {'same' if top5 else 'different'} -> {'OK' if ok else 'MISMATCH'}")
    return ok


def main():
    """Parses arguments and runs every requested comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vgg16")
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.chdir(ROOT)
    if not os.path.exists(DRIVER):
        sys.exit(f"{DRIVER} missing: run bench/peers/build.sh")
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(args.threads)
    ok = True
    for name in args.models.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            ok = check(name, size, args.seed, args.threads) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
