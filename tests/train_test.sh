#!/usr/bin/env bash
# End-to-end tests of `isplit train` and `isplit eval` on Debian's Fashion-MNIST: a short
# real run that must learn, kill-and-resume equal to an uninterrupted run, fine-tuning from
# a 1000-class file, and bad input.  Usage: train_test.sh ISPLIT FIXTURE_DIR
set -u
ISPLIT=$1
FIXTURES=$2
PY=/usr/bin/python3
TOOLS=$(cd "$(dirname "$0")/../tools" && pwd)
FM=/usr/share/datasets/fashion-mnist
source "$(dirname "$0")/harness.sh"

if [ ! -e "$FM/train-images-idx3-ubyte.gz" ]; then
  echo "SKIP: $FM not installed (dataset-fashion-mnist)"
  exit 0
fi

# --- A short real run: 640 training images, 3 epochs at 32x32, AdamW with warm-up.
T="$ISPLIT train --model resnet50 --val $FM --input-size 32"
expect 0 "" -- $T --data $FM --batch-size 32 --epochs 3 --optimizer adamw --lr 1e-3 --warmup 0.5 --limit 640 --val-limit 500 \
  --out "$WORK/short.safetensors"
cat "$WORK/out"
$PY - "$WORK/short.log.csv" <<'PYEOF' && ok || bad "the short run did not learn"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 3, rows
loss = [float(r["train_loss"]) for r in rows]
top1 = float(rows[-1]["val_top1"])
print("train loss per epoch", loss, "final val top-1", top1)
assert loss[-1] < 0.6 * loss[0], loss        # the loss goes down
assert top1 >= 0.5, top1                      # chance is 0.1
assert all(r["val_acc_9"] != "" for r in rows)
PYEOF
# eval on the same 500 test images agrees with the log's last validation.
expect 0 "" -- "$ISPLIT" eval --model resnet50 --weights "$WORK/short.safetensors" --data $FM \
  --input-size 32 --limit 500 --json --confusion "$WORK/conf.csv" --per-class "$WORK/pc.csv"
$PY - "$WORK/out" "$WORK/short.log.csv" "$WORK/conf.csv" "$WORK/pc.csv" <<'PYEOF' && ok || bad "eval --json disagrees with the training log or its CSVs"
import csv, json, sys
j = json.load(open(sys.argv[1]))
last = list(csv.DictReader(open(sys.argv[2])))[-1]
assert j["images"] == 500 and 0 <= j["top1"] <= j["top5"] <= 1, j
assert abs(j["top1"] - float(last["val_top1"])) < 1e-6, (j["top1"], last["val_top1"])
assert abs(j["top5"] - float(last["val_top5"])) < 1e-6
conf = list(csv.reader(open(sys.argv[3])))
assert conf[0][0] == "label" and len(conf) == 11 and all(len(r) == 11 for r in conf)
counts = [[int(v) for v in r[1:]] for r in conf[1:]]
assert sum(map(sum, counts)) == 500
assert abs(sum(counts[i][i] for i in range(10)) / 500 - j["top1"]) < 1e-9
pc = list(csv.DictReader(open(sys.argv[4])))
for i, r in enumerate(pc):
    assert int(r["images"]) == sum(counts[i]) == j["per_class"][i]["images"]
PYEOF
expect 0 "" -- "$ISPLIT" eval --model resnet50 --weights "$WORK/short.safetensors" --data $FM --input-size 32 --limit 64
grep -q "^top-1:" "$WORK/out" && ok || bad "eval prints no top-1"

# --- Kill and resume: a run killed mid-epoch and resumed ends with the uninterrupted
# run's exact weights (augmentation on, momentum, checkpoints every 4 steps).
R="$ISPLIT train --model resnet50 --data $FM --val $FM --input-size 32 --batch-size 16 --epochs 2 \
  --lr 0.01 --weight-decay 5e-4 --pad 2 --hflip --limit 192 --val-limit 64 --checkpoint-steps 4 --seed 7"
expect 0 "" -- $R --out "$WORK/full.safetensors"
$R --out "$WORK/killed.safetensors" >/dev/null 2>&1 &
pid=$!
# Kill it as soon as a checkpoint exists (somewhere in the first epoch, usually).
for _ in $(seq 1 600); do
  [ -e "$WORK/killed.state.safetensors" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -e "$WORK/killed.state.safetensors" ] && ok || bad "no checkpoint was written before the kill"
expect 0 "resuming from" -- $R --out "$WORK/killed.safetensors" --resume
cmp -s "$WORK/full.safetensors" "$WORK/killed.safetensors" && ok ||
  bad "resumed weights differ from the uninterrupted run"
cmp -s "$WORK/full.state.safetensors" "$WORK/killed.state.safetensors" && ok ||
  bad "resumed optimizer state differs from the uninterrupted run"
cut -d, -f1-16 "$WORK/full.log.csv" >"$WORK/a.csv"
cut -d, -f1-16 "$WORK/killed.log.csv" >"$WORK/b.csv"
cmp -s "$WORK/a.csv" "$WORK/b.csv" && ok || bad "resumed log differs: $(diff "$WORK/a.csv" "$WORK/b.csv")"
expect 0 "already complete" -- $R --out "$WORK/killed.safetensors" --resume
expect 1 "cannot resume: setting 'lr'" -- ${R/--lr 0.01/--lr 0.02} --out "$WORK/killed.safetensors" --resume
printf 'garbage' >"$WORK/corrupt.state.safetensors"
expect 1 "corrupt.state.safetensors" -- $R --out "$WORK/corrupt.safetensors" --resume
ls "$WORK" | grep -q '\.tmp\.' && bad "temporary files left behind: $(ls "$WORK")" || ok

# --- Fine-tuning a 1000-class file on 10 classes re-initialises only the classifier.
W1000=$FIXTURES/resnet50_224/weights.safetensors
if [ -e "$W1000" ]; then
  expect 0 "fc.weight, fc.bias re-initialised for 10 classes" -- $T --data $FM --epochs 1 --lr 0.01 --limit 32 \
    --batch-size 16 --weights "$W1000" --num-classes 10 --train-only fc,layer4 --out "$WORK/ft.safetensors"
  $PY - "$TOOLS" "$W1000" "$WORK/ft.safetensors" <<'PYEOF' && ok || bad "fine-tuning changed frozen tensors or left trained ones alone"
import sys, torch
sys.path.insert(0, sys.argv[1])
from safetensors_io import read_safetensors
a, b = read_safetensors(sys.argv[2]), read_safetensors(sys.argv[3])
assert b["fc.weight"].shape == (10, 2048)
changed = {k for k in b if k in a and a[k].shape == b[k].shape and not torch.equal(a[k], b[k])}
frozen = {k for k in b if not (k.startswith("fc.") or k.startswith("layer4."))}
assert not (changed & frozen), sorted(changed & frozen)[:5]  # frozen weights and BN statistics kept
assert "layer4.2.conv3.weight" in changed and "layer4.0.bn1.running_mean" in changed
PYEOF
else
  echo "SKIP: $W1000 missing (make fixtures)"
fi

# --- Bad input: one-line messages, exit 1 (or 2 for bad usage).
mkdir -p "$WORK/empty/a"
expect 1 "no images" -- $T --batch-size 32 --epochs 1 --lr 0.1 --data "$WORK/empty" --out "$WORK/x.safetensors"
expect 1 "out of range" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --num-classes 5 --out "$WORK/x.safetensors"
expect 1 "pattern 'nosuch' matches no parameter" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --freeze nosuch --out "$WORK/x.safetensors"
expect 1 "fewer than one batch" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --limit 8 --out "$WORK/x.safetensors"
expect 1 "nowhere" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --weights "$WORK/nowhere.safetensors" --out "$WORK/x.safetensors"
expect 2 "" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --optimizer lbfgs --out "$WORK/x.safetensors"
expect 2 "" -- $T --data $FM --batch-size 32 --epochs 1 --out "$WORK/x.safetensors"
expect 1 "padding" -- $T --data $FM --batch-size 32 --epochs 1 --lr 0.1 --pad 40 --out "$WORK/x.safetensors"
[ -e "$WORK/x.safetensors" ] && bad "a failed run left weights behind" || ok
expect 1 "nowhere" -- "$ISPLIT" eval --model resnet50 --weights "$WORK/nowhere.safetensors" --data $FM

summary
