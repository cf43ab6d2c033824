#!/usr/bin/python3
"""Exports a torchvision VGG16 or ResNet-50 as a .safetensors weight file for isplit.

Tensor names are exactly torchvision's state_dict() keys; num_batches_tracked is dropped.
Nothing is ever downloaded: the model is built with weights=None and then either
  * loaded from a local .pth state dict (--pth), or
  * left at torchvision's default initialisation, seeded with --seed S; with a seed the
    BatchNorm weight, bias, running_mean and running_var are also randomized so that
    test fixtures exercise non-trivial BatchNorm.

Examples:
  export_torchvision.py --model resnet50 --pth resnet50.pth --out resnet50.safetensors
  export_torchvision.py --model vgg16 --seed 1 --num-classes 10 --out vgg16_c10.safetensors
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torchvision  # noqa: E402

from safetensors_io import write_safetensors  # noqa: E402

# Name of the last (classifier) layer's weight for each model.
CLASSIFIER_WEIGHT = {"vgg16": "classifier.6.weight", "resnet50": "fc.weight"}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=sorted(CLASSIFIER_WEIGHT))
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier width (default: from --pth, else 1000)")
    p.add_argument("--pth", help="local state dict (.pth) to load; raw, or under "
                                 "'state_dict'/'model'; a 'module.' prefix is stripped")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load --pth with full pickle support (only for trusted files that "
                        "hold whole modules); by default only tensors are unpickled")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for the default initialisation (and randomized BatchNorm)")
    p.add_argument("--pretrained-none", action="store_true",
                   help="build without pretrained weights (always the case; accepted so "
                        "scripts can say so explicitly)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                   help="stored dtype of the tensors (default f32)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    args = p.parse_args(argv)
    if args.num_classes is not None and args.num_classes <= 0:
        p.error("--num-classes must be positive")
    if args.pth and args.seed is not None:
        p.error("--seed only applies when no --pth is given")
    return args


def load_state_dict(path, allow_pickle):
    """Reads a .pth file into a flat name -> tensor dict (unwrapping common containers)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except TypeError:  # torch without weights_only
        obj = torch.load(path, map_location="cpu")
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
            if key in obj and isinstance(obj[key], torch.nn.Module):
                obj = obj[key].state_dict()
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SystemExit(f"{path}: not a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def randomize_batchnorm(model, seed):
    """Gives every BatchNorm layer non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def build_model(args):
    """The torchvision model with the requested weights; returns (model, source text)."""
    state = load_state_dict(args.pth, args.allow_pickle) if args.pth else None
    num_classes = args.num_classes
    if num_classes is None:
        head = state.get(CLASSIFIER_WEIGHT[args.model]) if state else None
        num_classes = int(head.shape[0]) if head is not None else 1000
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = getattr(torchvision.models, args.model)(weights=None, num_classes=num_classes)
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in result.unexpected_keys
                      if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise SystemExit(f"{args.pth}: does not match torchvision {args.model} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        source = os.path.basename(args.pth)
    elif args.seed is not None:
        randomize_batchnorm(model, args.seed)
        source = f"seed={args.seed}"
    else:
        source = "default-init"
    return model.eval(), num_classes, source


def main(argv=None):
    """Entry point: builds, converts and writes the weights."""
    args = parse_args(argv)
    try:
        model, num_classes, source = build_model(args)
    except RuntimeError as e:  # shape mismatches from load_state_dict
        raise SystemExit(f"{args.pth}: {str(e).splitlines()[0]}")
    dtype = DTYPES[args.dtype]
    tensors = {name: t.detach().to(dtype).contiguous()
               for name, t in model.state_dict().items()
               if not name.endswith("num_batches_tracked")}
    metadata = {"format": "pt", "model": args.model, "num_classes": str(num_classes),
                "source": source, "torchvision": torchvision.__version__}
    try:
        write_safetensors(args.out, tensors, metadata)
    except OSError as e:
        raise SystemExit(f"{args.out}: cannot write: {e.strerror}")
    print(f"wrote {args.out}: {args.model}, {len(tensors)} tensors, {args.dtype}, {source}")


if __name__ == "__main__":
    main()
