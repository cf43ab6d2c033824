// Writing an analysis: cui.csv, cui_by_class.csv, cui.svg, cui_by_class.svg, report.json.
#pragma once
#include <string>
#include <vector>

#include "engine/safetensors.h"  // write_file_atomic

#include "isplit/analysis/importance.h"

namespace isplit {

// Everything a report needs besides the result itself.
struct ReportContext {
  std::string settings_json;                // the run's settings (object)
  std::string timings_json = "{}";          // object of timings
  std::vector<std::string> class_names;     // by label (may be empty)
  std::vector<int> class_subset;            // --classes (empty: all)
  const CuiResult* all_classes = nullptr;   // curve over all classes when a subset was asked
  int64_t skipped_images = 0;
  std::vector<std::string> skipped_examples;
};

// cui.csv text: layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,candidate.
std::string cui_csv(const CuiResult& r);
// cui_by_class.csv text: label,layer_name,cui.
std::string cui_by_class_csv(const CuiResult& r);
// SVG: log10 CUI with candidates (left axis) and output bytes (CDE, right axis).
std::string cui_svg(const CuiResult& r, const std::string& title, const CuiResult* reference);
// SVG: one log10 CUI curve per class.
std::string cui_by_class_svg(const CuiResult& r, const std::vector<std::string>& class_names,
                             const std::string& title);
// report.json text.
std::string report_json(const CuiResult& r, const ReportContext& ctx);
// Writes all outputs into dir (created if missing); every file atomically.
void write_report(const std::string& dir, const CuiResult& r, const ReportContext& ctx,
                  const std::string& title);

}  // namespace isplit
