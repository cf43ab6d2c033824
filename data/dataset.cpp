// Dataset readers: image folder, Tiny-ImageNet, IDX (plain or gzip through zlib).
#include "data/dataset.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <zlib.h>

namespace isplit {
namespace {

namespace fs = std::filesystem;

constexpr const char* kLayoutHint =
    "--data takes an image-folder directory (one sub-folder per class), a Tiny-ImageNet root "
    "(with wnids.txt) or an IDX image file (e.g. t10k-images-idx3-ubyte[.gz])";

constexpr uint32_t kIdxImagesMagic = 0x00000803;  // ubyte, 3 dims
constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // ubyte, 1 dim
// Largest text file (wnids.txt, words.txt, val_annotations.txt, classes.txt) we read.
constexpr uintmax_t kMaxTextFileBytes = uintmax_t{64} << 20;

[[noreturn]] void fail(const std::string& name, const std::string& reason) {
  throw Error(name + ": " + reason);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

bool has_image_extension(const fs::path& p) {
  static const char* const kExt[] = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm"};
  const std::string ext = lower(p.extension().string());
  for (const char* e : kExt)
    if (ext == e) return true;
  return false;
}

std::string rstrip(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::string strip(const std::string& s) {
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return rstrip(s.substr(b));
}

// Reads a text file as lines (trailing whitespace and '\r' removed); throws Error.
std::vector<std::string> read_lines(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail(path.string(), "cannot read (" + ec.message() + ")");
  if (size > kMaxTextFileBytes) fail(path.string(), "text file too large");
  std::ifstream in(path);
  if (!in) fail(path.string(), std::string("cannot open (") + std::strerror(errno) + ")");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(rstrip(line));
  if (in.bad()) fail(path.string(), "read error");
  return lines;
}

// Image files below dir (recursively), hidden entries skipped, sorted by path.
std::vector<std::string> list_images(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
    const fs::directory_entry& e = *it;
    if (is_hidden(e.path())) {
      if (e.is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (e.is_regular_file(ec) && has_image_extension(e.path())) files.push_back(e.path().string());
  }
  if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
  std::sort(files.begin(), files.end());
  return files;
}

// Non-hidden sub-directories of dir, sorted by name.
std::vector<std::string> list_subdirs(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
    if (is_hidden(it->path())) continue;
    std::error_code ec2;
    if (it->is_directory(ec2)) names.push_back(it->path().filename().string());
  }
  if (ec) fail(dir.string(), "cannot list (" + ec.message() + ")");
  std::sort(names.begin(), names.end());
  return names;
}

// ---------------------------------------------------------------- file-list datasets

// Samples that are image files on disk (image folder, Tiny-ImageNet).
class FileListDataset final : public Dataset {
 public:
  FileListDataset(std::string kind, std::vector<std::string> files, std::vector<int> labels,
                  std::vector<std::string> class_names)
      : kind_(std::move(kind)),
        files_(std::move(files)),
        labels_(std::move(labels)),
        class_names_(std::move(class_names)) {}

  size_t size() const override { return files_.size(); }
  int label(size_t i) const override { return labels_.at(check(i)); }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  std::string source(size_t i) const override { return files_[check(i)]; }
  Image load(size_t i) const override { return decode_image_file(files_[check(i)]); }
  std::string kind() const override { return kind_; }

 private:
  size_t check(size_t i) const {
    if (i >= files_.size())
      throw Error("dataset: sample index " + std::to_string(i) + " out of range (size " +
                  std::to_string(files_.size()) + ")");
    return i;
  }

  std::string kind_;
  std::vector<std::string> files_;
  std::vector<int> labels_;
  std::vector<std::string> class_names_;
};

std::unique_ptr<Dataset> open_image_folder(const fs::path& root) {
  const std::vector<std::string> classes = list_subdirs(root);
  if (classes.empty())
    fail(root.string(), std::string("not a dataset: no class sub-folders; ") + kLayoutHint);
  std::vector<std::string> files;
  std::vector<int> labels;
  for (size_t c = 0; c < classes.size(); ++c) {
    for (std::string& f : list_images(root / classes[c])) {
      files.push_back(std::move(f));
      labels.push_back(static_cast<int>(c));
    }
  }
  if (files.empty()) fail(root.string(), "no images found");
  return std::make_unique<FileListDataset>("image-folder", std::move(files), std::move(labels),
                                           classes);
}

std::unique_ptr<Dataset> open_tiny_imagenet(const fs::path& root, const std::string& split) {
  // Classes: wnids.txt sorted lexicographically (wnids.txt itself is unordered; sorted order
  // is what torchvision's ImageFolder gives on train/ and what trained checkpoints use).
  const fs::path wnids_path = root / "wnids.txt";
  std::vector<std::string> wnids;
  for (const std::string& line : read_lines(wnids_path)) {
    const std::string w = strip(line);
    if (!w.empty()) wnids.push_back(w);
  }
  std::sort(wnids.begin(), wnids.end());
  wnids.erase(std::unique(wnids.begin(), wnids.end()), wnids.end());
  if (wnids.empty()) fail(wnids_path.string(), "no class ids");
  std::unordered_map<std::string, int> label_of;
  for (size_t i = 0; i < wnids.size(); ++i) label_of[wnids[i]] = static_cast<int>(i);

  std::vector<std::string> names = wnids;
  const fs::path words_path = root / "words.txt";
  std::error_code ec;
  if (fs::is_regular_file(words_path, ec)) {
    for (const std::string& line : read_lines(words_path)) {
      const size_t tab = line.find('\t');
      if (tab == std::string::npos) continue;
      auto it = label_of.find(strip(line.substr(0, tab)));
      if (it == label_of.end()) continue;
      std::string desc = line.substr(tab + 1);
      desc = strip(desc.substr(0, desc.find(',')));
      if (!desc.empty()) names[it->second] = desc;
    }
  }

  std::vector<std::string> files;
  std::vector<int> labels;
  if (split.empty() || split == "val") {
    const fs::path val = root / "val";
    const fs::path ann = val / "val_annotations.txt";
    if (!fs::is_regular_file(ann, ec))
      fail(ann.string(), "not found (Tiny-ImageNet validation split; use split \"train\" for train/)");
    const std::vector<std::string> lines = read_lines(ann);
    for (size_t n = 0; n < lines.size(); ++n) {
      const std::string& line = lines[n];
      if (strip(line).empty()) continue;
      const size_t t1 = line.find('\t');
      const size_t t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
      if (t1 == std::string::npos)
        fail(ann.string(), "line " + std::to_string(n + 1) + ": expected <file>\\t<wnid>...");
      const std::string file = strip(line.substr(0, t1));
      const std::string wnid =
          strip(line.substr(t1 + 1, t2 == std::string::npos ? std::string::npos : t2 - t1 - 1));
      auto it = label_of.find(wnid);
      if (it == label_of.end())
        fail(ann.string(), "line " + std::to_string(n + 1) + ": class '" + wnid +
                               "' is not in wnids.txt");
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
        fail(ann.string(), "line " + std::to_string(n + 1) + ": bad file name '" + file + "'");
      const fs::path img = val / "images" / file;
      if (!fs::is_regular_file(img, ec)) fail(img.string(), "not found (listed in " + ann.string() + ")");
      files.push_back(img.string());
      labels.push_back(it->second);
    }
  } else if (split == "train") {
    const fs::path train = root / "train";
    if (!fs::is_directory(train, ec)) fail(train.string(), "not found (Tiny-ImageNet train split)");
    for (size_t c = 0; c < wnids.size(); ++c) {
      const fs::path dir = train / wnids[c];
      if (!fs::is_directory(dir, ec)) continue;  // a class without training images
      for (std::string& f : list_images(dir)) {
        files.push_back(std::move(f));
        labels.push_back(static_cast<int>(c));
      }
    }
  } else {
    fail(root.string(), "unknown Tiny-ImageNet split '" + split + "' (expected train or val)");
  }
  if (files.empty()) fail(root.string(), "no images found (split " + (split.empty() ? std::string("val") : split) + ")");
  return std::make_unique<FileListDataset>("tiny-imagenet", std::move(files), std::move(labels),
                                           std::move(names));
}

// ---------------------------------------------------------------- IDX

// Sequential byte reader over a plain or gzip-compressed file.
class ByteReader {
 public:
  explicit ByteReader(std::string path) : path_(std::move(path)) {
    std::error_code ec;
    const auto st = fs::status(path_, ec);
    if (ec || !fs::exists(st)) fail(path_, "not found");
    if (!fs::is_regular_file(st)) fail(path_, "not a regular file");
    file_size_ = fs::file_size(path_, ec);
    if (ec) fail(path_, "cannot read (" + ec.message() + ")");
    unsigned char magic[2] = {0, 0};
    {
      std::ifstream in(path_, std::ios::binary);
      if (!in) fail(path_, std::string("cannot open (") + std::strerror(errno) + ")");
      in.read(reinterpret_cast<char*>(magic), 2);
    }
    gzip_ = magic[0] == 0x1f && magic[1] == 0x8b;
    if (gzip_) {
      gz_ = gzopen(path_.c_str(), "rb");
      if (gz_ == nullptr) fail(path_, "cannot open gzip file");
      gzbuffer(gz_, 1 << 17);
    } else {
      fp_ = std::fopen(path_.c_str(), "rb");
      if (fp_ == nullptr) fail(path_, std::string("cannot open (") + std::strerror(errno) + ")");
    }
  }
  ~ByteReader() {
    if (gz_ != nullptr) gzclose(gz_);
    if (fp_ != nullptr) std::fclose(fp_);
  }
  ByteReader(const ByteReader&) = delete;
  ByteReader& operator=(const ByteReader&) = delete;

  bool gzip() const { return gzip_; }
  // On-disk size (compressed size for gzip).
  uintmax_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }

  // Reads up to n bytes; returns how many were read (short only at end of data).
  size_t read(void* dst, size_t n) {
    auto* out = static_cast<unsigned char*>(dst);
    size_t got = 0;
    while (got < n) {
      const size_t want = std::min<size_t>(n - got, size_t{1} << 24);
      size_t r = 0;
      if (gzip_) {
        const int k = gzread(gz_, out + got, static_cast<unsigned>(want));
        if (k < 0) {
          int errnum = 0;
          const char* msg = gzerror(gz_, &errnum);
          fail(path_, std::string("corrupt gzip data (") + (msg ? msg : "unknown error") + ")");
        }
        r = static_cast<size_t>(k);
      } else {
        r = std::fread(out + got, 1, want, fp_);
        if (r < want && std::ferror(fp_)) fail(path_, "read error");
      }
      if (r == 0) break;
      got += r;
    }
    return got;
  }

  // Reads exactly `count` payload bytes following a `header`-byte header, growing the buffer
  // as data arrives (so a lying gzip header cannot make us allocate more than it holds), and
  // checks nothing follows. `what` describes the payload in errors.
  std::vector<uint8_t> read_payload(uint64_t count, uint64_t header, const std::string& what) {
    if (!gzip_ && file_size_ != header + count)
      fail(path_, "file size " + std::to_string(file_size_) + " does not match the IDX header (" +
                      what + " need " + std::to_string(header + count) + " bytes)");
    std::vector<uint8_t> data;
    const size_t chunk = size_t{16} << 20;
    size_t have = 0;
    while (have < count) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(count - have, chunk));
      data.resize(have + want);
      const size_t got = read(data.data() + have, want);
      have += got;
      if (got < want)
        fail(path_, "truncated: " + what + " need " + std::to_string(count) +
                        " data bytes, file holds " + std::to_string(have));
    }
    unsigned char extra = 0;
    if (read(&extra, 1) != 0) fail(path_, "trailing data after the " + what);
    return data;
  }

 private:
  std::string path_;
  uintmax_t file_size_ = 0;
  bool gzip_ = false;
  gzFile gz_ = nullptr;
  std::FILE* fp_ = nullptr;
};

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

class IdxDataset final : public Dataset {
 public:
  IdxDataset(std::string path, int rows, int cols, std::vector<uint8_t> pixels,
             std::vector<uint8_t> labels, std::vector<std::string> class_names)
      : path_(std::move(path)),
        rows_(rows),
        cols_(cols),
        pixels_(std::move(pixels)),
        labels_(std::move(labels)),
        class_names_(std::move(class_names)) {}

  size_t size() const override { return labels_.size(); }
  int label(size_t i) const override { return labels_[check(i)]; }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  std::string source(size_t i) const override { return path_ + "#" + std::to_string(check(i)); }
  Image load(size_t i) const override {
    const size_t plane = static_cast<size_t>(rows_) * static_cast<size_t>(cols_);
    const uint8_t* p = pixels_.data() + check(i) * plane;
    Image image;
    image.width = cols_;
    image.height = rows_;
    image.channels = 1;
    image.pixels.assign(p, p + plane);
    return image;
  }
  std::string kind() const override { return "idx"; }

 private:
  size_t check(size_t i) const {
    if (i >= labels_.size())
      throw Error(path_ + ": sample index " + std::to_string(i) + " out of range (size " +
                  std::to_string(labels_.size()) + ")");
    return i;
  }

  std::string path_;
  int rows_, cols_;
  std::vector<uint8_t> pixels_;  // N x rows x cols
  std::vector<uint8_t> labels_;
  std::vector<std::string> class_names_;
};

// Replaces the first occurrence of `from` in s by `to`; returns whether it did.
bool replace_first(std::string& s, const std::string& from, const std::string& to) {
  const size_t pos = s.find(from);
  if (pos == std::string::npos) return false;
  s.replace(pos, from.size(), to);
  return true;
}

// The labels file beside an IDX images file; throws Error when none exists.
fs::path find_labels_file(const fs::path& images) {
  std::string base = images.filename().string();
  if (base.size() > 3 && lower(base.substr(base.size() - 3)) == ".gz")
    base.resize(base.size() - 3);
  std::string name = base;
  bool changed = replace_first(name, "images", "labels");
  changed = replace_first(name, "idx3", "idx1") || changed;
  if (!changed)
    fail(images.string(), "cannot name its labels file (expected a name like "
                          "t10k-images-idx3-ubyte[.gz] with t10k-labels-idx1-ubyte[.gz] beside it)");
  const fs::path dir = images.parent_path();
  std::error_code ec;
  for (const std::string& cand : {name, name + ".gz"}) {
    const fs::path p = dir / cand;
    if (fs::is_regular_file(p, ec)) return p;
  }
  fail(images.string(), "labels file not found (looked for " + (dir / name).string() + "[.gz])");
}

std::unique_ptr<Dataset> open_idx(const fs::path& images_path) {
  const std::string ipath = images_path.string();
  ByteReader images(ipath);
  unsigned char h[16];
  const size_t got = images.read(h, 4);
  const uint32_t magic = got == 4 ? be32(h) : 0;
  if (got < 4 || magic != kIdxImagesMagic) {
    if (got >= 4 && (magic >> 16) == 0)
      fail(ipath, "not an IDX ubyte image file (magic " + hex32(magic) + ", expected " +
                      hex32(kIdxImagesMagic) + ")");
    fail(ipath, std::string("not an IDX image file or a dataset directory; ") + kLayoutHint);
  }
  if (images.read(h + 4, 12) != 12) fail(ipath, "truncated IDX header");
  const uint32_t n = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
  if (n == 0) fail(ipath, "no images found (IDX count is 0)");
  if (rows == 0 || cols == 0 || uint64_t{rows} * cols > static_cast<uint64_t>(kMaxImagePixels))
    fail(ipath, "corrupt IDX header (image size " + std::to_string(rows) + "x" +
                    std::to_string(cols) + ")");
  const uint64_t plane = uint64_t{rows} * cols;
  if (uint64_t{n} > kMaxIdxBytes / plane)
    fail(ipath, "corrupt IDX header or too large (" + std::to_string(n) + " images of " +
                    std::to_string(rows) + "x" + std::to_string(cols) + " exceed " +
                    std::to_string(kMaxIdxBytes >> 30) + " GiB)");
  const std::string what = std::to_string(n) + " images of " + std::to_string(rows) + "x" +
                           std::to_string(cols);

  // Check the labels file's header before reading the (large) pixel payload.
  const fs::path labels_path = find_labels_file(images_path);
  const std::string lpath = labels_path.string();
  ByteReader labels(lpath);
  unsigned char lh[8];
  if (labels.read(lh, 8) != 8) fail(lpath, "truncated IDX header");
  if (be32(lh) != kIdxLabelsMagic)
    fail(lpath, "not an IDX ubyte labels file (magic " + hex32(be32(lh)) + ", expected " +
                    hex32(kIdxLabelsMagic) + ")");
  const uint32_t nl = be32(lh + 4);
  if (nl != n)
    fail(lpath, "holds " + std::to_string(nl) + " labels but " + ipath + " holds " +
                    std::to_string(n) + " images");

  std::vector<uint8_t> pixels = images.read_payload(uint64_t{n} * plane, 16, what);
  std::vector<uint8_t> label_bytes = labels.read_payload(n, 8, std::to_string(n) + " labels");

  int max_label = 0;
  for (uint8_t l : label_bytes) max_label = std::max<int>(max_label, l);
  std::vector<std::string> names;
  const fs::path classes_txt = images_path.parent_path() / "classes.txt";
  std::error_code ec;
  if (fs::is_regular_file(classes_txt, ec)) {
    names = read_lines(classes_txt);
    while (!names.empty() && strip(names.back()).empty()) names.pop_back();
    for (std::string& s : names) s = strip(s);
    if (static_cast<int>(names.size()) <= max_label)
      fail(classes_txt.string(), "names " + std::to_string(names.size()) + " classes but " + lpath +
                                     " uses label " + std::to_string(max_label));
  } else {
    for (int c = 0; c <= max_label; ++c) names.push_back(std::to_string(c));
  }
  return std::make_unique<IdxDataset>(ipath, static_cast<int>(rows), static_cast<int>(cols),
                                      std::move(pixels), std::move(label_bytes), std::move(names));
}

bool is_idx_images_name(const std::string& name) {
  return name.find("images-idx3-ubyte") != std::string::npos ||
         name.find("images.idx3-ubyte") != std::string::npos;
}

// A directory of IDX files (no sub-folders): picks the images file for `split`, or returns
// an empty path when the directory holds none.
fs::path pick_idx_in_dir(const fs::path& dir, const std::string& split) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code ec2;
    if (!is_hidden(it->path()) && it->is_regular_file(ec2) && is_idx_images_name(name))
      names.push_back(name);
  }
  if (names.empty()) return {};
  std::sort(names.begin(), names.end());
  std::vector<std::string> prefixes;
  if (split == "train") prefixes = {"train"};
  else if (split.empty() || split == "test" || split == "t10k" || split == "val") prefixes = {"t10k", "test"};
  else prefixes = {split};
  std::vector<std::string> match;
  for (const std::string& n : names)
    for (const std::string& p : prefixes)
      if (n.compare(0, p.size(), p) == 0) match.push_back(n);
  if (match.empty() && split.empty() && names.size() == 1) match = names;
  // Plain and .gz of the same file: prefer the plain one (sorted first).
  if (match.size() == 2 && match[1] == match[0] + ".gz") match.pop_back();
  if (match.size() != 1) {
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
    fail(dir.string(), "cannot pick an IDX images file for split '" + split + "' among: " + list);
  }
  return dir / match[0];
}

}  // namespace

std::unique_ptr<Dataset> open_dataset(const std::string& path, const std::string& split) {
  if (path.empty()) throw Error("dataset: empty path");
  std::error_code ec;
  const fs::path p(path);
  const auto st = fs::status(p, ec);
  if (!fs::exists(st)) fail(path, "not found");
  if (fs::is_regular_file(st)) return open_idx(p);
  if (!fs::is_directory(st)) fail(path, std::string("not a file or directory; ") + kLayoutHint);

  if (fs::is_regular_file(p / "wnids.txt", ec)) return open_tiny_imagenet(p, split);
  if (list_subdirs(p).empty()) {
    const fs::path idx = pick_idx_in_dir(p, split);
    if (!idx.empty()) return open_idx(idx);
  }
  if (!split.empty()) {
    const fs::path sub = p / split;
    if (!fs::is_directory(sub, ec)) fail(sub.string(), "not found (split '" + split + "')");
    return open_image_folder(sub);
  }
  return open_image_folder(p);
}

std::unique_ptr<Dataset> open_dataset_default_split(const std::string& path, const std::string& split) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!split.empty() && fs::is_directory(path, ec) && !fs::exists(fs::path(path) / split, ec) &&
      !fs::exists(fs::path(path) / "wnids.txt", ec)) {
    // An image folder has class sub-directories; a directory of IDX files has none.
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_directory(ec)) return open_dataset(path, "");
  }
  return open_dataset(path, split);
}

std::vector<size_t> select_indices(const Dataset& dataset, const std::vector<int>& classes,
                                   size_t limit, int shard_k, int shard_n) {
  if (shard_n < 1 || shard_k < 0 || shard_k >= shard_n)
    throw Error("shard " + std::to_string(shard_k) + "/" + std::to_string(shard_n) +
                ": expected 0 <= k < n");
  const int num_classes = static_cast<int>(dataset.class_names().size());
  std::vector<char> keep(static_cast<size_t>(num_classes), classes.empty() ? 1 : 0);
  for (int c : classes) {
    if (c < 0 || c >= num_classes)
      throw Error("class " + std::to_string(c) + " out of range (the dataset has " +
                  std::to_string(num_classes) + " classes)");
    keep[static_cast<size_t>(c)] = 1;
  }
  std::vector<size_t> out;
  size_t taken = 0;  // samples that passed the class filter (and the limit) so far
  for (size_t i = 0; i < dataset.size(); ++i) {
    const int l = dataset.label(i);
    if (l < 0 || l >= num_classes || !keep[static_cast<size_t>(l)]) continue;
    if (limit != 0 && taken >= limit) break;
    if (taken % static_cast<size_t>(shard_n) == static_cast<size_t>(shard_k)) out.push_back(i);
    ++taken;
  }
  return out;
}

}  // namespace isplit
