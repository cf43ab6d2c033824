#!/usr/bin/env bash
# End-to-end tests of the isplit program: exit codes, messages, and `predict` against
# PyTorch on the same weights and image.  Usage: cli_test.sh ISPLIT FIXTURE_DIR [BACKENDS]
# BACKENDS is "onednn" when the program was built with the oneDNN backend (CMake says so).
set -u
ISPLIT=$1
FIXTURES=$2
BACKENDS=${3:-native-only}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"

W=$FIXTURES/resnet50_64/weights.safetensors
IMG=$SRC/data/sample/sample.png

# --- usage and info
expect 0 "" -- "$ISPLIT" --help
expect 0 "" -- "$ISPLIT" info --model resnet50
grep -q "layer4.2" "$WORK/out" && ok || bad "info lacks layer4.2"
expect 0 "" -- "$ISPLIT" info --model vgg16 --input-size 64 --all --json
$PY -c "import json,sys; d=json.load(open('$WORK/out')); assert len(d['cut_points'])==31, d" && ok || bad "info --json"
# per-cut memory: a head built alone (--cut) measures what the one-pass table says
cp "$WORK/out" "$WORK/vgg_all.json"
expect 0 "" -- "$ISPLIT" info --model vgg16 --input-size 64 --cut features.16 --json
$PY - "$WORK/vgg_all.json" "$WORK/out" <<'PYEOF' && ok || bad "info --cut memory differs from the table"
import json, sys
table = {c["name"]: c for c in json.load(open(sys.argv[1]))["cut_points"]}
one = json.load(open(sys.argv[2]))["cut_points"]
assert len(one) == 1 and one[0]["name"] == "features.16", one
t = table["features.16"]
for key in ("head_weight_bytes", "activation_bytes", "peak_bytes", "head_params"):
    assert one[0][key] == t[key], (key, one[0][key], t[key])
assert t["peak_bytes"] == t["head_weight_bytes"] + t["activation_bytes"]
assert t["head_weight_bytes"] >= 4 * t["head_params"]
PYEOF
expect 2 "unknown cut point 'layer9'" -- "$ISPLIT" info --model resnet50 --cut layer9
expect 2 "model" -- "$ISPLIT" info
expect 2 "" -- "$ISPLIT" info --model alexnet
expect 2 "" -- "$ISPLIT" info --model vgg16 --input-size 16
expect 2 "" -- "$ISPLIT" frobnicate
expect 2 "" -- "$ISPLIT" predict --model resnet50 "$IMG"

# --- predict equals PyTorch (weights exported by tools/, image decoded and resized by both)
expect 0 "" -- "$ISPLIT" predict --model resnet50 --weights "$W" --input-size 64 \
  --logits "$WORK/ours.csv" "$IMG"
grep -q "class" "$WORK/out" && ok || bad "predict prints no classes"
$PY "$SRC/tools/torch_predict.py" --model resnet50 --weights "$W" --input-size 64 \
  --logits "$WORK/torch.csv" "$IMG" && ok || bad "torch_predict.py failed"
$PY "$SRC/tools/compare_logits.py" "$WORK/ours.csv" "$WORK/torch.csv" 1e-4 && ok || bad "logits differ from PyTorch"
head -1 "$WORK/ours.csv" | grep -q "^file,logit_0,.*,logit_9$" && ok || bad "logits CSV header"

# The full-size case: 1000-class ResNet-50 and VGG16 at 224x224 (the sample is 224x224;
# the ResNet-50 run also feeds a 64x64 copy so that both resize paths are compared).
for arch in resnet50 vgg16; do
  W224=$FIXTURES/${arch}_224/weights.safetensors
  expect 0 "" -- "$ISPLIT" predict --model $arch --weights "$W224" --topk 5 \
    --logits "$WORK/ours224.csv" "$IMG" "$SRC/tests/data/small.png"
  $PY "$SRC/tools/torch_predict.py" --model $arch --weights "$W224" \
    --logits "$WORK/torch224.csv" "$IMG" "$SRC/tests/data/small.png" && ok || bad "torch_predict.py $arch failed"
  $PY "$SRC/tools/compare_logits.py" "$WORK/ours224.csv" "$WORK/torch224.csv" 1e-4 && ok || bad "$arch 224 logits differ from PyTorch"
done

# --- bad weights files: exit 1, one line naming the file and the tensor
printf 'abc' >"$WORK/short.safetensors"
expect 1 "short.safetensors" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/short.safetensors" "$IMG"
$PY - "$WORK" "$W" "$SRC/tools" <<'PYEOF'
import struct, sys
sys.path.insert(0, sys.argv[3])
import torch
from safetensors_io import read_safetensors, write_safetensors
work, src = sys.argv[1], sys.argv[2]
state = read_safetensors(src)
# header length far larger than the file
with open(f"{work}/huge.safetensors", "wb") as f:
    f.write(struct.pack("<Q", 1 << 60) + b"{}")
missing = dict(state); del missing["layer3.5.bn2.running_var"]
write_safetensors(f"{work}/missing.safetensors", missing)
extra = dict(state); extra["layer9.weight"] = torch.zeros(3)
write_safetensors(f"{work}/extra.safetensors", extra)
wrong = dict(state); wrong["conv1.weight"] = torch.zeros(64, 3, 5, 5)
write_safetensors(f"{work}/wrong.safetensors", wrong)
dtype = dict(state); dtype["fc.bias"] = dtype["fc.bias"].double()
write_safetensors(f"{work}/dtype.safetensors", dtype)
PYEOF
expect 1 "huge.safetensors.*header" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/huge.safetensors" "$IMG"
expect 1 "missing.safetensors.*layer3.5.bn2.running_var.*missing" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/missing.safetensors" "$IMG"
expect 1 "extra.safetensors.*layer9.weight" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/extra.safetensors" "$IMG"
expect 1 "wrong.safetensors.*conv1.weight.*shape" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/wrong.safetensors" "$IMG"
expect 1 "dtype.safetensors.*fc.bias.*dtype" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/dtype.safetensors" "$IMG"
expect 1 "nonexistent.safetensors" -- "$ISPLIT" predict --model resnet50 --weights "$WORK/nonexistent.safetensors" "$IMG"
expect 1 "classifier.6.weight.*missing" -- "$ISPLIT" predict --model vgg16 --weights "$W" "$IMG"

# --- bad images and options
printf 'not an image' >"$WORK/bad.png"
expect 1 "bad.png" -- "$ISPLIT" predict --model resnet50 --weights "$W" --input-size 64 "$WORK/bad.png"
expect 1 "nothere.jpg" -- "$ISPLIT" predict --model resnet50 --weights "$W" --input-size 64 "$WORK/nothere.jpg"
expect 1 "--std" -- "$ISPLIT" predict --model resnet50 --weights "$W" --std 1,0,1 "$IMG"
expect 1 "--mean" -- "$ISPLIT" predict --model resnet50 --weights "$W" --mean 1,2 "$IMG"
expect 1 "x.csv" -- "$ISPLIT" predict --model resnet50 --weights "$W" --input-size 64 --logits "$WORK/no/dir/x.csv" "$IMG"

# --- analyze on real data: Fashion-MNIST's test set (Debian's dataset-fashion-mnist) via IDX
FM=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
if [ -f "$FM" ]; then
  A="$ISPLIT analyze --model resnet50 --weights $W --data $FM --input-size 32 --limit 40"
  expect 0 "" -- $A --out "$WORK/an" --threads 1 --batch 8
  for f in cui.csv cui_by_class.csv cui.svg cui_by_class.svg report.json; do
    [ -s "$WORK/an/$f" ] && ok || bad "analyze did not write $f"
  done
  [ "$(wc -l <"$WORK/an/cui.csv")" -eq 19 ] && ok || bad "cui.csv should have 18 points"
  $PY -c "
import json; r = json.load(open('$WORK/an/report.json'))
assert r['images'] == 40 and r['settings']['data_kind'] == 'idx', r['settings']
assert len(r['by_class']) == 10 and r['global_maximum'] in r['candidates']
" && ok || bad "report.json content"
  # Two threads, other batch size: the same numbers.
  expect 0 "" -- $A --out "$WORK/an2" --threads 2 --batch 5
  cmp -s "$WORK/an/cui.csv" "$WORK/an2/cui.csv" && ok || bad "cui.csv differs between 1 and 2 threads"
  # Sharded and merged: exactly the single run.
  expect 0 "" -- $A --out "$WORK/parts" --shard 0/3
  expect 0 "" -- $A --out "$WORK/parts" --shard 1/3
  expect 0 "" -- $A --out "$WORK/parts" --shard 2/3
  expect 0 "" -- "$ISPLIT" merge "$WORK"/parts/partial-*.json --out "$WORK/merged"
  cmp -s "$WORK/an/cui.csv" "$WORK/merged/cui.csv" && ok || bad "merged cui.csv differs from the single run"
  cmp -s "$WORK/an/cui_by_class.csv" "$WORK/merged/cui_by_class.csv" && ok || bad "merged cui_by_class.csv differs"
  expect 1 "already included" -- "$ISPLIT" merge "$WORK"/parts/partial-0-of-3.json "$WORK"/parts/partial-0-of-3.json --out "$WORK/m2"
  # A class subset: the report says how the candidates moved.
  expect 0 "" -- $A --out "$WORK/sub" --classes 0,9
  $PY -c "
import json; r = json.load(open('$WORK/sub/report.json'))
assert r['class_subset'] == [0, 9] and 'candidates_vs_all_classes' in r
" && ok || bad "subset report"
  expect 1 "class 12" -- $A --out "$WORK/bad" --classes 12
else
  echo "SKIP: $FM not installed (dataset-fashion-mnist)"
fi
mkdir -p "$WORK/empty/a"
expect 1 "no images" -- "$ISPLIT" analyze --model resnet50 --weights "$W" --data "$WORK/empty" --out "$WORK/x"
expect 1 "nowhere" -- "$ISPLIT" analyze --model resnet50 --weights "$W" --data "$WORK/nowhere" --out "$WORK/x"
expect 2 "" -- "$ISPLIT" analyze --model resnet50 --weights "$W" --data "$WORK/empty" --out "$WORK/x" --method saliency
expect 1 "shard" -- "$ISPLIT" analyze --model resnet50 --weights "$W" --data "$WORK/empty" --out "$WORK/x" --shard 3/2

# --- bench: timings and peak memory as JSON
expect 0 "" -- "$ISPLIT" bench --model resnet50 --input-size 32 --iters 2 --warmup 0 --json
$PY -c "
import json; d = json.load(open('$WORK/out'))
assert d['mode'] == 'forward' and d['iters'] == 2 and len(d['times_ms']) == 2, d
assert 0 < d['min_ms'] <= d['median_ms'] <= d['max_ms'], d
assert d['weights_bytes'] == 25557032 * 4 and d['peak_rss_bytes'] > d['weights_bytes'], d
assert d['backend'] == 'native', d
assert d['huge_pages'] == 'on' and d['huge_page_bytes'] >= 0, d
" && ok || bad "bench --json"
expect 0 "" -- "$ISPLIT" bench --model resnet50 --input-size 32 --iters 1 --warmup 0 --json --huge-pages off
$PY -c "
import json; d = json.load(open('$WORK/out'))
assert d['huge_pages'] == 'off' and d['huge_page_bytes'] == 0, d
" && ok || bad "bench --huge-pages off"
expect 2 "" -- "$ISPLIT" bench --model resnet50 --huge-pages maybe
expect 0 "" -- "$ISPLIT" bench --model resnet50 --input-size 32 --iters 2 --warmup 0 --json --evict-mb 64
$PY -c "
import json; d = json.load(open('$WORK/out'))
assert d['evict_mb'] == 64 and len(d['times_ms']) == 2, d
# the 64 MB read between passes is counted in the peak resident set
assert d['peak_rss_bytes'] > d['weights_bytes'] + 64 * 2**20, d
" && ok || bad "bench --evict-mb"
expect 2 "" -- "$ISPLIT" bench --model resnet50 --evict-mb -1
expect 0 "" -- "$ISPLIT" bench --model resnet50 --input-size 32 --iters 3 --warmup 0 --stages --json
$PY -c "
import json; d = json.load(open('$WORK/out'))
st = d['stages']
assert [s['name'] for s in st][:5] == ['conv1', 'bn1', 'relu', 'maxpool', 'layer1.0'], st
assert len(st) == 23 and st[-1]['name'] == 'fc', st
assert all(s['median_ms'] >= 0 for s in st), st
assert sum(s['median_ms'] for s in st) <= 1.5 * d['max_ms'], (st, d)
assert not any('backward_median_ms' in s for s in st), st  # a forward has no backward
" && ok || bad "bench --stages --json"
expect 0 "" -- "$ISPLIT" bench --model resnet50 --mode importance --input-size 32 --iters 2 --warmup 0 --stages --json
$PY -c "
import json; d = json.load(open('$WORK/out'))
st = {s['name']: s for s in d['stages']}
# every block records a backward, timed within the backward part
assert all(st[n]['backward_median_ms'] >= 0 for n in st if n.startswith('layer')), st
assert sum(s.get('backward_median_ms', 0) for s in st.values()) <= 1.5 * d['max_ms'], d
" && ok || bad "bench importance --stages --json backward"
expect 0 "" -- "$ISPLIT" bench --model resnet50 --mode importance --input-size 32 --iters 1 --warmup 0 --stages
grep -q "^layer4.2 " "$WORK/out" && grep -q "sum of stage medians" "$WORK/out" && ok || bad "bench --stages table"
# in importance mode the table has the backward by stage too: forward ms, share, backward ms, share, ratio
grep -q "^stage  *forward ms  *share  *backward ms  *share  *back/fwd$" "$WORK/out" &&
  grep -Eq "^layer4\.2 +[0-9.]+ +[0-9.]+% +[0-9.]+ +[0-9.]+% +[0-9.]+$" "$WORK/out" && ok || bad "bench --stages backward columns"
grep -q "^medians of the parts: forward (recording the tape) [0-9.]* ms, backward [0-9.]* ms" "$WORK/out" && ok || bad "bench importance parts"
expect 0 "" -- "$ISPLIT" bench --model resnet50 --mode importance --input-size 32 --iters 3 --warmup 0 --json
$PY -c "
import json; d = json.load(open('$WORK/out'))
f, b = d['forward_part_ms'], d['backward_part_ms']
assert 0 < f and 0 < b and f + b <= d['max_ms'] * 1.01 and max(f, b) <= d['median_ms'], d
" && ok || bad "bench importance parts --json"
expect 1 "per-stage" -- "$ISPLIT" bench --model resnet50 --mode train --batch 2 --stages
expect 0 "" -- "$ISPLIT" bench --model resnet50 --mode train --input-size 32 --batch 2 --iters 1 --warmup 0
grep -q "images/s" "$WORK/out" && ok || bad "bench prints no images/s"
expect 1 "at least 2" -- "$ISPLIT" bench --model resnet50 --mode train --batch 1
expect 2 "" -- "$ISPLIT" bench --model resnet50 --mode backward
expect 2 "" -- "$ISPLIT" bench --model resnet50 --backend cuda

# --- the oneDNN backend: bench, predict against PyTorch, eval against the native backend
if [ "$BACKENDS" = onednn ]; then
  expect 0 "" -- "$ISPLIT" bench --model vgg16 --input-size 32 --iters 2 --warmup 0 --backend onednn --json
  $PY -c "
import json; d = json.load(open('$WORK/out'))
assert d['backend'] == 'onednn' and d['mode'] == 'forward' and len(d['times_ms']) == 2, d
assert 0 < d['min_ms'] <= d['median_ms'] <= d['max_ms'] and d['onednn_version'].startswith('2.'), d
" && ok || bad "bench --backend onednn --json"
  expect 0 "" -- "$ISPLIT" bench --model resnet50 --input-size 32 --iters 1 --warmup 0 --backend onednn
  grep -q "oneDNN" "$WORK/out" && ok || bad "bench --backend onednn does not say oneDNN"
  expect 2 "forward" -- "$ISPLIT" bench --model resnet50 --mode importance --backend onednn
  expect 1 "per-stage" -- "$ISPLIT" bench --model resnet50 --backend onednn --stages
  expect 2 "forward" -- "$ISPLIT" bench --model resnet50 --mode train --batch 2 --backend onednn
  expect 0 "" -- "$ISPLIT" predict --model resnet50 --weights "$W" --input-size 64 --backend onednn \
    --logits "$WORK/onednn.csv" "$IMG"
  $PY "$SRC/tools/compare_logits.py" "$WORK/onednn.csv" "$WORK/torch.csv" 1e-4 && ok || bad "oneDNN logits differ from PyTorch"
  if [ -f "$FM" ]; then
    # 70 images in batches of 32: the last batch (6) is padded for the oneDNN network.
    E="$ISPLIT eval --model resnet50 --weights $W --data $FM --input-size 32 --limit 70 --batch 32 --json"
    expect 0 "" -- $E
    cp "$WORK/out" "$WORK/eval_native.json"
    expect 0 "" -- $E --backend onednn
    $PY - "$WORK/eval_native.json" "$WORK/out" <<'PYEOF' && ok || bad "eval --backend onednn differs from native"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a['backend'] == 'native' and b['backend'] == 'onednn', (a['backend'], b['backend'])
assert a['images'] == b['images'] == 70, (a['images'], b['images'])
assert abs(a['loss'] - b['loss']) <= 1e-4 * max(1.0, abs(a['loss'])), (a['loss'], b['loss'])
assert abs(a['top1'] - b['top1']) <= 1 / 70 and abs(a['top5'] - b['top5']) <= 1 / 70, (a, b)
PYEOF
  fi
else
  expect 2 "without oneDNN" -- "$ISPLIT" bench --model resnet50 --backend onednn
  expect 2 "without oneDNN" -- "$ISPLIT" predict --model resnet50 --weights "$W" --backend onednn "$IMG"
fi

summary
