#!/usr/bin/python3
"""PyTorch's time for the training step isplit's BM_TrainStep measures.

Same model (torchvision, num_classes 10), same batch of random N(0,1) images and labels
i % 10, SGD momentum 0.9 weight decay 5e-4, train mode, cross-entropy, zero_grad, backward,
step. Prints the median, min and max milliseconds over --iters steps after warm-up, with
the thread count checked (Debian's torch starts with one thread).

  /usr/bin/python3 tools/bench_torch_train.py --model resnet50 --size 32 --batch 32 --threads 2
"""
import argparse
import statistics
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet50", "vgg16"], default="resnet50")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    assert torch.get_num_threads() == args.threads
    torch.manual_seed(7)
    model = getattr(torchvision.models, args.model)(num_classes=10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.arange(args.batch) % 10

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"{args.model} {args.size}x{args.size} batch {args.batch} threads {torch.get_num_threads()}: "
          f"median {statistics.median(times):.1f} ms, min {min(times):.1f}, max {max(times):.1f}, "
          f"{args.batch * 1e3 / statistics.median(times):.1f} images/s")


if __name__ == "__main__":
    main()
