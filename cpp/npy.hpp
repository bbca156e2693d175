// A small, checked reader for NumPy .npy files of float32 or float64, either byte order, C or Fortran order
// (what `np.save` writes for an array from `scipy.io.loadmat`: float64, Fortran order), read as float32 in C order.
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a major and a minor version byte, the header length
// (uint16 little-endian for version 1.0, uint32 for 2.0 and 3.0), then the header: a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 53, 63, 46), }
// padded with spaces and ended by '\n'; the raw array data follows. Anything else is refused with an
// npy::Error whose message names the problem (the caller adds the file name).
#pragma once

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Header {
  std::string descr;             // e.g. "<f4"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;      // bytes from the start of the file to the first element
  int itemsize = 4;              // 4 (float32) or 8 (float64)
  bool swap = false;             // big-endian data ('>'): bytes reversed on reading
};

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

namespace detail {

// Parser of the header's dict literal: string keys; values are strings, True/False or tuples of integers.
class DictParser {
 public:
  explicit DictParser(const std::string& s) : s_(s) {}

  struct Value {
    enum Kind { Str, Bool, Tuple } kind;
    std::string str;
    bool b = false;
    std::vector<int64_t> tuple;
  };

  std::map<std::string, Value> parse() {
    std::map<std::string, Value> out;
    expect('{');
    while (true) {
      skip();
      if (peek() == '}') { ++i_; break; }
      std::string key = string();
      expect(':');
      if (out.count(key)) fail("key '" + key + "' appears twice");
      out[key] = value();
      skip();
      if (peek() == ',') { ++i_; continue; }
      expect('}');
      break;
    }
    skip();
    if (i_ != s_.size()) fail("unexpected text after the header dict");
    return out;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const { throw Error("malformed .npy header: " + what); }
  void skip() { while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void expect(char c) {
    skip();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string() {
    skip();
    char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  int64_t integer() {
    skip();
    size_t start = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    if (i_ == start || i_ - start > 18) fail("expected a non-negative integer in the shape");
    if (peek() == 'L') ++i_;  // Python 2 long suffix, as old numpy wrote it
    return std::stoll(s_.substr(start, i_ - start));
  }
  Value value() {
    skip();
    Value v{};
    char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = Value::Str;
      v.str = string();
    } else if (s_.compare(i_, 4, "True") == 0) {
      v.kind = Value::Bool, v.b = true, i_ += 4;
    } else if (s_.compare(i_, 5, "False") == 0) {
      v.kind = Value::Bool, v.b = false, i_ += 5;
    } else if (c == '(') {
      v.kind = Value::Tuple;
      ++i_;
      while (true) {
        skip();
        if (peek() == ')') { ++i_; break; }
        v.tuple.push_back(integer());
        skip();
        if (peek() == ',') { ++i_; continue; }
        expect(')');
        break;
      }
    } else {
      fail("unsupported value (a structured dtype?)");
    }
    return v;
  }
};

inline uint32_t le(const unsigned char* p, int n) {
  uint32_t v = 0;
  for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

}  // namespace detail

// Reads and checks the header; leaves `in` at the first data byte. Accepts versions 1.0, 2.0 and 3.0, dtypes
// '<f4', '>f4', '<f8' and '>f8', C or Fortran order, and checks that the file holds exactly the data the shape needs.
inline Header read_header(std::ifstream& in) {
  const uint16_t probe = 1;
  if (*reinterpret_cast<const unsigned char*>(&probe) != 1) throw Error("this reader needs a little-endian machine");
  unsigned char pre[12];
  in.read(reinterpret_cast<char*>(pre), 8);
  if (in.gcount() < 8 || std::memcmp(pre, "\x93NUMPY", 6) != 0) throw Error("not a .npy file (bad magic)");
  const int major = pre[6], minor = pre[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    throw Error(".npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                " is not supported (1.0, 2.0, 3.0)");
  const int len_bytes = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(pre + 8), len_bytes);
  if (in.gcount() < len_bytes) throw Error("truncated .npy header");
  const uint32_t hlen = detail::le(pre + 8, len_bytes);
  if (hlen > (1u << 20)) throw Error("implausible .npy header length " + std::to_string(hlen));
  std::string text(hlen, '\0');
  in.read(text.data(), hlen);
  if (static_cast<uint32_t>(in.gcount()) < hlen) throw Error("truncated .npy header");
  if (text.empty() || text.back() != '\n') throw Error("malformed .npy header: does not end with a newline");

  auto dict = detail::DictParser(text).parse();
  auto get = [&](const char* key, detail::DictParser::Value::Kind kind) -> detail::DictParser::Value& {
    auto it = dict.find(key);
    if (it == dict.end()) throw Error(std::string("malformed .npy header: no '") + key + "'");
    if (it->second.kind != kind) throw Error(std::string("malformed .npy header: bad '") + key + "'");
    return it->second;
  };
  Header h;
  h.descr = get("descr", detail::DictParser::Value::Str).str;
  h.fortran_order = get("fortran_order", detail::DictParser::Value::Bool).b;
  h.shape = get("shape", detail::DictParser::Value::Tuple).tuple;
  h.data_offset = 8 + len_bytes + hlen;

  if (!(h.descr.size() == 3 && (h.descr[0] == '<' || h.descr[0] == '>') && h.descr[1] == 'f' &&
        (h.descr[2] == '4' || h.descr[2] == '8')))
    throw Error("dtype " + h.descr + " is not float32 or float64 (<f4, <f8, >f4, >f8)");
  h.itemsize = h.descr[2] - '0';
  h.swap = h.descr[0] == '>';

  uint64_t count = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && count > (UINT64_MAX / static_cast<uint64_t>(h.itemsize)) / static_cast<uint64_t>(d))
      throw Error("shape " + shape_str(h.shape) + " is too large");
    count *= static_cast<uint64_t>(d);
  }
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  const uint64_t need = h.data_offset + h.itemsize * count;
  if (size != need)
    throw Error(std::string(size < need ? "truncated" : "trailing bytes") + ": shape " + shape_str(h.shape) +
                " needs " + std::to_string(need) + " bytes, the file has " + std::to_string(size));
  in.seekg(static_cast<std::streamoff>(h.data_offset));
  return h;
}

// Reads whole volumes of an (N, ...) array as float32 in C order, whatever its dtype and order. C order: a volume
// is `per_volume` consecutive values, read in one go. Fortran order (first axis fastest): the file is `per_volume`
// rows of N values, row p holding value p (in the volume's own Fortran order) of every volume; blocks of rows are
// read in turn, and each row gives `count` values, put where C order wants them. A value float32 cannot hold
// (NaN, Inf, or a float64 beyond float32's range) is refused.
class VolumeReader {
 public:
  VolumeReader(std::ifstream& in, const Header& h) : in_(in), h_(h), c_stride_(h.shape.size(), 1) {
    for (size_t j = h.shape.size(); j-- > 1;) {
      c_stride_[j - 1] = c_stride_[j] * h.shape[j];
      per_volume_ *= h.shape[j];
    }
  }

  // Volumes [first, first + count) into out (count * per_volume floats).
  void read(int64_t first, int64_t count, float* out) {
    if (!h_.fortran_order) {
      fill(first * per_volume_, count * per_volume_);
      for (int64_t k = 0; k < count * per_volume_; ++k) out[k] = value(k, first + k / per_volume_);
      return;
    }
    const int64_t n = h_.shape[0];
    const int64_t rows = std::max<int64_t>(1, kBlockBytes / (n * h_.itemsize));
    std::vector<int64_t> dest(static_cast<size_t>(std::min(rows, per_volume_)));
    for (int64_t p0 = 0; p0 < per_volume_; p0 += rows) {
      const int64_t r = std::min(rows, per_volume_ - p0);
      for (int64_t i = 0; i < r; ++i) dest[i] = c_offset(p0 + i);
      fill(p0 * n, r * n);
      for (int64_t b = 0; b < count; ++b)
        for (int64_t i = 0; i < r; ++i) out[b * per_volume_ + dest[i]] = value(i * n + first + b, first + b);
    }
  }

 private:
  static constexpr int64_t kBlockBytes = 16 << 20;
  std::ifstream& in_;
  const Header& h_;
  std::vector<int64_t> c_stride_;  // C-order strides (in values) of the axes of the array
  int64_t per_volume_ = 1;
  std::vector<unsigned char> raw_;

  // The C-order offset in a volume of its value p in Fortran order (first volume axis fastest).
  int64_t c_offset(int64_t p) const {
    int64_t c = 0;
    for (size_t j = 1; j < h_.shape.size(); ++j) {
      c += (p % h_.shape[j]) * c_stride_[j];
      p /= h_.shape[j];
    }
    return c;
  }

  // Values [start, start + len) of the file (in its own order) into raw_.
  void fill(int64_t start, int64_t len) {
    raw_.resize(static_cast<size_t>(len * h_.itemsize));
    in_.seekg(static_cast<std::streamoff>(h_.data_offset + static_cast<uint64_t>(start) * h_.itemsize));
    in_.read(reinterpret_cast<char*>(raw_.data()), static_cast<std::streamsize>(raw_.size()));
    if (static_cast<size_t>(in_.gcount()) != raw_.size()) throw Error("read failed (was the file changed?)");
  }

  // Value k of raw_ as float32; `volume` names it in an error.
  float value(int64_t k, int64_t volume) const {
    unsigned char b[8];
    const unsigned char* p = raw_.data() + k * h_.itemsize;
    for (int j = 0; j < h_.itemsize; ++j) b[j] = p[h_.swap ? h_.itemsize - 1 - j : j];
    double v;
    if (h_.itemsize == 4) {
      float f;
      std::memcpy(&f, b, 4);
      v = f;
    } else {
      std::memcpy(&v, b, 8);
    }
    if (!std::isfinite(v)) throw Error("volume " + std::to_string(volume) + " has non-finite values (NaN or Inf)");
    if (std::fabs(v) > FLT_MAX) {
      char num[32];
      std::snprintf(num, sizeof(num), "%g", v);
      throw Error("volume " + std::to_string(volume) + " has values beyond float32's range (" + num + ")");
    }
    return static_cast<float>(v);
  }
};

}  // namespace npy
