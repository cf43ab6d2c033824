#!/usr/bin/env node
// ONNX Runtime (onnxruntime-node, CPU) timing of an exported torchvision model.
//
//   node bench/peers/ort_bench.js --model resnet50 --input-size 224 [--batch 1] [--iters 10]
//        [--warmup 2] [--threads 2] [--check] [--profile]
//
// Loads build/peers/<model>-<size>.onnx (written by export_onnx.py) with intraOpNumThreads
// T, interOpNumThreads 1 and every graph optimisation, times `run` on a random input and
// prints one JSON line. --check instead runs the reference input saved by the export and
// compares the logits with PyTorch's. --profile instead runs with ORT's profiler on and
// prints each node's median kernel time over the timed runs, in graph order (a table to
// set beside `isplit bench --stages`).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..');

// Parses --key value options into an object (flags get true).
function parseArgs(argv) {
  const opts = { model: '', 'input-size': 224, batch: 1, iters: 10, warmup: 2, threads: 2, check: false,
                 profile: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts)) throw new Error(`unknown option ${argv[i]}`);
    if (typeof opts[key] === 'boolean') opts[key] = true;
    else if (typeof opts[key] === 'number') opts[key] = Number(argv[++i]);
    else opts[key] = argv[++i];
  }
  if (opts.model !== 'resnet50' && opts.model !== 'vgg16') throw new Error('--model must be resnet50 or vgg16');
  for (const key of ['input-size', 'batch', 'iters', 'threads']) {
    if (!Number.isInteger(opts[key]) || opts[key] < 1) throw new Error(`--${key} must be a positive integer`);
  }
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw new Error('--warmup must be a non-negative integer');
  return opts;
}

// Returns the median of an array of numbers.
function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

// Reads a raw little-endian float32 file into a Float32Array.
function readF32(file) {
  const buf = fs.readFileSync(file);
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

// Prints the median kernel time of each node over the timed runs of the trace in dir (the
// first `warmup` runs of each node left out), in the order the nodes ran, and their sum.
function printProfile(dir, warmup, iters) {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'));
  if (files.length !== 1) throw new Error(`expected one profile trace in ${dir}, found ${files.length}`);
  const events = JSON.parse(fs.readFileSync(path.join(dir, files[0]), 'utf8'));
  const byNode = new Map();  // insertion order is the order the nodes first ran
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const name = e.name.slice(0, -'_kernel_time'.length);
    if (!byNode.has(name)) byNode.set(name, { op: (e.args && e.args.op_name) || '?', us: [] });
    byNode.get(name).us.push(e.dur);
  }
  if (byNode.size === 0) throw new Error('the profile trace has no node events');
  console.log('| node | op | median ms |');
  console.log('| --- | --- | ---: |');
  let sum = 0;
  for (const [name, v] of byNode) {
    if (v.us.length !== warmup + iters) {
      throw new Error(`node ${name} ran ${v.us.length} times, expected ${warmup + iters}`);
    }
    const m = median(v.us.slice(warmup)) / 1000;
    sum += m;
    console.log(`| ${name} | ${v.op} | ${m.toFixed(3)} |`);
  }
  console.log(`| sum of nodes | | ${sum.toFixed(3)} |`);
}

// Loads the model, then checks it against PyTorch, profiles it or times it.
async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (e) {
    throw new Error('onnxruntime-node is not installed: run bench/peers/setup.sh');
  }
  const size = opts['input-size'];
  const base = path.join(ROOT, 'build', 'peers', `${opts.model}-${size}`);
  if (!fs.existsSync(base + '.onnx')) {
    throw new Error(`build/peers/${opts.model}-${size}.onnx missing: run /usr/bin/python3 bench/peers/export_onnx.py --sizes ${size}`);
  }
  // The profiler writes its trace under a private temporary directory, removed at the end.
  const profDir = opts.profile ? fs.mkdtempSync(path.join(os.tmpdir(), 'ort-profile-')) : '';
  if (profDir) process.on('exit', () => fs.rmSync(profDir, { recursive: true, force: true }));
  const session = await ort.InferenceSession.create(base + '.onnx', {
    intraOpNumThreads: opts.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    executionProviders: ['cpu'],
    ...(opts.profile ? { enableProfiling: true, profileFilePrefix: path.join(profDir, 'trace') } : {}),
  });
  const inName = session.inputNames[0];
  const outName = session.outputNames[0];

  if (opts.check) {
    const x = new ort.Tensor('float32', readF32(base + '.input.f32'), [1, 3, size, size]);
    const got = (await session.run({ [inName]: x }))[outName].data;
    const ref = readF32(base + '.logits.f32');
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < ref.length; i++) {
      diff = Math.max(diff, Math.abs(got[i] - ref[i]));
      scale = Math.max(scale, Math.abs(ref[i]));
    }
    const rel = diff / Math.max(scale, 1e-12);
    console.log(`${opts.model} ${size}x${size}: max |ORT - PyTorch| = ${diff.toPrecision(3)} ` +
                `(max |logit| ${scale.toPrecision(3)}, relative ${rel.toPrecision(2)}) -> ${rel < 1e-4 ? 'OK' : 'MISMATCH'}`);
    process.exitCode = rel < 1e-4 ? 0 : 1;
    return;
  }

  const n = opts.batch * 3 * size * size;
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.random() * 2 - 1;
  const feeds = { [inName]: new ort.Tensor('float32', data, [opts.batch, 3, size, size]) };
  for (let i = 0; i < opts.warmup; i++) await session.run(feeds);
  const ms = [];
  for (let i = 0; i < opts.iters; i++) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const r = (v) => Math.round(v * 1000) / 1000;
  if (opts.profile) {
    session.endProfiling();
    printProfile(profDir, opts.warmup, opts.iters);
    return;
  }
  console.log(JSON.stringify({
    peer: 'ort', model: opts.model, input_size: size, batch: opts.batch,
    median_ms: r(median(ms)), min_ms: r(Math.min(...ms)), max_ms: r(Math.max(...ms)),
    iters: opts.iters, warmup: opts.warmup, threads: opts.threads,
  }));
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
