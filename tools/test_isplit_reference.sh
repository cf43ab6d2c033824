#!/bin/bash
# Self-check of tools/isplit_reference.py (the PyTorch reference for `isplit analyze`).
#
# Builds make_fixtures' seeded VGG16 and ResNet-50 (10 classes) and 4 random 64x64 images
# with labels 3,5,3,7, then runs the reference for both models, every method and both
# --relu-grad modes and checks:
#   * cui.csv / cui_by_class.csv / maps.safetensors are well formed: 18 rows by default,
#     20 (ResNet-50) and 31 (VGG16) with --points all, shapes and bytes, finite CUIs,
#     log10 columns, candidates 0/1 and equal to the stated rule, one row per present
#     class and point, the overall CUI equal to the image-weighted mean of the class CUIs;
#   * the CUIs equal an independent implementation (its own hooks: the pre-ReLU tensors
#     captured by rewriting Bottleneck.forward and from the conv before each VGG ReLU;
#     maps in numpy) for every method, both modes, predicted and label targets;
#   * pre vs post: identical for layercam and xgradcam (the ReLU mask only zeroes the
#     gradient where A = 0), identical for gradcam at non-ReLU points (pools), different
#     for gradcam at every ReLU point;
#   * --batch 1 and --batch 4 agree to 1e-5 relative; --classes keeps only those labels and
#     their per-class CUIs are unchanged; --points all contains the default points;
#   * the command line itself: one real run equal to the in-process one, exit 2 on bad
#     usage, 1 with a one-line message on a runtime error.
# Most runs call the tool's main() in one Python process with the weights loaded once
# (a VGG16 file is 0.5 GB), so the whole check takes about a minute.
set -euo pipefail
# PyTorch's OpenMP threads spin while waiting; on a shared machine that turns a 0.5 s run
# into 5 s. Passive waiting costs nothing measurable here.
export OMP_WAIT_POLICY=PASSIVE
TOOLS=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

/usr/bin/python3 - "$TOOLS" <<'EOF'
import contextlib
import io
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import torch

TOOLS = sys.argv[1]
sys.path.insert(0, TOOLS)
import isplit_reference as R  # noqa: E402
from make_fixtures import build  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

t0 = time.time()
torch.set_num_threads(max(1, os.cpu_count() or 1))
LABELS = [3, 5, 3, 7]
g = torch.Generator().manual_seed(4321)
x = torch.randn(len(LABELS), 3, 64, 64, generator=g)
write_safetensors("data.safetensors", {"input": x, "labels": torch.tensor(LABELS).float()})
models = {}
for arch in ("resnet50", "vgg16"):
    models[arch] = build(arch, 10, 1234).eval()
    write_safetensors(f"{arch}.safetensors",
                      {k: v for k, v in models[arch].state_dict().items()
                       if not k.endswith("num_batches_tracked")})

# Load each weight file once for all in-process runs.
_load = R.load_model
_cache = {}


def cached_load(arch, path, dtype):
    if (arch, path, dtype) not in _cache:
        _cache[(arch, path, dtype)] = _load(arch, path, dtype)
    return _cache[(arch, path, dtype)]


R.load_model = cached_load

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def run(arch, out, *extra):
    argv = ["--model", arch, "--weights", f"{arch}.safetensors",
            "--data", "data.safetensors", "--out", out, *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        R.main(argv)
    return load(out)


def load(out):
    with open(os.path.join(out, "cui.csv")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(out, "cui_by_class.csv")) as f:
        by_class = f.read().splitlines()
    return {"lines": lines, "by_class": by_class,
            "maps": read_safetensors(os.path.join(out, "maps.safetensors")),
            "rows": [l.split(",") for l in lines[1:]],
            "cui": {l.split(",")[1]: float(l.split(",")[4]) for l in lines[1:]},
            "class_cui": {(int(l.split(",")[0]), l.split(",")[1]): float(l.split(",")[2])
                          for l in by_class[1:]}}


def validate(res, name, npoints, labels):
    check(res["lines"][0] == "layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,"
          "candidate", f"{name}: cui.csv header")
    rows = res["rows"]
    check(len(rows) == npoints, f"{name}: {len(rows)} rows, expected {npoints}")
    cuis = []
    for i, r in enumerate(rows):
        check(len(r) == 7 and r[0] == str(i), f"{name}: row {i} malformed: {r}")
        c, h, w = (int(v) for v in r[2].split("x"))
        check(int(r[3]) == c * h * w * 4, f"{name}: {r[1]} out_bytes")
        m = res["maps"]["map." + r[1]]
        check(list(m.shape) == [h, w], f"{name}: {r[1]} map shape {list(m.shape)}")
        cui = float(r[4])
        check(math.isfinite(cui) and cui >= 0, f"{name}: {r[1]} cui {r[4]}")
        if cui > 0:
            check(rel(float(r[5]), math.log10(cui)) < 1e-15, f"{name}: {r[1]} log10")
        else:
            check(r[5] == "" and r[6] == "0", f"{name}: {r[1]} zero cui row")
        check(r[6] in ("0", "1"), f"{name}: {r[1]} candidate {r[6]}")
        check(rel(float(m.double().sum()) / (h * w), cui) < 1e-5, f"{name}: {r[1]} map sum")
        cuis.append(cui)
    flags = [int(r[6]) for r in rows]
    expect = [int(0 < cuis[i] and (i == 0 or cuis[i] > cuis[i - 1]) and
                  (i == len(cuis) - 1 or cuis[i] > cuis[i + 1])) for i in range(len(cuis))]
    check(flags == expect, f"{name}: candidates {flags} != rule {expect}")
    present = sorted(set(labels))
    keys = [(int(l.split(",")[0]), l.split(",")[1]) for l in res["by_class"][1:]]
    check(res["by_class"][0] == "label,layer_name,cui", f"{name}: by-class header")
    check(keys == [(k, r[1]) for k in present for r in rows], f"{name}: by-class rows")
    for r in rows:
        mean = sum(labels.count(k) * res["class_cui"][(k, r[1])] for k in present) / len(labels)
        check(rel(mean, float(r[4])) < 1e-12, f"{name}: {r[1]} overall != class mean")


# ---- independent implementation ---------------------------------------------------------
def np_maps(method, a, g):
    a, g = a.numpy(), g.numpy()
    c = a.shape[1]
    if method == "layercam":
        return np.maximum((np.maximum(g, 0) * a).sum(axis=1) / c, 0)
    if method == "gradcam":
        w = g.mean(axis=(2, 3))
    elif method == "gradcam++":
        den = 2 * g ** 2 + a.sum(axis=(2, 3))[:, :, None, None] * g ** 3
        alpha = np.divide(g ** 2, den, out=np.zeros_like(den), where=den != 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    else:
        w = (g * a).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + 1e-7)
    return np.maximum(np.einsum("nc,nchw->nhw", w, a) / c, 0)


def independent(arch, target):
    """{(method, mode): ({point: cui}, {(label, point): cui})} for the default points."""
    model = models[arch]
    acts, pres = {}, {}
    handles = []
    if arch == "vgg16":
        points = R.VGG16_DEFAULT
        for i, m in enumerate(model.features):
            handles.append(m.register_forward_hook(
                lambda _m, _i, o, n=f"features.{i}": acts.__setitem__(n, o)))
        relu_points = [p for p in points if isinstance(model.get_submodule(p), torch.nn.ReLU)]
        pre_of = {p: f"features.{int(p.split('.')[1]) - 1}" for p in relu_points}
    else:
        blocks = [f"layer{l}.{b}" for l, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
        points = ["relu", "maxpool"] + blocks
        for n in ["bn1", "relu", "maxpool"]:
            handles.append(model.get_submodule(n).register_forward_hook(
                lambda _m, _i, o, n=n: acts.__setitem__(n, o)))
        for n in blocks:
            blk = model.get_submodule(n)

            def forward(self, inp, n=n):
                identity = inp if self.downsample is None else self.downsample(inp)
                out = self.relu(self.bn1(self.conv1(inp)))
                out = self.relu(self.bn2(self.conv2(out)))
                pres[n] = self.bn3(self.conv3(out)) + identity
                acts[n] = torch.relu(pres[n])
                return acts[n]
            blk.forward = types.MethodType(forward, blk)
        pre_of = {"relu": "bn1"}
        pre_of.update({n: n for n in blocks})
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
        if arch == "resnet50":
            for n in points[2:]:
                del model.get_submodule(n).forward
    cls = logits.argmax(1) if target == "predicted" else torch.tensor(LABELS)
    score = logits.gather(1, cls[:, None]).sum()
    post = {p: acts[p] for p in points}
    pre = {p: (pres[p] if arch == "resnet50" and p in pres else acts[pre_of[p]])
           if p in pre_of else acts[p] for p in points}
    grads = torch.autograd.grad(score, [post[p] for p in points] + [pre[p] for p in points])
    out = {}
    labels = np.array(LABELS)
    for method in R.METHODS:
        for mode, off in (("post", 0), ("pre", len(points))):
            cui, cls_cui = {}, {}
            for i, p in enumerate(points):
                maps = np_maps(method, post[p].detach().double(), grads[off + i].double())
                hw = maps.shape[1] * maps.shape[2]
                cui[p] = abs(maps.mean(axis=0).sum()) / hw
                for k in sorted(set(LABELS)):
                    cls_cui[(k, p)] = abs(maps[labels == k].mean(axis=0).sum()) / hw
            out[(method, mode)] = (cui, cls_cui, relu_pts(model, arch, points))
    return out


def relu_pts(model, arch, points):
    if arch == "vgg16":
        return {p for p in points if isinstance(model.get_submodule(p), torch.nn.ReLU)}
    return {p for p in points if p != "maxpool"}


# ---- the candidate rule on synthetic curves -----------------------------------------------
for cuis, want in [([1, 2, 1], [0, 1, 0]), ([3, 2, 1], [1, 0, 0]), ([1, 2, 3], [0, 0, 1]),
                   ([0, 1, 0.5, 0.5, 2], [0, 1, 0, 0, 1]), ([1, 2, 2, 1], [0, 0, 0, 0]),
                   ([0, 0], [0, 0]), ([5], [1]), ([0], [0]), ([0, 1e-30, 0], [0, 1, 0])]:
    check(R.candidates([float(c) for c in cuis]) == want, f"candidates({cuis})")

# ---- the matrix ---------------------------------------------------------------------------
for arch, nall in (("resnet50", 20), ("vgg16", 31)):
    ta, before = time.time(), len(failures)
    ref = independent(arch, "predicted")
    res = {}
    worst = 0.0
    for method in R.METHODS:
        for mode in ("post", "pre"):
            name = f"{arch} {method} {mode}"
            r = res[(method, mode)] = run(arch, f"{arch}_{method}_{mode}", "--method", method,
                                          "--relu-grad", mode, "--batch", "4")
            validate(r, name, 18, LABELS)
            icui, icls, _ = ref[(method, mode)]
            check(list(icui) == [row[1] for row in r["rows"]], f"{name}: point names")
            for p in icui:
                worst = max(worst, rel(icui[p], r["cui"][p]))
                check(rel(icui[p], r["cui"][p]) < 1e-6,
                      f"{name}: {p} cui {r['cui'][p]} != independent {icui[p]}")
            for k in icls:
                check(rel(icls[k], r["class_cui"][k]) < 1e-6, f"{name}: class cui {k}")
    relu_points = ref[("gradcam", "post")][2]
    for method in R.METHODS:
        for p, c in res[(method, "post")]["cui"].items():
            cp = res[(method, "pre")]["cui"][p]
            if method in ("layercam", "xgradcam") or p not in relu_points:
                check(rel(c, cp) < 1e-12, f"{arch} {method} {p}: pre {cp} != post {c}")
            elif method == "gradcam":
                check(rel(c, cp) > 1e-6, f"{arch} gradcam {p}: pre == post ({c})")

    # Ground-truth target, against the independent implementation.
    ref = independent(arch, "label")
    for method in ("gradcam++", "xgradcam"):
        r = run(arch, f"{arch}_label_{method}", "--method", method, "--relu-grad", "pre",
                "--target", "label")
        validate(r, f"{arch} {method} label", 18, LABELS)
        for p, c in ref[(method, "pre")][0].items():
            worst = max(worst, rel(c, r["cui"][p]))
            check(rel(c, r["cui"][p]) < 1e-6, f"{arch} {method} label: {p}")

    # Batching: one image per forward/backward versus all four in one (the matrix's run).
    one = run(arch, f"{arch}_b1", "--method", "gradcam++", "--relu-grad", "pre", "--batch", "1")
    four = res[("gradcam++", "pre")]
    validate(one, f"{arch} batch 1", 18, LABELS)
    bworst = max(rel(one["cui"][p], four["cui"][p]) for p in four["cui"])
    bworst = max([bworst] + [rel(one["class_cui"][k], four["class_cui"][k])
                             for k in four["class_cui"]])
    check(bworst < 1e-5, f"{arch}: --batch 1 vs 4 differ by {bworst:.2e}")

    # --points all: every module output, the default points among them unchanged.
    full = run(arch, f"{arch}_all", "--method", "gradcam", "--points", "all")
    validate(full, f"{arch} all", nall, LABELS)
    for p, c in res[("gradcam", "post")]["cui"].items():
        check(rel(full["cui"][p], c) < 1e-12, f"{arch} all: {p}")

    # --classes: only those labels, their class CUIs as before.
    sub = run(arch, f"{arch}_classes", "--method", "gradcam", "--classes", "3,5")
    validate(sub, f"{arch} classes", 18, [3, 5, 3])
    for k, c in sub["class_cui"].items():
        check(rel(c, res[("gradcam", "post")]["class_cui"][k]) < 1e-12,
              f"{arch} classes: {k}")

    # float64 model (ResNet-50 only: a float64 VGG16 is 1.1 GB): runs, and agrees with
    # float32 as well as the network allows.
    dworst = "-"
    if arch == "resnet50":
        dbl = run(arch, f"{arch}_double", "--method", "gradcam", "--double")
        validate(dbl, f"{arch} double", 18, LABELS)
        dworst = max(rel(dbl["cui"][p], c) for p, c in res[("gradcam", "post")]["cui"].items())
        check(dworst < 1e-3, f"{arch}: float64 vs float32 differ by {dworst:.2e}")
        dworst = f"{dworst:.1e}"
    status = "ok" if len(failures) == before else f"{len(failures) - before} FAILED"
    print(f"{arch}: {status} ({time.time() - ta:.0f} s); independent implementation max rel "
          f"{worst:.1e}, batch 1 vs 4 max rel {bworst:.1e}, float64 vs float32 max rel "
          f"{dworst}", flush=True)

# ---- the command line ---------------------------------------------------------------------
tool = [sys.executable, os.path.join(TOOLS, "isplit_reference.py")]
common = ["--model", "resnet50", "--weights", "resnet50.safetensors",
          "--data", "data.safetensors"]
p = subprocess.run(tool + common + ["--out", "cli", "--method", "gradcam++",
                                    "--relu-grad", "pre"], capture_output=True, text=True)
check(p.returncode == 0, f"cli run: exit {p.returncode}: {p.stderr}")
if p.returncode == 0:
    cli, mem = load("cli"), load("resnet50_gradcam++_pre")
    check(cli["lines"] == mem["lines"] and cli["by_class"] == mem["by_class"],
          "cli run differs from the in-process run")
p = subprocess.run(tool + common + ["--out", "x", "--method", "nope"], capture_output=True)
check(p.returncode == 2, f"bad usage: exit {p.returncode}")
p = subprocess.run(tool + common + ["--out", "x", "--classes", "99"], capture_output=True,
                   text=True)
check(p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1,
      f"runtime error: exit {p.returncode}, stderr {p.stderr!r}")

print(f"{'FAILED: ' + str(len(failures)) + ' checks' if failures else 'all checks passed'} "
      f"({time.time() - t0:.0f} s)")
sys.exit(1 if failures else 0)
EOF
