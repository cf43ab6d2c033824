#include "isplit/analysis/cam.h"

#include <algorithm>

#include "engine/tensor.h"

namespace isplit {

CamMethod parse_cam_method(const std::string& name) {
  if (name == "gradcam") return CamMethod::GradCam;
  if (name == "gradcam++") return CamMethod::GradCamPlusPlus;
  if (name == "layercam") return CamMethod::LayerCam;
  if (name == "xgradcam") return CamMethod::XGradCam;
  throw Error("unknown importance method '" + name +
              "' (expected gradcam, gradcam++, layercam or xgradcam)");
}

std::string cam_method_name(CamMethod method) {
  switch (method) {
    case CamMethod::GradCam: return "gradcam";
    case CamMethod::GradCamPlusPlus: return "gradcam++";
    case CamMethod::LayerCam: return "layercam";
    case CamMethod::XGradCam: return "xgradcam";
  }
  return "unknown";
}

void cam_map(CamMethod method, const float* a, const float* g, int64_t channels, int64_t hw,
             double* map, std::vector<double>& w) {
  std::fill(map, map + hw, 0.0);
  if (method == CamMethod::LayerCam) {
    // Elementwise: positive gradients weight the activation at each position.
    for (int64_t c = 0; c < channels; ++c) {
      const float* ac = a + c * hw;
      const float* gc = g + c * hw;
      for (int64_t i = 0; i < hw; ++i) map[i] += double(std::max(gc[i], 0.0f)) * ac[i];
    }
  } else {
    w.assign(static_cast<size_t>(channels), 0.0);
    for (int64_t c = 0; c < channels; ++c) {
      const float* ac = a + c * hw;
      const float* gc = g + c * hw;
      double wc = 0.0;
      switch (method) {
        case CamMethod::GradCam: {
          for (int64_t i = 0; i < hw; ++i) wc += gc[i];
          wc /= double(hw);
          break;
        }
        case CamMethod::GradCamPlusPlus: {
          // alpha = G^2 / (2 G^2 + sum_hw(A) G^3), with the exponential-score
          // simplification of the paper's closed form (as in pytorch-grad-cam).
          double sum_a = 0.0;
          for (int64_t i = 0; i < hw; ++i) sum_a += ac[i];
          for (int64_t i = 0; i < hw; ++i) {
            const double g1 = gc[i], g2 = g1 * g1, g3 = g2 * g1;
            const double den = 2.0 * g2 + sum_a * g3;
            const double alpha = den != 0.0 ? g2 / den : 0.0;
            wc += alpha * std::max(g1, 0.0);
          }
          break;
        }
        case CamMethod::XGradCam: {
          double sum_a = 0.0, sum_ga = 0.0;
          for (int64_t i = 0; i < hw; ++i) {
            sum_a += ac[i];
            sum_ga += double(gc[i]) * ac[i];
          }
          wc = sum_ga / (sum_a + 1e-7);
          break;
        }
        case CamMethod::LayerCam: break;
      }
      w[c] = wc;
    }
    for (int64_t c = 0; c < channels; ++c) {
      const double wc = w[c];
      if (wc == 0.0) continue;
      const float* ac = a + c * hw;
      for (int64_t i = 0; i < hw; ++i) map[i] += wc * ac[i];
    }
  }
  const double inv_c = 1.0 / double(channels);
  for (int64_t i = 0; i < hw; ++i) map[i] = std::max(map[i] * inv_c, 0.0);
}

}  // namespace isplit
