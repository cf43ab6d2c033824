#!/usr/bin/python3
"""Interleaved peer benchmark: isplit against oneDNN, ONNX Runtime and PyTorch.

For every (model, input size, mode) it runs, round after round, each peer that supports
the mode once (A B C D A B C D ...), takes each run's median over --iters passes, and
reports the median of those per-round medians, with the ratios ours / peer; then the
ratios paired round by round (median, range and a 90 % bootstrap interval of the median),
which a machine whose speed drifts between rounds disturbs less.

  /usr/bin/python3 bench/peers/run_peers.py [--models resnet50,vgg16] [--sizes 64,224]
      [--modes forward,importance,train] [--rounds 5] [--iters 10] [--warmup 2]
      [--batch 1] [--train-batch 8] [--threads 2] [--peers ours,onednn,ort,pytorch]
      [--nice N] [--omp-wait-policy passive] [--json out.json]

oneDNN and ONNX Runtime take part in forward only. Peers that cannot run are listed with
the reason (and the command that fixes it); see bench/peers/README.md.
"""
import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PYTHON = "/usr/bin/python3"  # Debian's interpreter, where python3-torch lives
PEERS = ["ours", "onednn", "ort", "pytorch"]
LABELS = {"ours": "ours", "onednn": "oneDNN", "ort": "ORT", "pytorch": "PyTorch"}
MODES = {"ours": {"forward", "importance", "train"}, "onednn": {"forward"}, "ort": {"forward"},
         "pytorch": {"forward", "importance", "train"}}


def openblas_dir():
    """Directory of Debian's OpenMP OpenBLAS (libblas.so.3 inside), or None."""
    env = os.environ.get("PEERS_OPENBLAS_DIR")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/*/openblas-openmp"))
    return found[0] if found else None


def peer_problem(peer, model, size):
    """Returns why a peer cannot run this model and size, or None when it can."""
    if peer == "ours":
        if not os.path.exists("build/isplit"):
            return "build/isplit missing: build the project (cmake -S . -B build -G Ninja && cmake --build build)"
    elif peer == "onednn":
        if not os.path.exists("build/peers/onednn_driver"):
            return "build/peers/onednn_driver missing: run bench/peers/setup.sh (or bench/peers/build.sh)"
    elif peer == "ort":
        if shutil.which("node") is None:
            return "node not found on PATH (Node.js is needed for onnxruntime-node)"
        if not os.path.isdir("bench/peers/node_modules/onnxruntime-node"):
            return "bench/peers/node_modules missing: run bench/peers/setup.sh"
        if not os.path.exists(f"build/peers/{model}-{size}.onnx"):
            return (f"build/peers/{model}-{size}.onnx missing: run "
                    f"{PYTHON} bench/peers/export_onnx.py --models {model} --sizes {size}")
    elif peer == "pytorch":
        if not os.path.exists(PYTHON):
            return f"{PYTHON} not found"
        probe = subprocess.run([PYTHON, "-c", "import torch, torchvision"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"{PYTHON} cannot import torch/torchvision (install python3-torch python3-torchvision)"
    return None


def command(peer, model, size, mode, batch, args):
    """Returns (argv, extra environment) for one run of a peer."""
    t, it, wu = str(args.threads), str(args.iters), str(args.warmup)
    common = ["--model", model, "--input-size", str(size), "--batch", str(batch), "--iters", it, "--warmup", wu]
    env = {}
    if peer == "ours":
        argv = ["build/isplit", "bench", "--mode", mode, "--threads", t, "--json"] + common
    elif peer == "onednn":
        argv = ["build/peers/onednn_driver", "--threads", t] + common
        env["OMP_NUM_THREADS"] = t
    elif peer == "ort":
        argv = ["node", "bench/peers/ort_bench.js", "--threads", t] + common
    else:
        argv = [PYTHON, "bench/peers/torch_bench.py", "--mode", mode, "--threads", t] + common
        env["OMP_NUM_THREADS"] = t
        blas = openblas_dir()
        if blas:
            env["LD_LIBRARY_PATH"] = blas + (":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else "")
    if args.omp_wait_policy and peer in ("onednn", "pytorch"):
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.nice:
        argv = ["nice", "-n", str(args.nice)] + argv
    return argv, env


def run_once(argv, env, timeout):
    """Runs one peer command and returns (result dict, None) or (None, error text)."""
    try:
        res = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        return None, f"exit {res.returncode}: {tail[0]}"
    for line in reversed(res.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line), None
            except json.JSONDecodeError:
                break
    return None, "no JSON line in its output"


def fmt_ms(v):
    """Formats milliseconds for the table, '-' when missing."""
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_ratio(a, b):
    """Formats a / b, '-' when either is missing."""
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def print_table(rows):
    """Prints the workloads as a Markdown table."""
    head = ["workload", "ours ms", "oneDNN ms", "ORT ms", "PyTorch ms", "ours/oneDNN", "ours/ORT", "ours/PyTorch"]
    body = []
    for r in rows:
        med = {p: r["peers"][p].get("median_ms") for p in PEERS}
        body.append([r["workload"], fmt_ms(med["ours"]), fmt_ms(med["onednn"]), fmt_ms(med["ort"]),
                     fmt_ms(med["pytorch"]), fmt_ratio(med["ours"], med["onednn"]),
                     fmt_ratio(med["ours"], med["ort"]), fmt_ratio(med["ours"], med["pytorch"])])
    print_markdown(head, body)


def print_markdown(head, body):
    """Prints a Markdown table: first column left-aligned, the others right-aligned."""
    widths = [max(len(x[i]) for x in body + [head]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                             for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    print(line(head))
    print("| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |")
    for b in body:
        print(line(b))


def median_interval(values, level=0.9, resamples=2000, seed=12345):
    """A bootstrap interval for the median of values: the median of `resamples` draws with
    replacement, their (1 - level) / 2 and (1 + level) / 2 quantiles (seeded, so the same
    values always give the same interval). With few values it is wide, as it should be."""
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * (resamples - 1))]
    hi = meds[int((1 + level) / 2 * (resamples - 1))]
    return lo, hi


def paired_ratios(row):
    """Per peer, ours / peer round by round (the two runs of a round are minutes apart at
    most, so a machine that drifts between rounds affects both alike): {peer: {"ratios",
    "median", "min", "max", "median_90"}} for the peers that ran every round next to ours;
    median_90 is a 90 % bootstrap interval of the median."""
    ours = row["peers"]["ours"]
    out = {}
    if ours.get("status") != "ok":
        return out
    for p in PEERS[1:]:
        peer = row["peers"][p]
        if peer.get("status") != "ok" or len(peer["rounds_ms"]) != len(ours["rounds_ms"]):
            continue
        ratios = [a / b for a, b in zip(ours["rounds_ms"], peer["rounds_ms"]) if b > 0]
        if ratios:
            out[p] = {"ratios": ratios, "median": statistics.median(ratios), "min": min(ratios),
                      "max": max(ratios), "median_90": list(median_interval(ratios))}
    return out


def print_paired(rows):
    """Prints the round-by-round ratios (median, range and the median's 90 % interval) as a
    Markdown table."""
    head = ["workload"] + [f"ours/{LABELS[p]} by round" for p in PEERS[1:]]
    body = []
    for r in rows:
        cells = [r["workload"]]
        for p in PEERS[1:]:
            q = r["paired"].get(p)
            if not q:
                cells.append("-")
                continue
            lo, hi = q["median_90"]
            cells.append(f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}; {lo:.2f}-{hi:.2f})")
        body.append(cells)
    print_markdown(head, body)


def main():
    """Parses arguments, runs the interleaved rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vgg16")
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--modes", default="forward")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10, help="timed passes per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes per run")
    ap.add_argument("--batch", type=int, default=1, help="batch of forward and importance")
    ap.add_argument("--train-batch", type=int, default=8, help="batch of train (>= 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--nice", type=int, default=0, help="run every peer under nice -n N")
    ap.add_argument("--omp-wait-policy", choices=["active", "passive"],
                    help="OMP_WAIT_POLICY for the OpenMP peers (oneDNN, PyTorch); default: unset")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per peer run")
    ap.add_argument("--json", metavar="OUT", help="also write every measurement to this file")
    args = ap.parse_args()
    out_json = os.path.abspath(args.json) if args.json else None
    os.chdir(ROOT)

    models = args.models.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    chosen = args.peers.split(",")
    for name, values, allowed in (("--models", models, {"resnet50", "vgg16"}),
                                  ("--modes", modes, {"forward", "importance", "train"}),
                                  ("--peers", chosen, set(PEERS))):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"{name}: unknown {', '.join(bad)}")
    if args.train_batch < 2:
        ap.error("--train-batch must be >= 2")

    print(f"threads {args.threads}, rounds {args.rounds}, iters {args.iters}, warmup {args.warmup}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    blas = openblas_dir()
    if "pytorch" in chosen and not blas:
        print("note: OpenMP OpenBLAS not found (libopenblas0-openmp); PyTorch runs with its default BLAS")

    skipped = []  # (peer, workload or '*', reason)
    problems = {}  # (peer, model, size) -> reason, checked once
    rows = []
    for model in models:
        for size in sizes:
            for mode in modes:
                batch = args.train_batch if mode == "train" else args.batch
                workload = f"{model} {size} {mode} b{batch}"
                peers = {}
                active = []
                for p in PEERS:
                    if p not in chosen:
                        peers[p] = {"status": "not selected"}
                        continue
                    if mode not in MODES[p]:
                        peers[p] = {"status": "n/a", "reason": f"{LABELS[p]} runs forward only"}
                        continue
                    key = (p, model, size)
                    if key not in problems:
                        problems[key] = peer_problem(p, model, size)
                    if problems[key]:
                        peers[p] = {"status": "skipped", "reason": problems[key]}
                        skipped.append((p, f"{model} {size}", problems[key]))
                        continue
                    peers[p] = {"status": "ok", "rounds_ms": [], "runs": []}
                    active.append(p)
                for r in range(args.rounds):
                    for p in list(active):
                        argv, env = command(p, model, size, mode, batch, args)
                        t0 = time.time()
                        result, err = run_once(argv, env, args.timeout)
                        if err:
                            peers[p] = {"status": "failed", "reason": err, "command": " ".join(argv)}
                            skipped.append((p, workload, "failed: " + err))
                            active.remove(p)
                            continue
                        peers[p]["rounds_ms"].append(result["median_ms"])
                        peers[p]["runs"].append(result)
                        print(f"  round {r + 1}/{args.rounds} {workload:28s} {LABELS[p]:8s} "
                              f"median {result['median_ms']:9.2f} ms  (run took {time.time() - t0:5.1f} s)",
                              flush=True)
                for p in active:
                    peers[p]["median_ms"] = statistics.median(peers[p]["rounds_ms"])
                row = {"workload": workload, "model": model, "input_size": size, "mode": mode,
                       "batch": batch, "peers": peers}
                row["paired"] = paired_ratios(row)
                rows.append(row)

    print(f"\nmedian over {args.rounds} rounds of each run's median ({args.iters} passes), "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f} at end\n")
    print_table(rows)
    if any(r["paired"] for r in rows):
        print("\nround by round: the median of ours / peer over the rounds (range; a 90 % "
              "bootstrap interval of that median)\n")
        print_paired(rows)
    if skipped:
        print("\nskipped or failed:")
        seen = set()
        for p, where, why in skipped:
            if (p, why) in seen:
                continue
            seen.add((p, why))
            print(f"  {LABELS[p]} ({where}): {why}")
    na = sorted({LABELS[p] for r in rows for p in PEERS if r["peers"][p].get("status") == "n/a"})
    if na:
        print(f"  {', '.join(na)}: forward only, shown as '-' for importance and train")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"config": vars(args), "load_average_end": os.getloadavg(), "workloads": rows}, f, indent=1)
        print(f"\nwrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
