// Class-activation maps of one image at one layer, from its activation A and the
// gradient G = dScore/dA (both C x H x W). No per-image rescaling: raw magnitudes are
// kept, since the Cumulative Importance compares them across layers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace isplit {

enum class CamMethod {
  GradCam,          // Selvaraju et al. 2017: w_c = mean_hw G; map = ReLU(mean_c w_c A_c)
  GradCamPlusPlus,  // Chattopadhay et al. 2018: w_c = sum_hw alpha * ReLU(G)
  LayerCam,         // Jiang et al. 2021: map = ReLU(mean_c ReLU(G_c) * A_c), elementwise
  XGradCam,         // Fu et al. 2020: w_c = sum_hw G*A / (sum_hw A + 1e-7)
};

// Parses "gradcam", "gradcam++", "layercam" or "xgradcam"; throws Error otherwise.
CamMethod parse_cam_method(const std::string& name);
// The command-line name of a method.
std::string cam_method_name(CamMethod method);

// Writes the H*W map of one image into map (size hw), from a and g (C x HW, row-major).
// scratch is resized as needed (per-channel weights).
void cam_map(CamMethod method, const float* a, const float* g, int64_t channels, int64_t hw,
             double* map, std::vector<double>& scratch);

}  // namespace isplit
