#!/usr/bin/python3
"""PyTorch timing of the three `isplit bench` modes on torchvision's VGG16 / ResNet-50.

  forward     eval mode under torch.no_grad() (BatchNorm not folded: PyTorch's eager path)
  importance  eval mode, no parameter needs a gradient, the input does; every conv, bn,
              relu, pool and linear output keeps its gradient (retain_grad from forward
              hooks); backward of each image's top class score
  train       one SGD step (momentum 0.9, weight decay 5e-4), train mode, cross-entropy,
              10 classes, random N(0,1) images and labels i % 10, as tools/bench_torch_train.py

  LD_LIBRARY_PATH=<openblas-openmp dir> /usr/bin/python3 bench/peers/torch_bench.py \
      --model resnet50 --mode forward --input-size 224 [--batch 1] [--threads 2] [--iters 10]

Prints one JSON line with the median, minimum and maximum milliseconds.
"""
import argparse
import json
import statistics
import time

import torch
import torchvision

HOOKED = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d,
          torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.Linear)


KEPT = []  # outputs whose gradient the current importance pass keeps


def keep_grad(_module, _inputs, output):
    """Forward hook: makes the module's output keep its gradient after backward."""
    output.retain_grad()
    KEPT.append(output)


def make_pass(args):
    """Builds the model for the mode and returns a function that runs one pass."""
    classes = args.num_classes or (10 if args.mode == "train" else 1000)
    torch.manual_seed(7)
    model = getattr(torchvision.models, args.model)(num_classes=classes)
    x = torch.randn(args.batch, 3, args.input_size, args.input_size)

    if args.mode == "forward":
        model.eval()

        def forward():
            """One inference pass without autograd."""
            with torch.no_grad():
                model(x)
        return forward

    if args.mode == "importance":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, torch.nn.ReLU):
                m.inplace = False  # an in-place ReLU would overwrite the retained BN output
            if isinstance(m, HOOKED):
                m.register_forward_hook(keep_grad)
        xi = x.clone().requires_grad_(True)

        def importance():
            """Forward, then backward of the top class score to every layer output."""
            xi.grad = None
            KEPT.clear()
            out = model(xi)
            out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        return importance

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    y = torch.arange(args.batch) % classes

    def train():
        """One SGD step on the fixed batch."""
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return train


def main():
    """Parses arguments, times the passes and prints the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet50", "vgg16"], required=True)
    ap.add_argument("--mode", choices=["forward", "importance", "train"], default="forward")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=0, help="default 1000, 10 for train")
    args = ap.parse_args()
    if args.mode == "train" and args.batch < 2:
        ap.error("train needs --batch >= 2 (BatchNorm batch statistics)")
    torch.set_num_threads(args.threads)
    if torch.get_num_threads() != args.threads:
        raise SystemExit(f"torch runs {torch.get_num_threads()} threads, asked for {args.threads}")
    run = make_pass(args)
    for _ in range(args.warmup):
        run()
    extra = {}
    if args.mode == "importance":
        extra["retained_grads"] = sum(t.grad is not None for t in KEPT)
        extra["hooked_outputs"] = len(KEPT)
    ms = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"peer": "pytorch", "model": args.model, "mode": args.mode, "input_size": args.input_size,
                      "batch": args.batch, "median_ms": round(statistics.median(ms), 3),
                      "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3), "iters": args.iters,
                      "warmup": args.warmup, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, **extra}))


if __name__ == "__main__":
    main()
