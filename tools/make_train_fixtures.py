#!/usr/bin/python3
"""Reference fixtures for the optimizer-step conformance test, computed by PyTorch.

Run with Debian's interpreter (/usr/bin/python3) after tools/make_fixtures.py. For each
case (resnet50_64, vgg16_64) it reads that case's weights.safetensors and the `input`
and `labels` of its io.safetensors, builds the torchvision model (10 classes), puts it in
training mode with dropout off, and runs TWO optimizer steps on the same batch (so the
momentum buffer and Adam's moments are actually used) with each optimizer of OPTIMIZERS,
in float64 (the reference) and again in float32 (PyTorch's own rounding error, from
which tests/test_train_conformance.cpp derives where a bound must be wider than the
requirement's 1e-4). It writes OUT/<case>/train_<optimizer>.safetensors with the
hyper-parameters in the metadata and:

  loss, loss32     [2]   mean cross-entropy of each step, float64 and float32 runs
  after.<param>    [m]   sampled weights after the two steps (float64 run)
  after32.<param>  [m]   the same from the float32 run
  after.<buffer>   full  BatchNorm running statistics after the two steps (float64 run)
  after32.<buffer> full  the same from the float32 run

VGG16 has 138M parameters, so parameters are sampled: m = min(numel, 4096) elements of
the flattened tensor at positions floor(k * numel / m), k = 0..m-1 (every element when
numel <= 4096). The test reproduces the positions.

AdamW runs with eps = 1e-4, not PyTorch's default 1e-8. With 1e-8 the reference is
ill-posed: a train-mode network has parameters whose gradient is zero up to rounding (a
BatchNorm bias whose channel passes its ReLU everywhere and then only feeds other
BatchNorms), Adam turns that rounding noise (~1e-8) into a full +-lr step, and those
random steps change the second step's gradients elsewhere. PyTorch's own float32 run then
misses its float64 run by up to 1.7e-2 of a tensor's largest weight on 616 of ResNet-50's
274k sampled weights. With eps = 1e-4 such noise moves a weight by ~1e-4 * lr, PyTorch's
float32 run is within 5e-5 on ResNet-50 and 1.5e-4 on VGG16, and the update still divides
by sqrt(v) wherever |g| >> 1e-4, so both regimes of the formula and the placement of eps
are exercised.

Everything is deterministic: the weights, input and labels are those of the existing
fixture.
"""
import os
import sys

# glibc hands every large freed block back to the kernel and the next allocation of that
# size faults all its pages in again; with VGG16's 0.4-0.8 GB tensors (and their
# optimizer temporaries) that was a third of this script's run time. Keep freed memory
# in the process instead (set before the interpreter starts, hence the re-exec).
if os.environ.get("MALLOC_MMAP_MAX_") is None:
    os.environ["MALLOC_MMAP_MAX_"] = "0"
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(1 << 40)
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

CASES = {"resnet50_64": "resnet50", "vgg16_64": "vgg16"}  # fixture case -> arch
CLASSES = 10
STEPS = 2
MAX_SAMPLES = 4096

OPTIMIZERS = {
    "sgd": {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0,
            "nesterov": False, "weight_decay": 5e-4},
    "adamw": {"kind": "adamw", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4,
              "weight_decay": 0.05},
}


def read_some(path, names):
    """The named tensors of a safetensors file, without reading the rest (io.safetensors
    of vgg16_64 is half a gigabyte)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        out = {}
        for name in names:
            if name not in header:
                sys.exit(f"{path}: tensor '{name}' missing (run tools/make_fixtures.py)")
            info = header[name]
            if info["dtype"] != "F32":
                sys.exit(f"{path}: tensor '{name}': dtype {info['dtype']}, expected F32")
            begin, end = info["data_offsets"]
            f.seek(8 + n + begin)
            arr = np.frombuffer(f.read(end - begin), dtype="<f4").astype(np.float32)
            out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out


def sample(t):
    """m = min(numel, MAX_SAMPLES) elements of t flattened, at floor(k * numel / m)."""
    flat = t.detach().reshape(-1)
    numel = flat.numel()
    m = min(numel, MAX_SAMPLES)
    idx = (torch.arange(m, dtype=torch.int64) * numel) // m
    return flat[idx].clone()


def make_optimizer(params, cfg):
    if cfg["kind"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                               dampening=cfg["dampening"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                             eps=cfg["eps"], weight_decay=cfg["weight_decay"])


def reset(m, weights):
    """Loads the fixture's weights into m in place (converting to m's dtype)."""
    missing, unexpected = m.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"weights: missing {missing[:5]} unexpected {unexpected[:5]}")
    for k, b in m.named_buffers():
        if k.endswith("num_batches_tracked"):
            b.zero_()


class skip_init:
    """Builds modules without running torch.nn.init (their weights are loaded next):
    drawing VGG16's 138M initial weights takes seconds."""

    def __enter__(self):
        self.saved = {k: v for k, v in vars(torch.nn.init).items()
                      if callable(v) and k.endswith("_") and not k.startswith("_")}
        for k in self.saved:
            setattr(torch.nn.init, k, lambda t, *a, **kw: t)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(torch.nn.init, k, v)


def build(arch, dtype, weights):
    with skip_init():
        m = getattr(torchvision.models, arch)(weights=None, num_classes=CLASSES)
    m.to(dtype)
    reset(m, weights)
    return m


def run(m, weights, cfg, x, labels):
    """Two training steps of m from the fixture's weights; returns the losses, m holds
    the result."""
    dtype = next(m.parameters()).dtype
    reset(m, weights)
    m.train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.eval()
    opt = make_optimizer(m.parameters(), cfg)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(x.to(dtype)), labels)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    return losses


def run_case(case, arch, fixtures, optimizers):
    d = os.path.join(fixtures, case)
    wpath, iopath = os.path.join(d, "weights.safetensors"), os.path.join(d, "io.safetensors")
    for p in (wpath, iopath):
        if not os.path.exists(p):
            sys.exit(f"{p} is missing: run tools/make_fixtures.py first")
    weights = read_safetensors(wpath)
    io = read_some(iopath, ["input", "labels"])
    x, labels = io["input"], io["labels"].round().long()

    # One model per precision, reloaded for each optimizer (VGG16 in float64 is 1.1 GB).
    results = {}  # (optimizer, dtype) -> (losses, sampled weights, BatchNorm buffers)
    for dtype in (torch.float64, torch.float32):
        m = build(arch, dtype, weights)
        for opt_name in optimizers:
            t0 = time.time()
            losses = run(m, weights, OPTIMIZERS[opt_name], x, labels)
            after = {k: sample(p).double() for k, p in m.named_parameters()}
            buffers = {k: b.detach().double().clone() for k, b in m.named_buffers()
                       if not k.endswith("num_batches_tracked")}
            results[opt_name, dtype] = (losses, after, buffers)
            print(f"{case} {opt_name} {dtype}: {time.time() - t0:.1f} s", flush=True)
        del m

    for opt_name in optimizers:
        cfg = OPTIMIZERS[opt_name]
        losses64, after64, buf64 = results[opt_name, torch.float64]
        losses32, after32, buf32 = results[opt_name, torch.float32]
        out = {"loss": torch.tensor(losses64, dtype=torch.float32),
               "loss32": torch.tensor(losses32, dtype=torch.float32)}
        worst = (0.0, "")
        for k, a64 in after64.items():
            out["after." + k] = a64.float()
            out["after32." + k] = after32[k].float()
            err = ((after32[k] - a64).abs().max() / a64.abs().max()).item()
            worst = max(worst, (err, k))
        for k, b in buf64.items():
            out["after." + k] = b.float()
            out["after32." + k] = buf32[k].float()
        meta = {"arch": arch, "case": case, "optimizer": cfg["kind"], "steps": str(STEPS),
                "max_samples": str(MAX_SAMPLES), "classes": str(CLASSES)}
        meta.update({k: (("1" if v else "0") if isinstance(v, bool) else repr(v))
                     for k, v in cfg.items() if k != "kind"})
        path = os.path.join(d, f"train_{opt_name}.safetensors")
        write_safetensors(path, out, meta)
        print(f"{case} {opt_name}: losses {losses64[0]:.6f} {losses64[1]:.6f} "
              f"(float32 {losses32[0]:.6f} {losses32[1]:.6f}); PyTorch float32 weights off "
              f"by up to {worst[0]:.2e} ({worst[1]}) -> {path}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", required=True,
                    help="fixture directory written by tools/make_fixtures.py")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                    help="comma-separated optimizer configurations")
    args = ap.parse_args()
    optimizers = args.optimizers.split(",")
    for o in optimizers:
        if o not in OPTIMIZERS:
            sys.exit(f"unknown optimizer {o!r}; known: {', '.join(OPTIMIZERS)}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for case in args.cases.split(","):
        if case not in CASES:
            sys.exit(f"unknown case {case!r}; known: {', '.join(CASES)}")
        run_case(case, CASES[case], args.fixtures, optimizers)


if __name__ == "__main__":
    main()
