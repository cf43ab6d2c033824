#include "isplit/analysis/report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace isplit {

namespace {

std::string num(double v, int digits = 17) {
  std::ostringstream os;
  os << std::setprecision(digits) << v;
  return os.str();
}

std::string chw(const Shape& s) { return shape_str(s); }

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

// Plot geometry shared by both figures.
struct Frame {
  double left = 80, right = 90, top = 66, bottom = 130, width = 0, height = 440;
  double plot_w() const { return width - left - right; }
  double plot_h() const { return height - top - bottom; }
};

struct Range {
  double lo = 0, hi = 1;
};

Range finite_range(const std::vector<double>& v) {
  Range r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
  for (double x : v)
    if (std::isfinite(x)) {
      r.lo = std::min(r.lo, x);
      r.hi = std::max(r.hi, x);
    }
  if (!std::isfinite(r.lo)) return {0, 1};
  if (r.hi - r.lo < 1e-9) {
    r.lo -= 0.5;
    r.hi += 0.5;
  }
  const double pad = 0.06 * (r.hi - r.lo);
  return {r.lo - pad, r.hi + pad};
}

// The <svg> element, a white background and the title.
void svg_open(std::ostringstream& os, const Frame& f, const std::string& title) {
  os << "<svg xmlns='http://www.w3.org/2000/svg' width='" << f.width << "' height='" << f.height
     << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  os << "<text x='" << f.width / 2 << "' y='24' text-anchor='middle' font-size='15'>"
     << xml_escape(title) << "</text>\n";
}

void axis_and_labels(std::ostringstream& os, const Frame& f, const CuiResult& r,
                            const Range& y, const std::string& ylabel) {
  const size_t n = r.points.size();
  auto xof = [&](size_t i) { return f.left + (n > 1 ? f.plot_w() * i / (n - 1) : f.plot_w() / 2); };
  os << "<rect x='" << f.left << "' y='" << f.top << "' width='" << f.plot_w() << "' height='"
     << f.plot_h() << "' fill='none' stroke='#444'/>\n";
  // Horizontal grid with log10 ticks.
  const double step = std::max(0.5, std::ceil((y.hi - y.lo) / 8.0 * 2.0) / 2.0);
  for (double t = std::ceil(y.lo / step) * step; t <= y.hi; t += step) {
    const double py = f.top + f.plot_h() * (1 - (t - y.lo) / (y.hi - y.lo));
    os << "<line x1='" << f.left << "' x2='" << f.left + f.plot_w() << "' y1='" << py << "' y2='"
       << py << "' stroke='#ddd'/>\n";
    os << "<text x='" << f.left - 8 << "' y='" << py + 4 << "' text-anchor='end'>" << num(t, 3)
       << "</text>\n";
  }
  for (size_t i = 0; i < n; ++i) {
    const double px = xof(i);
    os << "<line x1='" << px << "' x2='" << px << "' y1='" << f.top + f.plot_h() << "' y2='"
       << f.top + f.plot_h() + 5 << "' stroke='#444'/>\n";
    os << "<text transform='translate(" << px + 4 << "," << f.top + f.plot_h() + 10
       << ") rotate(60)' font-size='11'>" << xml_escape(r.points[i].name) << "</text>\n";
  }
  os << "<text transform='translate(22," << f.top + f.plot_h() / 2
     << ") rotate(-90)' text-anchor='middle'>" << xml_escape(ylabel) << "</text>\n";
}

std::string polyline(const std::vector<double>& v, const Frame& f, const Range& y,
                     const std::string& style) {
  std::ostringstream os;
  const size_t n = v.size();
  std::ostringstream pts;
  bool open = false;
  auto flush = [&] {
    if (open) os << "<polyline fill='none' " << style << " points='" << pts.str() << "'/>\n";
    pts.str("");
    open = false;
  };
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      flush();
      continue;
    }
    const double px = f.left + (n > 1 ? f.plot_w() * i / (n - 1) : f.plot_w() / 2);
    const double py = f.top + f.plot_h() * (1 - (v[i] - y.lo) / (y.hi - y.lo));
    pts << px << "," << py << " ";
    open = true;
  }
  flush();
  return os.str();
}

std::vector<double> logs_of(const std::vector<double>& cui) {
  std::vector<double> l;
  for (double c : cui) l.push_back(log10_cui(c));
  return l;
}

std::vector<double> cuis_of(const CuiResult& r) {
  std::vector<double> c;
  for (const auto& p : r.points) c.push_back(p.cui);
  return c;
}

}  // namespace

std::string cui_csv(const CuiResult& r) {
  std::ostringstream os;
  os << "layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,candidate\n";
  for (size_t i = 0; i < r.points.size(); ++i) {
    const CuiPoint& p = r.points[i];
    os << i << "," << p.name << "," << chw(p.shape) << "," << p.out_bytes << "," << num(p.cui)
       << ",";
    if (p.cui > 0) os << num(std::log10(p.cui));  // a zero CUI has no logarithm: left empty
    os << "," << (p.candidate ? 1 : 0) << "\n";
  }
  return os.str();
}

std::string cui_by_class_csv(const CuiResult& r) {
  std::ostringstream os;
  os << "label,layer_name,cui\n";
  for (const auto& [label, cuis] : r.cui_by_class)
    for (size_t i = 0; i < cuis.size(); ++i)
      os << label << "," << r.points[i].name << "," << num(cuis[i]) << "\n";
  return os.str();
}

std::string cui_svg(const CuiResult& r, const std::string& title, const CuiResult* reference) {
  Frame f;
  f.width = std::max(720.0, 48.0 * r.points.size() + f.left + f.right);
  const std::vector<double> logs = logs_of(cuis_of(r));
  std::vector<double> all = logs;
  std::vector<double> ref_logs;
  if (reference) {
    ref_logs = logs_of(cuis_of(*reference));
    all.insert(all.end(), ref_logs.begin(), ref_logs.end());
  }
  const Range y = finite_range(all);
  std::vector<double> bytes;
  for (const auto& p : r.points) bytes.push_back(std::log10(double(p.out_bytes)));
  const Range yb = finite_range(bytes);
  std::ostringstream os;
  svg_open(os, f, title);
  axis_and_labels(os, f, r, y, "log10 CUI");
  // CDE: output size per point on the right axis (log scale).
  os << polyline(bytes, f, yb, "stroke='#999' stroke-dasharray='5,4' stroke-width='1.5'");
  std::vector<double> ticks;
  for (double d = std::floor(yb.lo); d <= std::ceil(yb.hi); d += 1.0)
    for (double m : {1.0, 2.0, 5.0}) {
      const double t = d + std::log10(m);
      if (t >= yb.lo && t <= yb.hi) ticks.push_back(t);
    }
  for (double t : ticks) {
    const double py = f.top + f.plot_h() * (1 - (t - yb.lo) / (yb.hi - yb.lo));
    const double v = std::pow(10.0, t);
    const char* unit = v >= 1e6 ? " MB" : v >= 1e3 ? " kB" : " B";
    const double shown = v >= 1e6 ? v / 1e6 : v >= 1e3 ? v / 1e3 : v;
    os << "<text x='" << f.left + f.plot_w() + 8 << "' y='" << py + 4 << "' fill='#777'>"
       << num(shown, 3) << unit << "</text>\n";
  }
  os << "<text transform='translate(" << f.width - 18 << "," << f.top + f.plot_h() / 2
     << ") rotate(90)' text-anchor='middle' fill='#777'>output size (CDE)</text>\n";
  if (reference)
    os << polyline(ref_logs, f, y, "stroke='#9ecae1' stroke-width='2'");
  os << polyline(logs, f, y, "stroke='#08519c' stroke-width='2.5'");
  const size_t n = r.points.size();
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(logs[i])) continue;
    const double px = f.left + (n > 1 ? f.plot_w() * i / (n - 1) : f.plot_w() / 2);
    const double py = f.top + f.plot_h() * (1 - (logs[i] - y.lo) / (y.hi - y.lo));
    if (r.points[i].candidate) {
      const bool best = static_cast<int>(i) == r.global_max;
      os << "<circle cx='" << px << "' cy='" << py << "' r='" << (best ? 7 : 5.5)
         << "' fill='" << (best ? "#d62728" : "#ff7f0e") << "' stroke='black'><title>"
         << xml_escape(r.points[i].name) << (best ? " (global maximum)" : " (candidate)")
         << "</title></circle>\n";
    } else {
      os << "<circle cx='" << px << "' cy='" << py << "' r='2.5' fill='#08519c'/>\n";
    }
  }
  // Legend: one row between the title and the plot, clear of the curves.
  const double ly = 46;
  double lx = f.left;
  os << "<g font-size='11'>\n";
  os << "<line x1='" << lx << "' x2='" << lx + 24 << "' y1='" << ly << "' y2='" << ly
     << "' stroke='#08519c' stroke-width='2.5'/><text x='" << lx + 30 << "' y='" << ly + 4
     << "'>log10 CUI</text>\n";
  lx += 110;
  os << "<circle cx='" << lx + 8 << "' cy='" << ly << "' r='5' fill='#ff7f0e' stroke='black'/>"
     << "<text x='" << lx + 18 << "' y='" << ly + 4 << "'>candidate</text>\n";
  lx += 95;
  os << "<circle cx='" << lx + 8 << "' cy='" << ly << "' r='6' fill='#d62728' stroke='black'/>"
     << "<text x='" << lx + 18 << "' y='" << ly + 4 << "'>global maximum</text>\n";
  lx += 125;
  os << "<line x1='" << lx << "' x2='" << lx + 24 << "' y1='" << ly << "' y2='" << ly
     << "' stroke='#999' stroke-dasharray='5,4'/><text x='" << lx + 30 << "' y='" << ly + 4
     << "'>output bytes (CDE), right axis</text>\n";
  lx += 200;
  if (reference)
    os << "<line x1='" << lx << "' x2='" << lx + 24 << "' y1='" << ly << "' y2='" << ly
       << "' stroke='#9ecae1' stroke-width='2'/><text x='" << lx + 30 << "' y='" << ly + 4
       << "'>all classes</text>\n";
  os << "</g>\n</svg>\n";
  return os.str();
}

std::string cui_by_class_svg(const CuiResult& r, const std::vector<std::string>& class_names,
                             const std::string& title) {
  Frame f;
  f.width = std::max(720.0, 48.0 * r.points.size() + f.left + f.right + 120);
  f.right += 120;
  std::vector<double> all;
  for (const auto& [label, cuis] : r.cui_by_class) {
    auto l = logs_of(cuis);
    all.insert(all.end(), l.begin(), l.end());
  }
  const Range y = finite_range(all);
  static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::ostringstream os;
  svg_open(os, f, title);
  axis_and_labels(os, f, r, y, "log10 CUI per class");
  int k = 0;
  for (const auto& [label, cuis] : r.cui_by_class) {
    const std::string color = palette[k % 10];
    os << polyline(logs_of(cuis), f, y, "stroke='" + color + "' stroke-width='1.6'");
    const std::string name = label >= 0 && label < static_cast<int>(class_names.size())
                                 ? class_names[label]
                                 : std::to_string(label);
    if (k < 30) {
      const double ly = f.top + 14 * k + 8;
      os << "<line x1='" << f.width - f.right + 40 << "' x2='" << f.width - f.right + 60
         << "' y1='" << ly << "' y2='" << ly << "' stroke='" << color
         << "' stroke-width='2'/><text x='" << f.width - f.right + 64 << "' y='" << ly + 4
         << "' font-size='11'>" << xml_escape(name) << "</text>\n";
    }
    ++k;
  }
  os << "</svg>\n";
  return os.str();
}

std::string report_json(const CuiResult& r, const ReportContext& ctx) {
  using nlohmann::json;
  json j;
  j["settings"] = json::parse(ctx.settings_json);
  j["timings"] = json::parse(ctx.timings_json);
  j["images"] = r.images;
  j["skipped_images"] = ctx.skipped_images;
  j["skipped_examples"] = ctx.skipped_examples;
  json pts = json::array();
  for (size_t i = 0; i < r.points.size(); ++i) {
    const auto& p = r.points[i];
    json o = {{"layer_index", i}, {"layer_name", p.name}, {"out_shape", chw(p.shape)},
              {"out_bytes", p.out_bytes}, {"cui", p.cui}, {"candidate", p.candidate}};
    o["log10_cui"] = p.cui > 0 ? json(std::log10(p.cui)) : json(nullptr);
    pts.push_back(o);
  }
  j["points"] = pts;
  json cands = json::array();
  for (const auto& p : r.points)
    if (p.candidate) cands.push_back(p.name);
  j["candidates"] = cands;
  j["global_maximum"] = r.global_max >= 0 ? json(r.points[r.global_max].name) : json(nullptr);
  // CDE baseline: the cut points ordered by how little they would send.
  std::vector<size_t> order(r.points.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return r.points[a].out_bytes < r.points[b].out_bytes;
  });
  json cde = json::array();
  for (size_t i : order) cde.push_back({{"layer_name", r.points[i].name}, {"out_bytes", r.points[i].out_bytes}});
  j["cde_by_size"] = cde;
  json by_class = json::object();
  for (const auto& [label, cuis] : r.cui_by_class) {
    json c;
    c["images"] = r.images_by_class.at(label);
    if (label >= 0 && label < static_cast<int>(ctx.class_names.size()))
      c["name"] = ctx.class_names[label];
    c["cui"] = cuis;
    json cc = json::array();
    const auto& flags = r.candidates_by_class.at(label);
    for (size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) cc.push_back(r.points[i].name);
    c["candidates"] = cc;
    by_class[std::to_string(label)] = c;
  }
  j["by_class"] = by_class;
  if (!ctx.class_subset.empty()) {
    j["class_subset"] = ctx.class_subset;
    if (ctx.all_classes) {
      json all = json::array(), moved = json::object();
      std::vector<std::string> before, after;
      for (const auto& p : ctx.all_classes->points)
        if (p.candidate) before.push_back(p.name);
      for (const auto& p : r.points)
        if (p.candidate) after.push_back(p.name);
      std::vector<std::string> added, removed;
      for (const auto& n : after)
        if (std::find(before.begin(), before.end(), n) == before.end()) added.push_back(n);
      for (const auto& n : before)
        if (std::find(after.begin(), after.end(), n) == after.end()) removed.push_back(n);
      moved["all_classes_candidates"] = before;
      moved["subset_candidates"] = after;
      moved["added"] = added;
      moved["removed"] = removed;
      moved["all_classes_global_maximum"] =
          ctx.all_classes->global_max >= 0
              ? json(ctx.all_classes->points[ctx.all_classes->global_max].name)
              : json(nullptr);
      j["candidates_vs_all_classes"] = moved;
    }
  }
  return j.dump(2) + "\n";
}

void write_report(const std::string& dir, const CuiResult& r, const ReportContext& ctx,
                  const std::string& title) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create directory (" + ec.message() + ")");
  write_file_atomic(dir + "/cui.csv", cui_csv(r));
  write_file_atomic(dir + "/cui_by_class.csv", cui_by_class_csv(r));
  write_file_atomic(dir + "/cui.svg", cui_svg(r, title, ctx.all_classes));
  write_file_atomic(dir + "/cui_by_class.svg", cui_by_class_svg(r, ctx.class_names, title + ", per class"));
  write_file_atomic(dir + "/report.json", report_json(r, ctx));
}

}  // namespace isplit
