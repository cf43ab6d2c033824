// VGG16 (torchvision's `vgg16`, configuration D, no batch norm).
#include <random>

#include "models/model.h"

namespace isplit {

namespace {
class Vgg16 : public Model {
 public:
  Vgg16(int64_t num_classes, uint64_t seed, const std::string& head, bool names_only,
        bool random_init)
      : Model("vgg16", num_classes, head, names_only) {
    std::mt19937_64 rng(seed);
    const int cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
    int64_t in = 3;
    int index = 0;
    auto name = [&](int i) { return "features." + std::to_string(i); };
    for (int c : cfg) {
      if (c == 0) {
        add(name(index++), [] { return std::make_unique<MaxPool2d>(2, 2); }, true, true);
        continue;
      }
      add(name(index++), [&] {
        auto conv = std::make_unique<Conv2d>(in, c, 3, 1, 1, true);
        if (random_init) init_conv_kaiming(*conv, rng);
        return conv;
      }, true, false);
      add(name(index++), [] { return std::make_unique<ReLU>(); }, true, true);
      in = c;
    }
    add("avgpool", [] { return std::make_unique<AdaptiveAvgPool2d>(7, 7); });
    add("flatten", [] { return std::make_unique<Flatten>(); });
    const int64_t widths[] = {512 * 7 * 7, 4096, 4096, num_classes};
    for (int i = 0; i < 3; ++i) {
      add("classifier." + std::to_string(3 * i), [&] {
        auto fc = std::make_unique<Linear>(widths[i], widths[i + 1]);
        if (random_init) init_linear_normal(*fc, 0.01, rng);
        return fc;
      });
      if (i < 2) {
        add("classifier." + std::to_string(3 * i + 1), [] { return std::make_unique<ReLU>(); });
        add("classifier." + std::to_string(3 * i + 2),
            [&] { return std::make_unique<Dropout>(0.5, seed * 7919u + 17u + i); });
      }
    }
  }
};
}  // namespace

std::unique_ptr<Model> make_vgg16(int64_t num_classes, uint64_t seed, const std::string& head,
                                  bool names_only, bool random_init) {
  return std::make_unique<Vgg16>(num_classes, seed, head, names_only, random_init);
}

}  // namespace isplit
