#!/usr/bin/python3
"""PyTorch reference for `isplit analyze`: I-SPLIT's CUI curve, candidates, per-class CUI.

I-SPLIT (Cunico et al., ICPR 2022) ranks the cut points of a network by how much
class-discriminative evidence their outputs carry: for every image and every cut point a
gradient-weighted activation map is computed, the maps are averaged over the images, and
the Cumulative Importance (CUI) of a cut point is the spatial mean of its averaged map. The
split-point candidates are the local maxima of log10(CUI) along the network.

    isplit_reference.py --model vgg16|resnet50 --weights W.safetensors --data D.safetensors
                        --out DIR [--method gradcam|gradcam++|layercam|xgradcam]
                        [--target predicted|label] [--points default|all]
                        [--relu-grad post|pre] [--classes 3,5,7] [--batch B] [--double]

--data is a safetensors file holding `input` [N,3,S,S] (already normalised) and `labels`
[N] (class indices stored as floats). The C++ tests feed the same tensors to `isplit
analyze` and to this script.

Per image (eval mode; one forward and one backward per batch of the sum of the images'
target scores: in eval mode images do not interact, so each gets its own gradient), the
target score is the logit of the predicted class (--target predicted, the default, as the
authors' code does) or of the ground-truth label (--target label). For every reported cut
point with output A [C,H,W] and gradient G = d score / d A:
  gradcam    w_c = mean_hw G_c;                                map = ReLU(mean_c w_c A_c)
  gradcam++  alpha = G^2 / (2 G^2 + sum_hw(A_c) G^3), 0 where that denominator is 0;
             w_c = sum_hw alpha ReLU(G_c);                     map = ReLU(mean_c w_c A_c)
             (Chattopadhay et al. 2018 with the exponential-score simplification used by
             pytorch-grad-cam; pytorch-grad-cam adds 1e-6 to the denominator instead of
             the explicit 0 used here)
  layercam   map = ReLU(mean_c ReLU(G_c) * A_c)               (Jiang et al. 2021)
  xgradcam   w_c = sum_hw(G_c A_c) / (sum_hw A_c + 1e-7);      map = ReLU(mean_c w_c A_c)
                                                               (Fu et al. 2020)
The channel reduction is a mean (sum / C), and no map is normalised to [0,1]. Maps are
computed and accumulated in float64, averaged over all images (cui.csv) and over the
images of each ground-truth label (cui_by_class.csv). CUI = |sum_hw(mean map)| / (H W).

--relu-grad pre reproduces the authors' hooks on torchvision's in-place ReLUs: at a cut
point whose output is produced by an nn.ReLU (VGG16 features.1, 3, ..., 29; ResNet-50
`relu` and every Bottleneck, whose output is block.relu(out + identity)), G is the
gradient with respect to that ReLU's input (for a Bottleneck: d score / d(out + identity))
while A stays the ReLU's output. --relu-grad post (the default) uses the true gradient of
the cut point's own output. See ReluInputs for how it is captured.

Writes into DIR:
  cui.csv           layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,candidate
                    (log10_cui is empty when cui is 0; such a point is never a candidate)
  cui_by_class.csv  label,layer_name,cui   (labels ascending, points in order)
  maps.safetensors  map.<point> [H,W] float32: the mean map of each point, for debugging
"""
import argparse
import contextlib
import math
import os
import sys

# OpenMP threads that spin while waiting make a shared machine crawl; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import cut_names  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

METHODS = ("gradcam", "gradcam++", "layercam", "xgradcam")
CLASSIFIER_WEIGHT = {"vgg16": "classifier.6.weight", "resnet50": "fc.weight"}
# VGG16's ReLU and max-pool outputs (DESIGN.md: the tensors one would transmit).
VGG16_DEFAULT = [f"features.{i}" for i in
                 (1, 3, 4, 6, 8, 9, 11, 13, 15, 16, 18, 20, 22, 23, 25, 27, 29, 30)]


def fail(msg):
    """Runtime error: one line on stderr, exit status 1."""
    sys.exit(f"isplit_reference: {msg}")


def report_points(arch, model, which):
    """Ordered cut-point names for --points default|all."""
    every = cut_names(arch, model)
    if which == "all":
        return every
    if arch == "vgg16":
        return list(VGG16_DEFAULT)
    return ["relu", "maxpool"] + [n for n in every if n.startswith("layer")]


@contextlib.contextmanager
def no_random_init():
    """Makes torch.nn.init's in-place initialisers no-ops while a model is built.

    torchvision draws every parameter at random (VGG16: 138M of them, seconds on a small
    board) only for load_model to overwrite them all; load_model checks that the weight
    file supplies every parameter and buffer, so nothing uninitialised survives.
    """
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def load_model(arch, path, dtype):
    """torchvision model in eval mode with the weights of a safetensors file, no in-place ReLU."""
    state = read_safetensors(path)
    head = CLASSIFIER_WEIGHT[arch]
    if head not in state:
        fail(f"{path}: no tensor '{head}': not {arch} weights")
    classes = state[head].shape[0]
    with no_random_init():
        model = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        fail(f"{path}: tensors do not match torchvision {arch}: missing {missing[:3]}, "
             f"unexpected {unexpected[:3]}")
    # Adopt the file's tensors instead of copying them into the (uninitialised) ones
    # torchvision allocated: VGG16 is 0.5 GB.
    owned = dict(model.named_parameters())
    owned.update(model.named_buffers())
    for k, v in state.items():
        if v.shape != owned[k].shape:
            fail(f"{path}: tensor '{k}' has shape {list(v.shape)}, torchvision {arch} "
                 f"expects {list(owned[k].shape)}")
        owned[k].data = v.to(torch.float32)
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            # Every cut point must be a distinct tensor: an in-place ReLU would overwrite
            # the conv / add output captured just before it.
            m.inplace = False
    return model.to(dtype).eval(), classes


class ReluInputs:
    """Maps each tensor produced by an nn.ReLU call to that call's input (for --relu-grad pre).

    A forward hook on every nn.ReLU module records output -> input for each call, keyed by
    id(output) and holding both tensors (so an id cannot be reused while recorded). A cut
    point's output is a ReLU output exactly when its tensor is found here, by identity:
      * VGG16 features.1, 3, ...: the ReLU module is the cut point itself;
      * ResNet-50 `relu`: likewise (model.relu is called once, in the stem);
      * a Bottleneck: its forward ends with `return self.relu(out + identity)`, so the
        block's output tensor *is* the output of block.relu's third call, and the recorded
        input is out + identity. No call counting is needed, and a block whose output did
        not come from a ReLU would simply not be found.
    Max-pool, conv and BatchNorm outputs are never found, so they keep their own gradient.
    """

    def __init__(self, model):
        self.seen = {}
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, torch.nn.ReLU)]

    def _hook(self, _module, inputs, output):
        self.seen[id(output)] = (output, inputs[0])

    def input_of(self, tensor):
        """The ReLU input that produced tensor, or None when tensor is no ReLU output."""
        hit = self.seen.get(id(tensor))
        return hit[1] if hit is not None and hit[0] is tensor else None

    def clear(self):
        self.seen.clear()


def importance_maps(method, a, g):
    """Per-image maps [N,H,W] from activations a and gradients g [N,C,H,W] (float64)."""
    relu = torch.nn.functional.relu
    if method == "layercam":
        return relu((relu(g) * a).mean(dim=1))
    if method == "gradcam":
        w = g.mean(dim=(2, 3))
    elif method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        denom = 2.0 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))
        alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
        w = (alpha * relu(g)).sum(dim=(2, 3))
    elif method == "xgradcam":
        w = (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-7)
    else:
        raise ValueError(method)
    return relu((w[:, :, None, None] * a).mean(dim=1))


def candidates(cuis):
    """Candidate flags (0/1) of the ordered CUI values: the strict local maxima of log10(CUI).

    Rule (the C++ side implements the same): let v_i = log10(cui_i), with v_i = -inf when
    cui_i == 0. Point i is a candidate iff cui_i > 0 (finite) and v_i > v_{i-1} (when i > 0)
    and v_i > v_{i+1} (when i < n-1), all strict. So the first and the last point are
    candidates when strictly greater than their single neighbour, a lone point is one when
    its CUI is positive, and no point of a plateau (equal neighbours) is one. Since log10
    is increasing, the comparisons are made on the CUI doubles themselves, which are
    equivalent and cannot be tied by rounding inside log10.
    """
    n = len(cuis)
    flags = []
    for i, c in enumerate(cuis):
        ok = math.isfinite(c) and c > 0
        if ok and i > 0:
            ok = c > cuis[i - 1] or cuis[i - 1] == 0
        if ok and i < n - 1:
            ok = c > cuis[i + 1] or cuis[i + 1] == 0
        flags.append(1 if ok else 0)
    return flags


def analyze(model, points, x, labels, method, target, relu_grad, batch):
    """Sums of the per-image maps: ({point: [H,W]}, {label: {point: [H,W]}}, counts, shapes)."""
    modules = {p: model.get_submodule(p) for p in points}
    outputs = {}

    def capture(point):
        def hook(_module, _inputs, output):
            outputs[point] = output
        return hook

    handles = [modules[p].register_forward_hook(capture(p)) for p in points]
    relus = ReluInputs(model) if relu_grad == "pre" else None
    dtype = next(model.parameters()).dtype
    total, by_class, counts, shapes = {}, {}, {}, {}
    try:
        for start in range(0, x.shape[0], batch):
            xb = x[start:start + batch].to(dtype)
            lb = labels[start:start + batch]
            outputs.clear()
            if relus:
                relus.clear()
            logits = model(xb)
            cls = logits.argmax(dim=1) if target == "predicted" else lb
            if int(cls.max()) >= logits.shape[1]:
                fail(f"label {int(cls.max())} is outside the model's {logits.shape[1]} "
                     "classes")
            score = logits.gather(1, cls[:, None]).sum()
            # Gradient source per point: its own output, or (pre) the input of the ReLU
            # that produced it.
            sources = {}
            for p in points:
                src = relus.input_of(outputs[p]) if relus else None
                sources[p] = outputs[p] if src is None else src
            unique = list({id(t): t for t in sources.values()}.values())
            grads = dict(zip(map(id, unique), torch.autograd.grad(score, unique)))
            for p in points:
                a = outputs[p].detach().double()
                g = grads[id(sources[p])].detach().double()
                maps = importance_maps(method, a, g)
                shapes[p] = tuple(a.shape[1:])
                total[p] = total.get(p, 0) + maps.sum(dim=0)
                for label in lb.unique().tolist():
                    per = by_class.setdefault(label, {})
                    per[p] = per.get(p, 0) + maps[lb == label].sum(dim=0)
            for label in lb.tolist():
                counts[label] = counts.get(label, 0) + 1
    finally:
        for h in handles + (relus.handles if relus else []):
            h.remove()
    return total, by_class, counts, shapes


def cui_of(mean_map):
    """|sum(map)| / (H W) of a float64 map."""
    return abs(float(mean_map.sum())) / mean_map.numel()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted(CLASSIFIER_WEIGHT))
    p.add_argument("--weights", required=True, help="torchvision state_dict as safetensors")
    p.add_argument("--data", required=True,
                   help="safetensors with input [N,3,S,S] (normalised) and labels [N]")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("--target", choices=("predicted", "label"), default="predicted")
    p.add_argument("--points", choices=("default", "all"), default="default")
    p.add_argument("--relu-grad", choices=("post", "pre"), default="post",
                   help="gradient at ReLU-output cut points: of the output (post) or of "
                        "the ReLU's input, as the authors' in-place hooks give (pre)")
    p.add_argument("--classes", help="comma-separated labels: keep only those images")
    p.add_argument("--batch", type=int, default=8, help="images per forward/backward")
    p.add_argument("--double", action="store_true", help="run the model in float64")
    args = p.parse_args(argv)
    if args.batch <= 0:
        p.error("--batch must be positive")
    if args.classes is not None:
        try:
            args.classes = sorted({int(c) for c in args.classes.split(",")})
        except ValueError:
            p.error(f"--classes: not a comma-separated list of integers: {args.classes!r}")
    return args


def load_data(path, classes):
    data = read_safetensors(path)
    for name in ("input", "labels"):
        if name not in data:
            fail(f"{path}: no tensor '{name}'")
    x, raw = data["input"], data["labels"].double()
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        fail(f"{path}: input must be [N,3,S,S], got {list(x.shape)}")
    if raw.shape != (x.shape[0],):
        fail(f"{path}: labels must be [{x.shape[0]}], got {list(raw.shape)}")
    if not torch.equal(raw, raw.round()) or (raw < 0).any():
        fail(f"{path}: labels must be non-negative integers")
    labels = raw.long()
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes))
        x, labels = x[keep], labels[keep]
    if x.shape[0] == 0:
        fail(f"{path}: no image left" + (f" with a label in {classes}" if classes else ""))
    return x, labels


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dtype = torch.float64 if args.double else torch.float32
    x, labels = load_data(args.data, args.classes)
    model, _ = load_model(args.model, args.weights, dtype)
    points = report_points(args.model, model, args.points)
    total, by_class, counts, shapes = analyze(model, points, x, labels, args.method,
                                              args.target, args.relu_grad, args.batch)
    n = x.shape[0]
    means = {p: total[p] / n for p in points}
    cuis = [cui_of(means[p]) for p in points]
    flags = candidates(cuis)

    os.makedirs(args.out, exist_ok=True)
    rows = ["layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,candidate"]
    for i, (p, c, f) in enumerate(zip(points, cuis, flags)):
        ch, h, w = shapes[p]
        log = "%.17g" % math.log10(c) if c > 0 and math.isfinite(c) else ""
        rows.append(f"{i},{p},{ch}x{h}x{w},{ch * h * w * 4},{'%.17g' % c},{log},{f}")
    with open(os.path.join(args.out, "cui.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    rows = ["label,layer_name,cui"]
    for label in sorted(counts):
        for p in points:
            rows.append(f"{label},{p},{'%.17g' % cui_of(by_class[label][p] / counts[label])}")
    with open(os.path.join(args.out, "cui_by_class.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    meta = {"model": args.model, "method": args.method, "target": args.target,
            "points": args.points, "relu_grad": args.relu_grad, "images": str(n),
            "dtype": "float64" if args.double else "float32"}
    write_safetensors(os.path.join(args.out, "maps.safetensors"),
                      {"map." + p: means[p].float() for p in points}, meta)
    best = [p for p, f in zip(points, flags) if f]
    print(f"{args.model} {args.method} ({args.target}, relu-grad {args.relu_grad}): "
          f"{n} images, {len(points)} points, candidates {' '.join(best) or '-'}")


if __name__ == "__main__":
    main()
