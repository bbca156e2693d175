// stvit_infer: run a classifier exported by `python -m stvit.export` on volumes from a .npy file, without Python.
//
//   stvit_infer MODEL.pt2 VOLUMES.npy [--out PROBS.csv] [--batch-size N] [--read-mb M]
//
// MODEL.pt2 is an AOTInductor package; its metadata gives the volume shape (T, H, W) and the class names.
// VOLUMES.npy holds (N, T, H, W) float32 or float64, either byte order, C or Fortran order (e.g. (N, 53, 63, 46)
// as `np.save` writes an array from `scipy.io.loadmat`: float64, Fortran order), converted to float32: a batch at
// a time in C order; in Fortran order, where a volume is spread over the whole file, up to M MiB of volumes
// (default 256, at least a batch) per pass over the file. The output is CSV, one row per volume:
// `volume,<class name>...,predicted` with softmax probabilities, to stdout or --out.
// A problem with an argument or a file prints one line `error: <file>: <problem>` on stderr and exits 2.
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Logging.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "npy.hpp"

namespace {

namespace fs = std::filesystem;

// A problem the user can fix: reported as `error: <where>: <what>`, exit code 2.
struct Failure : std::runtime_error {
  Failure(const std::string& where, const std::string& what)
      : std::runtime_error(where.empty() ? what : where + ": " + what) {}
};

const char* kUsage = "usage: stvit_infer MODEL.pt2 VOLUMES.npy [--out PROBS.csv] [--batch-size N] [--read-mb M]";

struct Args {
  std::string model, input, out;
  int64_t batch_size = 8;
  int64_t read_mb = 256;  // Fortran-order input: MiB of float32 volumes read per pass over the file
};

int64_t parse_count(const std::string& flag, const std::string& v, long long min) {
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno || n < min || n > (int64_t(1) << 40))
    throw Failure("", flag + " must be an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return n;
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "-h" || s == "--help") {
      std::cout << kUsage << "\n";
      std::exit(0);
    }
    if (s == "--out" || s == "-o" || s == "--batch-size" || s == "--read-mb") {
      if (i + 1 >= argc) throw Failure("", s + " needs a value; " + kUsage);
      std::string v = argv[++i];
      if (s == "--batch-size") {
        a.batch_size = parse_count(s, v, 1);
      } else if (s == "--read-mb") {
        a.read_mb = parse_count(s, v, 0);
      } else {
        a.out = v;
      }
    } else if (!s.empty() && s[0] == '-') {
      throw Failure("", "unknown option " + s + "; " + kUsage);
    } else {
      pos.push_back(s);
    }
  }
  if (pos.size() != 2) throw Failure("", kUsage);
  a.model = pos[0];
  a.input = pos[1];
  return a;
}

std::string first_line(const std::string& s) {
  auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

void check_regular_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Failure(path, "no such file");
  if (!fs::is_regular_file(path, ec)) throw Failure(path, "not a regular file");
}

// What the runner needs from the package metadata written by stvit.export.
struct ModelInfo {
  std::vector<int64_t> volume;  // T, H, W
  std::vector<std::string> classes;
  c10::Device device = c10::kCPU;
};

ModelInfo model_info(const std::string& path, const std::unordered_map<std::string, std::string>& meta) {
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end())
      throw Failure(path, "no '" + key + "' in the package metadata (not made by python -m stvit.export?)");
    return it->second;
  };
  if (get("stvit.format") != "1") throw Failure(path, "stvit.format " + get("stvit.format") + " is not supported (1)");
  ModelInfo info;
  std::stringstream vol(get("stvit.volume"));
  for (std::string tok; std::getline(vol, tok, ',');) info.volume.push_back(std::stoll(tok));
  if (info.volume.size() != 3) throw Failure(path, "bad stvit.volume '" + get("stvit.volume") + "'");
  const int64_t C = std::stoll(get("stvit.num_classes"));
  for (int64_t i = 0; i < C; ++i) info.classes.push_back(get("stvit.class." + std::to_string(i)));
  auto dev = meta.find("AOTI_DEVICE_KEY");
  if (dev != meta.end() && !dev->second.empty()) info.device = c10::Device(dev->second);
  return info;
}

std::unique_ptr<torch::inductor::AOTIModelPackageLoader> load_model(const std::string& path) {
  check_regular_file(path);
  {
    std::ifstream f(path, std::ios::binary);
    char magic[4] = {0};
    f.read(magic, 4);
    if (f.gcount() < 4 || std::string(magic, 4) != std::string("PK\x03\x04", 4))
      throw Failure(path, "not an AOTInductor package (.pt2 is a zip archive; this file is not one)");
  }
  // The loader logs warnings of its own before it throws on a foreign archive; the error line says enough.
  struct QuietLogs {
    int saved = FLAGS_caffe2_log_level;
    QuietLogs() { FLAGS_caffe2_log_level = 2; }  // errors only
    ~QuietLogs() { FLAGS_caffe2_log_level = saved; }
  } quiet;
  try {
    return std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model");
  } catch (const c10::Error& e) {
    throw Failure(path, "cannot load the AOTInductor package: " + first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    throw Failure(path, "cannot load the AOTInductor package: " + first_line(e.what()));
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// The input's header, checked before the model is loaded (a bad file fails fast): (N, T, H, W), N >= 1.
npy::Header volumes_header(const std::string& path, std::ifstream& in) {
  check_regular_file(path);
  in.open(path, std::ios::binary);
  if (!in) throw Failure(path, "cannot open for reading");
  npy::Header h;
  try {
    h = npy::read_header(in);
  } catch (const npy::Error& e) {
    throw Failure(path, e.what());
  }
  if (h.shape.size() != 4) throw Failure(path, "shape " + npy::shape_str(h.shape) + " is not (N, T, H, W)");
  if (h.shape[0] < 1) throw Failure(path, "holds no volumes (N = 0)");
  return h;
}

int run(const Args& args) {
  c10::InferenceMode guard;
  std::ifstream in;
  const npy::Header h = volumes_header(args.input, in);
  auto loader = load_model(args.model);
  ModelInfo info;
  try {
    info = model_info(args.model, loader->get_metadata());
  } catch (const Failure&) {
    throw;
  } catch (const std::exception& e) {
    throw Failure(args.model, std::string("bad stvit metadata in the package (") + e.what() + ")");
  }
  const int64_t T = info.volume[0], H = info.volume[1], W = info.volume[2];
  const int64_t C = static_cast<int64_t>(info.classes.size());
  const std::string want_str = "(N, " + std::to_string(T) + ", " + std::to_string(H) + ", " + std::to_string(W) + ")";
  if (h.shape[1] != T || h.shape[2] != H || h.shape[3] != W)
    throw Failure(args.input, "shape " + npy::shape_str(h.shape) + " is not " + want_str);
  const int64_t N = h.shape[0];

  std::ostringstream csv;
  csv << "volume";
  for (const auto& name : info.classes) csv << "," << csv_field(name);
  csv << ",predicted\n";

  // Volumes are read a group at a time: one batch in C order; in Fortran order, where a volume is spread over the
  // whole file, as many whole batches as --read-mb holds (a pass over the file per group).
  const int64_t per_volume = T * H * W;
  const int64_t group = args.batch_size * (h.fortran_order ? std::max<int64_t>(
      1, (args.read_mb << 20) / (per_volume * int64_t(sizeof(float))) / args.batch_size) : 1);
  npy::VolumeReader reader(in, h);
  std::vector<float> buf;
  char num[32];
  for (int64_t start = 0; start < N; start += args.batch_size) {
    const int64_t B = std::min(args.batch_size, N - start);
    if (start % group == 0) {
      const int64_t G = std::min(group, N - start);
      buf.resize(static_cast<size_t>(G * per_volume));
      try {
        reader.read(start, G, buf.data());
      } catch (const npy::Error& e) {
        throw Failure(args.input, e.what());
      }
    }
    float* batch = buf.data() + (start % group) * per_volume;
    at::Tensor x = at::from_blob(batch, {B, T, H, W}, at::kFloat).to(info.device);
    std::vector<at::Tensor> outputs;
    try {
      outputs = loader->run({x});
    } catch (const c10::Error& e) {
      throw Failure(args.model, "inference failed: " + first_line(e.what_without_backtrace()));
    }
    if (outputs.size() != 1 || outputs[0].dim() != 2 || outputs[0].size(0) != B || outputs[0].size(1) != C)
      throw Failure(args.model, "the model returned an unexpected output (want logits of shape (B, " +
                                    std::to_string(C) + "))");
    at::Tensor logits = outputs[0].to(c10::kCPU).to(at::kDouble).contiguous();
    const double* z = logits.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b) {
      const double* row = z + b * C;
      double mx = row[0];
      int64_t arg = 0;
      for (int64_t c = 1; c < C; ++c)
        if (row[c] > mx) mx = row[c], arg = c;
      double sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += std::exp(row[c] - mx);
      csv << start + b;
      for (int64_t c = 0; c < C; ++c) {
        std::snprintf(num, sizeof(num), "%.9g", std::exp(row[c] - mx) / sum);
        csv << "," << num;
      }
      csv << "," << csv_field(info.classes[static_cast<size_t>(arg)]) << "\n";
    }
  }

  if (args.out.empty()) {
    std::cout << csv.str() << std::flush;
  } else {
    // Written at the end, to a temporary name then renamed: a failed run leaves no partial CSV behind.
    const std::string tmp = args.out + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      if (!f) throw Failure(args.out, "cannot open for writing");
      f << csv.str();
      if (!f.flush()) throw Failure(args.out, "write failed");
    }
    std::error_code ec;
    fs::rename(tmp, args.out, ec);
    if (ec) throw Failure(args.out, "cannot write (" + ec.message() + ")");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const Failure& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << first_line(e.what_without_backtrace()) << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << first_line(e.what()) << std::endl;
    return 1;
  }
}
