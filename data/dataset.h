// Labelled image datasets behind one interface: an image folder (one sub-folder per class),
// a Tiny-ImageNet root, or an IDX (MNIST / Fashion-MNIST) image file; plus sample
// selection (class filter, limit, sharding).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/image.h"

namespace isplit {

// Largest pixel payload an IDX image file may declare (bytes); checked before allocating.
constexpr uint64_t kMaxIdxBytes = uint64_t{2} << 30;

// A read-only list of labelled images. All const methods are safe to call concurrently
// (the batch loader decodes on several threads).
class Dataset {
 public:
  virtual ~Dataset() = default;
  // Number of samples.
  virtual size_t size() const = 0;
  // Class label of sample i, in [0, class_names().size()); throws Error when i is out of range.
  virtual int label(size_t i) const = 0;
  // Class names, indexed by label.
  virtual const std::vector<std::string>& class_names() const = 0;
  // Where sample i comes from: a file path, or "<idx file>#<i>" for IDX samples.
  virtual std::string source(size_t i) const = 0;
  // Decodes sample i as an 8-bit image (IDX samples are grey, channels = 1); throws Error.
  virtual Image load(size_t i) const = 0;
  // The dataset layout: "image-folder", "tiny-imagenet" or "idx".
  virtual std::string kind() const = 0;
};

// Opens the dataset at `path`, detecting its layout:
//  - a regular file: an IDX ubyte image file (magic 00 00 08 03), plain or gzip-compressed
//    (detected by the gzip magic, read through zlib). Its labels file sits beside it, named
//    with "images"->"labels" and "idx3"->"idx1" (so t10k-images-idx3-ubyte.gz ->
//    t10k-labels-idx1-ubyte.gz), with or without ".gz". Class names are the label numbers
//    ("0".."<max label>") unless a classes.txt (one name per line) sits beside the file.
//    `split` is ignored.
//  - a directory with wnids.txt: a Tiny-ImageNet root. Classes are the wnids sorted
//    lexicographically (the order torchvision's ImageFolder gives train/), named by the
//    first comma-separated name of their words.txt entry when words.txt exists, else by
//    the wnid. split "" or "val": val/images listed by val/val_annotations.txt, in that
//    file's order; split "train": train/<wnid>/**/*.JPEG (any image extension), sorted.
//  - a directory holding IDX image files and no sub-folders (e.g. Debian's
//    /usr/share/datasets/fashion-mnist): split "train" picks train-images-*, split "",
//    "test", "t10k" or "val" picks the t10k-/test- file (or the only one there is).
//  - any other directory: an image folder. Classes are its non-hidden sub-directories in
//    sorted (byte-wise) order, like torchvision's ImageFolder, including ones with no
//    images; samples are the files with an image extension (png jpg jpeg bmp gif ppm pgm,
//    any case) anywhere below each class directory, sorted by path; hidden files and
//    directories (name starting with '.') are skipped. A non-empty `split` opens the
//    sub-folder path/split (e.g. "train", "val") as the image folder.
// Throws Error "<path>: <reason>" (one line) when the path is missing, holds no images,
// a labels file is missing or disagrees, an IDX header is corrupt, or the layout is unknown.
std::unique_ptr<Dataset> open_dataset(const std::string& path, const std::string& split = "");

// open_dataset with a default split: where the layout has such a split (a Tiny-ImageNet
// root, a directory of IDX files, an image folder with a `split` sub-folder) it is used;
// a plain image folder without that sub-folder, or an IDX file, is opened whole.
std::unique_ptr<Dataset> open_dataset_default_split(const std::string& path, const std::string& split);

// The dataset indices to process, in increasing order: samples whose label is in `classes`
// (empty = all; each must be a valid label, else Error), then only the first `limit` of
// those (0 = no limit), then every shard_n-th of those starting at shard_k (0 <= shard_k <
// shard_n, else Error). Limit before sharding makes the n shards of a run partition exactly
// the samples an unsharded run with the same limit would see.
std::vector<size_t> select_indices(const Dataset& dataset, const std::vector<int>& classes,
                                   size_t limit = 0, int shard_k = 0, int shard_n = 1);

}  // namespace isplit
