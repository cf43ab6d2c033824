#!/usr/bin/python3
"""Per-stage forward times: isplit against oneDNN, interleaved, for ResNet-50 or VGG16.

The whole-model peer run (run_peers.py) says how far apart two engines are; this says
where. Each round runs `build/isplit bench --stages` once and the oneDNN driver once with
ONEDNN_VERBOSE=1, which logs every primitive's execution time. The driver's primitives of
one pass are grouped into the same stages as ours (ResNet-50: the stem, the max pool, each
bottleneck block with its residual add, the average pool, fc; VGG16: each convolution with
its ReLU, each pool, each classifier layer with its ReLU and dropout), each stage takes the
median over the timed passes of a run, and the table shows the median over the rounds.

  /usr/bin/python3 bench/peers/stages.py --model resnet50 --size 64 [--rounds 4]
      [--iters 30] [--warmup 3] [--threads 2] [--timeout 600] [--json out.json]

The driver's own weight and layout reorders are set-up work and are left out; logging
slows its passes a little, so its stage sum is the figure to compare, not its pass time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OURS = os.path.join(ROOT, "build", "isplit")
DRIVER = os.path.join(ROOT, "build", "peers", "onednn_driver")
PREFIX = "onednn_verbose,exec,cpu,"


def resnet50_layout():
    """oneDNN stages of ResNet-50 as (name, primitive kinds), in execution order."""
    rows = [("conv1", ["convolution"]), ("maxpool", ["pooling"])]
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            # The first block of each layer has a projection shortcut: four convolutions.
            rows.append((f"layer{layer}.{b}", ["convolution"] * (4 if b == 0 else 3)))
    rows += [("avgpool", ["pooling"]), ("fc", ["inner_product"])]
    return rows


VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_POOLS = (4, 9, 16, 23, 30)


def vgg16_layout():
    """oneDNN stages of VGG16 as (name, primitive kinds), in execution order."""
    rows = []
    for i in range(31):
        if i in VGG16_CONVS:
            rows.append((f"features.{i}", ["convolution"]))
        elif i in VGG16_POOLS:
            rows.append((f"features.{i}", ["pooling"]))
    rows += [("fc6", ["inner_product"]), ("fc7", ["inner_product"]), ("fc8", ["inner_product"])]
    return rows


def our_row(model, stage):
    """The table row our stage `stage` belongs to; None: it joins the row before it."""
    if model == "resnet50":
        if stage in ("conv1", "maxpool", "avgpool", "fc") or stage.startswith("layer"):
            return stage
        return None  # bn1 and relu join conv1, flatten joins avgpool
    if stage.startswith("features."):
        i = int(stage.split(".")[1])
        return stage if i in VGG16_CONVS or i in VGG16_POOLS else None  # ReLUs join their conv
    for part, row in (("classifier.0", "fc6"), ("classifier.3", "fc7"), ("classifier.6", "fc8")):
        if part in stage.split("+"):
            return row
    return None  # ReLU and dropout join their linear layer


def group_ours(model, stages):
    """Our stage times {name: ms} summed into the table's rows."""
    rows, current = {}, None
    for s in stages:
        row = our_row(model, s["name"])
        if row is None:
            if current is None:
                raise SystemExit(f"stages.py: our first stage {s['name']!r} has no row")
            row = current
        rows[row] = rows.get(row, 0.0) + s["median_ms"]
        current = row
    return rows


def parse_verbose(text, layout, iters):
    """Per-row median ms of the driver's last `iters` passes, from its verbose log."""
    prims = []
    for line in text.splitlines():
        if not line.startswith(PREFIX):
            continue
        f = line.split(",")
        if len(f) < 5 or f[3] == "reorder":
            continue
        kind = "pooling" if f[3].startswith("pooling") else f[3]
        try:
            prims.append((kind, float(f[-1])))
        except ValueError:
            raise SystemExit(f"stages.py: cannot read the time in oneDNN's line: {line[:120]}")
    kinds = [k for _, ks in layout for k in ks]
    per_pass = len(kinds)
    if len(prims) < per_pass * iters or len(prims) % per_pass:
        raise SystemExit(f"stages.py: the oneDNN log has {len(prims)} primitive executions, not a "
                         f"multiple of the {per_pass} this model runs per pass (driver changed?)")
    passes = [prims[i:i + per_pass] for i in range(len(prims) - per_pass * iters, len(prims), per_pass)]
    for p in passes:
        got = [k for k, _ in p]
        if got != kinds:
            first = next(i for i, (a, b) in enumerate(zip(got, kinds)) if a != b)
            raise SystemExit(f"stages.py: oneDNN primitive {first} of a pass is {got[first]}, "
                             f"expected {kinds[first]}")
    out, at = {}, 0
    for name, ks in layout:
        out[name] = statistics.median(sum(t for _, t in p[at:at + len(ks)]) for p in passes)
        at += len(ks)
    return out


def run(cmd, timeout, env=None):
    """stdout of cmd; exits with its stderr when it fails or runs past timeout seconds."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"stages.py: {' '.join(cmd)} timed out after {timeout} s")
    if r.returncode != 0:
        raise SystemExit(f"stages.py: {' '.join(cmd)} failed:\n{r.stderr.strip()[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("resnet50", "vgg16"), default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per run")
    ap.add_argument("--json", help="also write the table here")
    a = ap.parse_args()
    if a.rounds < 1 or a.iters < 1 or a.warmup < 0 or a.threads < 1 or a.size < 32 or a.timeout < 1:
        raise SystemExit("stages.py: --rounds, --iters, --threads and --timeout must be >= 1, "
                         "--warmup >= 0, --size >= 32")
    for path, fix in ((OURS, "build the project"), (DRIVER, "run bench/peers/setup.sh")):
        if not os.path.exists(path):
            raise SystemExit(f"stages.py: {os.path.relpath(path, ROOT)} missing: {fix}")
    layout = resnet50_layout() if a.model == "resnet50" else vgg16_layout()
    names = [n for n, _ in layout]
    ours_rounds, dnn_rounds, ours_pass = [], [], []
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    common = ["--model", a.model, "--input-size", str(a.size), "--threads", str(a.threads)]
    for r in range(a.rounds):
        out = run([OURS, "bench", *common, "--iters", str(a.iters), "--json", "--stages"], a.timeout)
        try:
            d = json.loads(out)
        except json.JSONDecodeError:
            raise SystemExit(f"stages.py: isplit bench printed no JSON: {out.strip()[:200]}")
        ours = group_ours(a.model, d["stages"])
        if sorted(ours) != sorted(names):
            raise SystemExit(f"stages.py: our stages {sorted(ours)} do not match the table's {sorted(names)}")
        ours_rounds.append(ours)
        ours_pass.append(d["median_ms"])
        text = run([DRIVER, *common, "--iters", str(a.iters), "--warmup", str(a.warmup)], a.timeout, env)
        dnn_rounds.append(parse_verbose(text, layout, a.iters))
        if sys.stderr.isatty():
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    rows = []
    for n in names:
        o = statistics.median(x[n] for x in ours_rounds)
        p = statistics.median(x[n] for x in dnn_rounds)
        rows.append({"stage": n, "ours_ms": o, "onednn_ms": p, "ratio": o / p if p > 0 else None})
    print(f"{a.model} forward {a.size}x{a.size}, {a.threads} threads, median of {a.rounds} rounds "
          f"of {a.iters} passes\n")
    print("| stage | ours ms | oneDNN ms | ours / oneDNN |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        print(f"| {row['stage']} | {row['ours_ms']:.3f} | {row['onednn_ms']:.3f} | {ratio} |")
    so, sp = sum(r["ours_ms"] for r in rows), sum(r["onednn_ms"] for r in rows)
    print(f"| sum of stages | {so:.3f} | {sp:.3f} | {so / sp:.2f} |")
    print(f"\nour whole pass (median of the rounds' medians): {statistics.median(ours_pass):.3f} ms")
    if a.json:
        out = {"model": a.model, "input_size": a.size, "threads": a.threads, "rounds": a.rounds,
               "iters": a.iters, "stages": rows, "ours_sum_ms": so, "onednn_sum_ms": sp,
               "ours_pass_ms": statistics.median(ours_pass)}
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
