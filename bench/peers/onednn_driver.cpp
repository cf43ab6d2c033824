// onednn_driver: torchvision's ResNet-50 and VGG16 (inference) built from oneDNN 2.x
// primitives, used as a peer for `isplit bench --mode forward`.
//
// BatchNorm is folded into the convolution weights and bias; ReLU and the residual add
// (sum post-op, then ReLU) are fused into the convolutions as post-ops; convolution
// activations and weights use format_tag::any so oneDNN picks its blocked layouts, and
// every weight is reordered once, before timing. A timed pass starts from the plain NCHW
// input and ends with the logits.
//
//   onednn_driver --model resnet50 --input-size 224 [--batch 1] [--iters 10] [--warmup 2]
//                 [--threads T] [--weights FILE] [--input FILE] [--logits-out FILE] [--verbose]
//
// Weights without --weights are random (He-uniform, deterministic). The --weights file is
// written by check_onednn.py: magic "ISPLITW1", u32 count, then per tensor u32 name length,
// name, u32 ndim, i64 dims, float32 data (little endian), with torchvision state_dict names.
// Prints one JSON line on stdout; --verbose lists every layer on stderr.

#include <dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

// A named float tensor read from a weights file.
struct HostTensor {
    std::vector<int64_t> dims;
    std::vector<float> data;
};

// One executable step of the network: a primitive with its arguments or a host function.
struct Step {
    primitive prim;
    std::unordered_map<int, memory> args;
    std::function<void()> host;
};

// What --verbose prints about one layer.
struct LayerInfo {
    std::string name, kind, layout;
    memory::dims out;
    double flops;
};

// State of a splitmix64 pseudo-random sequence.
struct Rng {
    uint64_t state;
};

// The network under construction and then under execution.
struct Net {
    engine eng{engine::kind::cpu, 0};
    stream strm{eng};
    std::vector<Step> steps;
    std::vector<LayerInfo> layers;
    std::map<std::string, HostTensor> weights;  // empty: random weights
    Rng rng{0x9E3779B97F4A7C15ull};
    int reorders = 0;  // activation reorders inserted into the timed pass
};

// Returns the next pseudo-random number in [0, 1) (splitmix64).
float next_uniform(Rng& rng) {
    uint64_t z = (rng.state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return float(z >> 40) / float(1ull << 24);
}

// Fills v with uniform values in [-a, a].
void fill_uniform(Rng& rng, std::vector<float>& v, float a) {
    for (auto& x : v) x = (2.f * next_uniform(rng) - 1.f) * a;
}

// Multiplies the entries of a dims vector.
int64_t numel(const memory::dims& d) {
    int64_t n = 1;
    for (auto x : d) n *= x;
    return n;
}

// Formats dims as "1x64x56x56".
std::string dims_str(const memory::dims& d) {
    std::string s;
    for (size_t i = 0; i < d.size(); ++i) s += (i ? "x" : "") + std::to_string(d[i]);
    return s;
}

// Describes a memory layout: plain strides order plus inner blocks, e.g. "abcd" or "abcd:1b16".
std::string layout_str(const memory::desc& md) {
    const auto& b = md.data.format_desc.blocking;
    int nd = md.data.ndims;
    std::vector<int> order(nd);
    for (int i = 0; i < nd; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](int x, int y) { return b.strides[x] > b.strides[y]; });
    std::string s;
    for (int i : order) s += char('a' + i);
    for (int i = 0; i < b.inner_nblks; ++i)
        s += (i ? "" : ":") + std::to_string(b.inner_blks[i]) + char('a' + b.inner_idxs[i]);
    return s;
}

// Reads the weights file written by check_onednn.py into net.weights.
void load_weights(Net& net, const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open weights file " + path);
    char magic[8];
    f.read(magic, 8);
    if (!f || std::memcmp(magic, "ISPLITW1", 8) != 0)
        throw std::runtime_error(path + ": not an ISPLITW1 weights file");
    uint32_t count = 0;
    f.read(reinterpret_cast<char*>(&count), 4);
    for (uint32_t t = 0; t < count && f; ++t) {
        uint32_t len = 0, nd = 0;
        f.read(reinterpret_cast<char*>(&len), 4);
        std::string name(len, '\0');
        f.read(&name[0], len);
        f.read(reinterpret_cast<char*>(&nd), 4);
        HostTensor ht;
        ht.dims.resize(nd);
        f.read(reinterpret_cast<char*>(ht.dims.data()), 8 * nd);
        int64_t n = 1;
        for (auto d : ht.dims) n *= d;
        ht.data.resize(size_t(n));
        f.read(reinterpret_cast<char*>(ht.data.data()), 4 * n);
        net.weights[name] = std::move(ht);
    }
    if (!f) throw std::runtime_error(path + ": truncated");
}

// Returns the named tensor from the weights file, checking its element count.
const std::vector<float>& get_weight(Net& net, const std::string& name, int64_t expect) {
    auto it = net.weights.find(name);
    if (it == net.weights.end()) throw std::runtime_error("weights file lacks " + name);
    if (int64_t(it->second.data.size()) != expect)
        throw std::runtime_error(name + ": expected " + std::to_string(expect) + " values, file has " +
                                 std::to_string(it->second.data.size()));
    return it->second.data;
}

// Creates a memory of the given descriptor and copies host data into it (plain layouts only).
memory host_memory(Net& net, const memory::desc& md, const std::vector<float>& v) {
    memory m(md, net.eng);
    std::memcpy(m.get_data_handle(), v.data(), v.size() * sizeof(float));
    return m;
}

// Reorders a plain user weight memory into the layout a primitive wants, once.
memory prepare_weights(Net& net, const memory& user, const memory::desc& want) {
    if (user.get_desc() == want) return user;
    memory m(want, net.eng);
    memory from = user;
    reorder(from, m).execute(net.strm, from, m);
    net.strm.wait();
    return m;
}

// Adds a timed reorder of src into layout want and returns the reordered memory.
memory add_reorder(Net& net, const memory& src, const memory::desc& want, const std::string& name) {
    memory dst(want, net.eng);
    net.steps.push_back({reorder(src, dst), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}}, {}});
    net.layers.push_back({name, "reorder", layout_str(want), want.dims(), 0.0});
    ++net.reorders;
    return dst;
}

// Convolution k x k (stride, pad) with folded BatchNorm `bn` (or the conv's own bias when
// bn is empty), optional fused ReLU and optional fused residual add (sum, then ReLU).
memory conv(Net& net, const memory& src, const std::string& name, const std::string& bn, int oc,
            int k, int stride, int pad, bool relu, const memory* residual = nullptr) {
    memory::dims sd = src.get_desc().dims();
    int64_t n = sd[0], ic = sd[1], h = sd[2], w = sd[3];
    int64_t oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    memory::dims wd{oc, ic, k, k}, bd{oc}, dd{n, oc, oh, ow};

    // Host weights: from the file with BatchNorm folded, or random He-uniform.
    std::vector<float> wv(size_t(numel(wd))), bv(size_t(oc), 0.f);
    if (!net.weights.empty()) {
        wv = get_weight(net, name + ".weight", numel(wd));
        if (!bn.empty()) {
            const auto& g = get_weight(net, bn + ".weight", oc);
            const auto& be = get_weight(net, bn + ".bias", oc);
            const auto& mu = get_weight(net, bn + ".running_mean", oc);
            const auto& var = get_weight(net, bn + ".running_var", oc);
            int64_t per = ic * k * k;
            for (int64_t o = 0; o < oc; ++o) {
                float s = g[o] / std::sqrt(var[o] + 1e-5f);
                for (int64_t j = 0; j < per; ++j) wv[o * per + j] *= s;
                bv[o] = be[o] - mu[o] * s;
            }
        } else {
            bv = get_weight(net, name + ".bias", oc);
        }
    } else {
        fill_uniform(net.rng, wv, std::sqrt(6.f / float(ic * k * k)));
        fill_uniform(net.rng, bv, 0.01f);
    }

    post_ops po;
    if (residual) {
        po.append_sum(1.f);
        po.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
    } else if (relu) {
        po.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
    }
    primitive_attr attr;
    attr.set_post_ops(po);
    convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct,
                                memory::desc(sd, dt::f32, tag::any), memory::desc(wd, dt::f32, tag::any),
                                memory::desc(bd, dt::f32, tag::x), memory::desc(dd, dt::f32, tag::any),
                                {stride, stride}, {pad, pad}, {pad, pad});
    convolution_forward::primitive_desc pd(d, attr, net.eng);

    memory in = src;
    if (src.get_desc() != pd.src_desc()) in = add_reorder(net, src, pd.src_desc(), name + ".src_reorder");
    memory wm = prepare_weights(net, host_memory(net, memory::desc(wd, dt::f32, tag::oihw), wv), pd.weights_desc());
    memory bm = host_memory(net, memory::desc(bd, dt::f32, tag::x), bv);

    memory out;
    if (residual) {
        // The sum post-op accumulates into dst, so dst is the shortcut's memory (in place).
        if (residual->get_desc() == pd.dst_desc())
            out = *residual;
        else
            out = add_reorder(net, *residual, pd.dst_desc(), name + ".residual_reorder");
    } else {
        out = memory(pd.dst_desc(), net.eng);
    }
    net.steps.push_back({convolution_forward(pd),
                         {{DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, out}},
                         {}});
    std::string kind = "conv" + std::to_string(k) + "x" + std::to_string(k) + "/s" + std::to_string(stride) +
                       (residual ? "+add+relu" : relu ? "+relu" : "");
    net.layers.push_back({name, kind, layout_str(pd.dst_desc()), dd, 2.0 * double(numel(dd)) * double(ic * k * k)});
    return out;
}

// Max or average pooling k x k (stride, pad); average excludes padding (there is none here).
memory pool(Net& net, const memory& src, const std::string& name, bool is_max, int kh, int kw, int stride,
            int pad) {
    memory::dims sd = src.get_desc().dims();
    int64_t oh = (sd[2] + 2 * pad - kh) / stride + 1, ow = (sd[3] + 2 * pad - kw) / stride + 1;
    memory::dims dd{sd[0], sd[1], oh, ow};
    pooling_forward::desc d(prop_kind::forward_inference,
                            is_max ? algorithm::pooling_max : algorithm::pooling_avg_exclude_padding,
                            src.get_desc(), memory::desc(dd, dt::f32, tag::any), {stride, stride}, {kh, kw},
                            {pad, pad}, {pad, pad});
    pooling_forward::primitive_desc pd(d, net.eng);
    memory out(pd.dst_desc(), net.eng);
    net.steps.push_back({pooling_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, out}}, {}});
    net.layers.push_back({name, is_max ? "maxpool" : "avgpool", layout_str(pd.dst_desc()), dd, 0.0});
    return out;
}

// torchvision's AdaptiveAvgPool2d((o, o)) on any input size, by hand on NCHW data with
// PyTorch's bins [floor(i*H/o), ceil((i+1)*H/o)); the identity when the input is o x o.
memory adaptive_avg_pool(Net& net, const memory& src, const std::string& name, int o) {
    memory::dims sd = src.get_desc().dims();
    if (sd[2] == o && sd[3] == o) return src;
    memory plain = src;
    memory::desc nchw(sd, dt::f32, tag::nchw);
    if (src.get_desc() != nchw) plain = add_reorder(net, src, nchw, name + ".to_nchw");
    memory::dims dd{sd[0], sd[1], o, o};
    memory out(memory::desc(dd, dt::f32, tag::nchw), net.eng);
    int64_t planes = sd[0] * sd[1], h = sd[2], w = sd[3];
    net.steps.push_back({primitive(), {}, [plain, out, planes, h, w, o]() {
                             const float* x = static_cast<const float*>(plain.get_data_handle());
                             float* y = static_cast<float*>(out.get_data_handle());
                             for (int64_t p = 0; p < planes; ++p)
                                 for (int64_t i = 0; i < o; ++i) {
                                     int64_t h0 = i * h / o, h1 = ((i + 1) * h + o - 1) / o;
                                     for (int64_t j = 0; j < o; ++j) {
                                         int64_t w0 = j * w / o, w1 = ((j + 1) * w + o - 1) / o;
                                         float s = 0.f;
                                         for (int64_t a = h0; a < h1; ++a)
                                             for (int64_t b = w0; b < w1; ++b) s += x[(p * h + a) * w + b];
                                         y[(p * o + i) * o + j] = s / float((h1 - h0) * (w1 - w0));
                                     }
                                 }
                         }});
    net.layers.push_back({name, "adaptive_avgpool(host)", "abcd", dd, 0.0});
    return out;
}

// Fully connected layer on a 4D (N,C,H,W, flattened as PyTorch does) or 2D input.
memory fc(Net& net, const memory& src, const std::string& name, int out_features, bool relu) {
    memory::desc smd = src.get_desc();
    memory::dims sd = smd.dims();
    int64_t in_features = numel(sd) / sd[0];
    memory::dims wd = sd;
    wd[0] = out_features;
    memory::dims bd{out_features}, dd{sd[0], out_features};
    std::vector<float> wv(size_t(out_features * in_features)), bv(size_t(out_features), 0.f);
    if (!net.weights.empty()) {
        wv = get_weight(net, name + ".weight", out_features * in_features);
        bv = get_weight(net, name + ".bias", out_features);
    } else {
        fill_uniform(net.rng, wv, std::sqrt(6.f / float(in_features)));
        fill_uniform(net.rng, bv, 0.01f);
    }
    post_ops po;
    if (relu) po.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
    primitive_attr attr;
    attr.set_post_ops(po);
    inner_product_forward::desc d(prop_kind::forward_inference, smd, memory::desc(wd, dt::f32, tag::any),
                                  memory::desc(bd, dt::f32, tag::x), memory::desc(dd, dt::f32, tag::any));
    inner_product_forward::primitive_desc pd(d, attr, net.eng);
    memory in = src;
    if (smd != pd.src_desc()) in = add_reorder(net, src, pd.src_desc(), name + ".src_reorder");
    tag wtag = sd.size() == 4 ? tag::oihw : tag::oi;
    memory wm = prepare_weights(net, host_memory(net, memory::desc(wd, dt::f32, wtag), wv), pd.weights_desc());
    memory bm = host_memory(net, memory::desc(bd, dt::f32, tag::x), bv);
    memory out(pd.dst_desc(), net.eng);
    net.steps.push_back({inner_product_forward(pd),
                         {{DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, out}},
                         {}});
    net.layers.push_back({name, relu ? "fc+relu" : "fc", layout_str(pd.dst_desc()), dd,
                          2.0 * double(sd[0]) * double(in_features) * double(out_features)});
    return out;
}

// One torchvision Bottleneck (v1.5: the stride sits on the 3x3 convolution).
memory bottleneck(Net& net, const memory& x, const std::string& p, int width, int stride, bool downsample) {
    memory y = conv(net, x, p + ".conv1", p + ".bn1", width, 1, 1, 0, true);
    y = conv(net, y, p + ".conv2", p + ".bn2", width, 3, stride, 1, true);
    memory shortcut = x;
    if (downsample) shortcut = conv(net, x, p + ".downsample.0", p + ".downsample.1", width * 4, 1, stride, 0, false);
    return conv(net, y, p + ".conv3", p + ".bn3", width * 4, 1, 1, 0, true, &shortcut);
}

// torchvision resnet50(): stem, four stages of bottlenecks (3, 4, 6, 3), global average pool, fc.
memory build_resnet50(Net& net, const memory& x, int classes) {
    memory y = conv(net, x, "conv1", "bn1", 64, 7, 2, 3, true);
    y = pool(net, y, "maxpool", true, 3, 3, 2, 1);
    const int blocks[4] = {3, 4, 6, 3}, widths[4] = {64, 128, 256, 512};
    for (int s = 0; s < 4; ++s)
        for (int b = 0; b < blocks[s]; ++b)
            y = bottleneck(net, y, "layer" + std::to_string(s + 1) + "." + std::to_string(b), widths[s],
                           (b == 0 && s > 0) ? 2 : 1, b == 0);
    memory::dims d = y.get_desc().dims();
    y = pool(net, y, "avgpool", false, int(d[2]), int(d[3]), 1, 0);
    return fc(net, y, "fc", classes, false);
}

// torchvision vgg16(): 13 conv+ReLU with 5 max pools, AdaptiveAvgPool2d(7), three fc layers.
memory build_vgg16(Net& net, const memory& x, int classes) {
    const int cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
    memory y = x;
    int idx = 0;
    for (int c : cfg) {
        if (c == 0) {
            y = pool(net, y, "features." + std::to_string(idx), true, 2, 2, 2, 0);
            idx += 1;
        } else {
            y = conv(net, y, "features." + std::to_string(idx), "", c, 3, 1, 1, true);
            idx += 2;
        }
    }
    y = adaptive_avg_pool(net, y, "avgpool", 7);
    y = fc(net, y, "classifier.0", 4096, true);
    y = fc(net, y, "classifier.3", 4096, true);
    return fc(net, y, "classifier.6", classes, false);
}

// Runs every step once and waits for the stream.
void run_pass(Net& net) {
    for (auto& s : net.steps) {
        if (s.host) {
            net.strm.wait();
            s.host();
        } else {
            s.prim.execute(net.strm, s.args);
        }
    }
    net.strm.wait();
}

// Prints usage and exits with status 2.
[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "error: %s\nusage: onednn_driver --model resnet50|vgg16 [--input-size 224] [--batch 1] "
                 "[--iters 10] [--warmup 2] [--threads T] [--num-classes 1000] [--weights FILE] "
                 "[--input FILE] [--logits-out FILE] [--verbose]\n",
                 msg);
    std::exit(2);
}

}  // namespace

// Parses options, builds the network, times it and prints one JSON line.
int main(int argc, char** argv) {
    std::string model, weights_path, input_path, logits_path;
    int size = 224, batch = 1, iters = 10, warmup = 2, threads = 0, classes = 1000;
    bool verbose = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        // Returns the value following the current option (exits on a missing one).
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--model") model = val();
        else if (a == "--input-size") size = std::atoi(val().c_str());
        else if (a == "--batch") batch = std::atoi(val().c_str());
        else if (a == "--iters") iters = std::atoi(val().c_str());
        else if (a == "--warmup") warmup = std::atoi(val().c_str());
        else if (a == "--threads") threads = std::atoi(val().c_str());
        else if (a == "--num-classes") classes = std::atoi(val().c_str());
        else if (a == "--weights") weights_path = val();
        else if (a == "--input") input_path = val();
        else if (a == "--logits-out") logits_path = val();
        else if (a == "--verbose") verbose = true;
        else if (a == "--help" || a == "-h") usage("help");
        else usage(("unknown option " + a).c_str());
    }
    if (model != "resnet50" && model != "vgg16") usage("--model must be resnet50 or vgg16");
    if (size < 32 || batch < 1 || iters < 1 || warmup < 0 || classes < 1) usage("bad numeric option");
    if (threads > 0) omp_set_num_threads(threads);

    try {
        Net net;
        if (!weights_path.empty()) load_weights(net, weights_path);

        // Input: plain NCHW float32, from a file or deterministic uniform [-1, 1].
        memory::dims xd{batch, 3, size, size};
        std::vector<float> xv(size_t(numel(xd)));
        if (!input_path.empty()) {
            std::ifstream f(input_path, std::ios::binary);
            f.read(reinterpret_cast<char*>(xv.data()), std::streamsize(xv.size() * 4));
            if (!f) throw std::runtime_error("cannot read " + std::to_string(xv.size()) + " floats from " + input_path);
        } else {
            Rng input_rng{12345};  // its own sequence, so the weights do not depend on the input
            fill_uniform(input_rng, xv, 1.f);
        }
        memory x = host_memory(net, memory::desc(xd, dt::f32, tag::nchw), xv);
        memory y = model == "resnet50" ? build_resnet50(net, x, classes) : build_vgg16(net, x, classes);
        net.weights.clear();  // host copies no longer needed

        for (int i = 0; i < warmup; ++i) run_pass(net);
        std::vector<double> ms;
        for (int i = 0; i < iters; ++i) {
            auto t0 = std::chrono::steady_clock::now();
            run_pass(net);
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }

        // Logits to plain NC for checking and dumping.
        memory logits(memory::desc({batch, classes}, dt::f32, tag::nc), net.eng);
        reorder(y, logits).execute(net.strm, y, logits);
        net.strm.wait();
        const float* lp = static_cast<const float*>(logits.get_data_handle());
        bool finite = true;
        double sum = 0;
        for (int64_t i = 0; i < int64_t(batch) * classes; ++i) {
            finite = finite && std::isfinite(lp[i]);
            sum += lp[i];
        }
        if (!logits_path.empty()) {
            std::ofstream f(logits_path, std::ios::binary);
            f.write(reinterpret_cast<const char*>(lp), std::streamsize(sizeof(float) * batch * classes));
        }

        int convs = 0, fcs = 0, pools = 0;
        double flops = 0;
        for (const auto& l : net.layers) {
            convs += l.kind.rfind("conv", 0) == 0;
            fcs += l.kind.rfind("fc", 0) == 0;
            pools += l.kind.find("pool") != std::string::npos;
            flops += l.flops;
        }
        if (verbose) {
            std::fprintf(stderr, "oneDNN %d.%d.%d, OpenMP max threads %d\n", dnnl_version()->major,
                         dnnl_version()->minor, dnnl_version()->patch, omp_get_max_threads());
            std::fprintf(stderr, "%-4s %-28s %-22s %-16s %-14s %10s\n", "#", "layer", "op", "output", "layout",
                         "MFLOPs");
            for (size_t i = 0; i < net.layers.size(); ++i) {
                const auto& l = net.layers[i];
                std::fprintf(stderr, "%-4zu %-28s %-22s %-16s %-14s %10.1f\n", i, l.name.c_str(), l.kind.c_str(),
                             dims_str(l.out).c_str(), l.layout.c_str(), l.flops / 1e6);
            }
            int64_t top = std::max_element(lp, lp + classes) - lp;
            std::fprintf(stderr,
                         "%d conv, %d fc, %d pool layers, %d activation reorders; %.3f GFLOPs per pass "
                         "(2 x multiply-adds)\nlogits %dx%d, sum %.6g, top-1 of image 0: class %lld (%.6g)\n",
                         convs, fcs, pools, net.reorders, flops / 1e9, batch, classes, sum, (long long)top,
                         lp[top]);
        }
        std::vector<double> sorted = ms;
        std::sort(sorted.begin(), sorted.end());
        size_t n = sorted.size();
        double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        std::printf("{\"peer\":\"onednn\",\"model\":\"%s\",\"input_size\":%d,\"batch\":%d,\"median_ms\":%.3f,"
                    "\"min_ms\":%.3f,\"max_ms\":%.3f,\"iters\":%d,\"warmup\":%d,\"threads\":%d,\"gflops\":%.4f,"
                    "\"conv_layers\":%d,\"fc_layers\":%d,\"logits_finite\":%s}\n",
                    model.c_str(), size, batch, median, sorted.front(), sorted.back(), iters, warmup,
                    omp_get_max_threads(), flops / 1e9, convs, fcs, finite ? "true" : "false");
        if (!finite) {
            std::fprintf(stderr, "error: logits are not finite\n");
            return 1;
        }
    } catch (const dnnl::error& e) {
        std::fprintf(stderr, "error: oneDNN: %s (status %d)\n", e.what(), int(e.status));
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
