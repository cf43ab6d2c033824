#!/usr/bin/python3
"""A/B timing of two isplit builds (or two environments) on a noisy machine.

    /usr/bin/python3 bench/ab.py --a OLD/isplit --b build/isplit --model resnet50 --size 64 \
        [--mode forward] [--batch B] [--iters 40] [--pairs 16] [--a-env K=V ...] [--b-env K=V ...] \
        [--stages] [--timeout 600] [--json FILE]

Each pair runs `isplit bench --json` once with A and once with B, in an order that flips
from pair to pair. A shared machine's speed drifts by tens of percent within minutes, so the
tool compares the two runs of each pair, not pooled times: it reports the median over pairs
of B/A for the run medians and for the run minima (the minimum is the run least disturbed),
their range, and in how many pairs B was faster. With --stages it does the same per stage
group (stem, maxpool, layer1..., fc) from `isplit bench --stages`.

With --b-mode, B runs another mode than A: `--a build/isplit --b build/isplit --mode
forward --b-mode importance` gives importance over forward, pair by pair (the issue's
"importance <= 2.2x our forward").
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def parse_env(items, flag):
    """K=V strings into a dict; a clear error for anything else."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"ab.py: {flag} expects KEY=VALUE, got '{item}'")
        env[key] = value
    return env


def stage_group(name):
    """The group a stage is summed into: 'layer2' for 'layer2.1', else the name."""
    return name.split(".")[0] if name.startswith("layer") else name


def run_once(binary, env, mode, args):
    """One `isplit bench --json` run: (median ms, min ms, {group: median ms})."""
    cmd = [binary, "bench", "--model", args.model, "--input-size", str(args.size), "--mode",
           mode, "--iters", str(args.iters), "--json"]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.stages:
        cmd.append("--stages")
    try:
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=args.timeout)
    except FileNotFoundError:
        sys.exit(f"ab.py: {binary} not found")
    except subprocess.TimeoutExpired:
        sys.exit(f"ab.py: {' '.join(cmd)} took more than {args.timeout} s")
    if out.returncode != 0:
        sys.exit(f"ab.py: {' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"ab.py: {' '.join(cmd)} printed no JSON")
    try:
        d = json.loads(lines[-1])
        groups = {}
        for s in d.get("stages", []):
            g = stage_group(s["name"])
            groups[g] = groups.get(g, 0.0) + s["median_ms"]
        return d["median_ms"], d["min_ms"], groups
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"ab.py: unexpected JSON from {binary}: {e}")


def summary(ratios):
    """Median, minimum and maximum of a list of B/A ratios, and how many are below 1."""
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "b_faster": sum(r < 1.0 for r in ratios), "pairs": len(ratios)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, help="isplit binary A (the baseline)")
    p.add_argument("--b", required=True, help="isplit binary B (may be the same as A)")
    p.add_argument("--a-env", action="append", default=[], help="KEY=VALUE for A's runs")
    p.add_argument("--b-env", action="append", default=[], help="KEY=VALUE for B's runs")
    p.add_argument("--model", default="resnet50", choices=["resnet50", "vgg16"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--mode", default="forward", choices=["forward", "importance", "train"])
    p.add_argument("--b-mode", choices=["forward", "importance", "train"],
                   help="B's mode when it differs from A's (--mode)")
    p.add_argument("--batch", type=int, default=0, help="images per pass (isplit's default if 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads per run (isplit's default if 0); one thread is steadier on a "
                        "shared machine")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--stages", action="store_true", help="also compare stage groups")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--json", help="write the pairs and the summary here")
    args = p.parse_args()
    for name in ("size", "iters", "pairs", "timeout"):
        if getattr(args, name) < 1:
            sys.exit(f"ab.py: --{name} must be positive")
    for name in ("batch", "threads"):
        if getattr(args, name) < 0:
            sys.exit(f"ab.py: --{name} must not be negative")
    env_a, env_b = parse_env(args.a_env, "--a-env"), parse_env(args.b_env, "--b-env")
    mode_b = args.b_mode or args.mode
    if args.stages and mode_b != args.mode:
        sys.exit("ab.py: --stages compares the same mode's stages; drop it or --b-mode")

    pairs = []
    for i in range(args.pairs):
        order = [("a", args.a, env_a, args.mode), ("b", args.b, env_b, mode_b)]
        if i % 2:
            order.reverse()
        got = {tag: run_once(binary, env, mode, args) for tag, binary, env, mode in order}
        pairs.append(got)
        if sys.stderr.isatty():
            print(f"\rpair {i + 1}/{args.pairs}: A {got['a'][0]:.3f} ms, B {got['b'][0]:.3f} ms",
                  end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    result = {
        "a": {"median_ms": statistics.median(g["a"][0] for g in pairs),
              "min_ms": min(g["a"][1] for g in pairs)},
        "b": {"median_ms": statistics.median(g["b"][0] for g in pairs),
              "min_ms": min(g["b"][1] for g in pairs)},
        "by_median": summary([g["b"][0] / g["a"][0] for g in pairs]),
        "by_minimum": summary([g["b"][1] / g["a"][1] for g in pairs]),
        "stages": {},
    }
    if args.stages:
        for group in pairs[0]["a"][2]:
            ratios = [g["b"][2][group] / g["a"][2][group] for g in pairs
                      if g["a"][2].get(group, 0) > 0 and group in g["b"][2]]
            if ratios:
                result["stages"][group] = summary(ratios)

    batch = f", batch {args.batch}" if args.batch else ""
    batch += f", {args.threads} thread{'s' if args.threads > 1 else ''}" if args.threads else ""
    modes = args.mode if mode_b == args.mode else f"A {args.mode}, B {mode_b}"
    print(f"{args.model} {args.size}x{args.size} {modes}{batch}, {args.pairs} pairs of "
          f"{args.iters} passes")
    print(f"A: median of run medians {result['a']['median_ms']:.3f} ms, best minimum "
          f"{result['a']['min_ms']:.3f}")
    print(f"B: median of run medians {result['b']['median_ms']:.3f} ms, best minimum "
          f"{result['b']['min_ms']:.3f}")
    for key, label in (("by_median", "run medians"), ("by_minimum", "run minima")):
        s = result[key]
        print(f"B/A by {label}: median {s['median']:.3f} (pairs {s['min']:.2f}-{s['max']:.2f}), "
              f"B faster in {s['b_faster']} of {s['pairs']}")
    for group, s in result["stages"].items():
        print(f"  {group:10s} B/A {s['median']:.3f} (pairs {s['min']:.2f}-{s['max']:.2f}), "
              f"B faster in {s['b_faster']} of {s['pairs']}")
    if args.json:
        out_dir = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".tmp") as f:
            json.dump({"config": vars(args), "pairs": pairs, "result": result}, f, indent=1)
            tmp = f.name
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
