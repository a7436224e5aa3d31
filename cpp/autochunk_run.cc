// autochunk_run: run a compiled Relax model (.so from `export_library`) from C++.
//
//   autochunk_run MODEL.so [--device cpu|cuda] [--func main] [--out-dir DIR] [--repeat N]
//                 INPUT0.npy INPUT1.npy ...
//
// Loads the library with the TVM runtime of the installed apache-tvm wheel, creates a Relax
// virtual machine on the device, calls the function on the inputs (in parameter order), and
// writes each output (tuples are flattened in order) to DIR/output<i>.npy. With --repeat N it
// also times N further calls and prints the median. Exit status: 0 on success, 2 for a usage
// error, 1 when loading or running fails; the message says which.
//
// Only the tvm-ffi C++ API is used: the wheel's own tvm/runtime headers include files it does
// not ship. Tensors are made and copied through the runtime's registered global functions,
// the same ones the Python package calls.
#include <dlfcn.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "npy.h"

namespace ffi = tvm::ffi;

namespace {

// Relax VM allocator kinds (tvm/runtime/memory/memory_manager.h): 1 naive, 2 pooled.
constexpr int kPooledAllocator = 2;

struct Options {
  std::string library;
  std::string device = "cpu";
  std::string func = "main";
  std::string out_dir = ".";
  int repeat = 0;
  std::vector<std::string> inputs;
};

const char kUsage[] =
    "usage: autochunk_run MODEL.so [--device cpu|cuda] [--func main] [--out-dir DIR]\n"
    "                     [--repeat N] INPUT0.npy [INPUT1.npy ...]\n"
    "Runs FUNC of a library exported by autochunk_tvm.build(...).export_library(MODEL.so)\n"
    "on the .npy inputs (parameter order) and writes DIR/output<i>.npy.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

Options ParseArgs(int argc, char** argv) {
  Options opts;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--device") {
      opts.device = value("--device");
      if (opts.device != "cpu" && opts.device != "cuda") {
        throw UsageError("--device must be cpu or cuda, got " + opts.device);
      }
    } else if (arg == "--func") {
      opts.func = value("--func");
    } else if (arg == "--out-dir") {
      opts.out_dir = value("--out-dir");
    } else if (arg == "--repeat") {
      const std::string n = value("--repeat");
      if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) {
        throw UsageError("--repeat takes a count of calls, got " + n);
      }
      opts.repeat = std::stoi(n);
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else if (opts.library.empty()) {
      opts.library = arg;
    } else {
      opts.inputs.push_back(arg);
    }
  }
  if (opts.library.empty()) throw UsageError("no model library given");
  return opts;
}

// NOTE [CUDA runtime]: the wheel keeps TVM's CUDA runtime in its own library, which needs the
// CUDA driver. The runner is linked only against the device-independent runtime (so it starts
// on machines without a GPU) and loads the CUDA part when asked for a CUDA device.
void LoadCudaRuntime() {
  const std::string path = std::string(AUTOCHUNK_TVM_LIB_DIR) + "/libtvm_runtime_cuda.so";
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    throw std::runtime_error("cannot load TVM's CUDA runtime (" + path + "): " + dlerror() +
                             "\nrun with --device cpu, or on a machine with a CUDA driver");
  }
}

ffi::Tensor ToDevice(const autochunk::NpyArray& host, DLDevice device) {
  static ffi::Function alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  static ffi::Function copy_from =
      ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
  ffi::Shape shape(host.shape.begin(), host.shape.end());
  ffi::Tensor tensor =
      alloc(shape, host.dtype, device, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();
  copy_from(tensor, static_cast<void*>(const_cast<char*>(host.data.data())), host.data.size());
  return tensor;
}

autochunk::NpyArray ToHost(const ffi::Tensor& tensor) {
  static ffi::Function copy_to = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
  autochunk::NpyArray host;
  host.dtype = tensor.dtype();
  for (int64_t d : tensor.shape()) host.shape.push_back(d);
  host.data.resize(static_cast<size_t>(host.numel()) * autochunk::ElementBytes(host.dtype));
  copy_to(tensor, static_cast<void*>(host.data.data()), host.data.size());
  return host;
}

// Outputs in order: a tensor, or (nested) tuples of tensors.
void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.try_cast<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto items = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) Flatten(item, out);
  } else {
    throw std::runtime_error("output of type " + value.GetTypeKey() +
                             " is neither a tensor nor a tuple of tensors");
  }
}

void Sync(DLDevice device) {
  static ffi::Function sync = ffi::Function::GetGlobalRequired("runtime.Device_StreamSync");
  sync(device, 0);
}

int Run(const Options& opts) {
  DLDevice device{kDLCPU, 0};
  if (opts.device == "cuda") {
    LoadCudaRuntime();
    device = DLDevice{kDLCUDA, 0};
  }
  ffi::Module lib = ffi::Module::LoadFromFile(opts.library);
  ffi::Optional<ffi::Function> load_exec = lib->GetFunction("vm_load_executable");
  if (!load_exec.has_value()) {
    throw std::runtime_error(opts.library +
                             " holds no Relax VM executable (build it with autochunk_tvm.build "
                             "or tvm.relax.build, then export_library)");
  }
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  // Devices with their allocators; the CPU is always there for shape computations.
  if (device.device_type == kDLCPU) {
    vm->GetFunction("vm_initialization").value()(int(kDLCPU), 0, kPooledAllocator);
  } else {
    vm->GetFunction("vm_initialization")
        .value()(int(device.device_type), device.device_id, kPooledAllocator, int(kDLCPU), 0,
                 kPooledAllocator);
  }
  ffi::Optional<ffi::Function> func = vm->GetFunction(opts.func);
  if (!func.has_value()) {
    throw std::runtime_error(opts.library + " has no function '" + opts.func + "'");
  }

  std::vector<ffi::Any> args;
  for (const std::string& path : opts.inputs)
    args.emplace_back(ToDevice(autochunk::LoadNpy(path), device));
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any result;
  func->CallPacked(views.data(), static_cast<int>(views.size()), &result);
  Sync(device);

  std::vector<ffi::Tensor> outputs;
  Flatten(result, &outputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::string path = opts.out_dir + "/output" + std::to_string(i) + ".npy";
    autochunk::NpyArray host = ToHost(outputs[i]);
    autochunk::SaveNpy(path, host);
    std::cout << path << ": " << autochunk::DTypeName(host.dtype) << " (";
    for (size_t d = 0; d < host.shape.size(); ++d) std::cout << (d ? ", " : "") << host.shape[d];
    std::cout << ")\n";
  }

  if (opts.repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < opts.repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      ffi::Any again;
      func->CallPacked(views.data(), static_cast<int>(views.size()), &again);
      Sync(device);
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
    std::sort(ms.begin(), ms.end());
    std::cout << "median " << ms[ms.size() / 2] << " ms over " << opts.repeat << " calls\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  try {
    opts = ParseArgs(argc, argv);
  } catch (const std::exception& err) {
    std::cerr << "autochunk_run: " << err.what() << "\n" << kUsage;
    return 2;
  }
  try {
    return Run(opts);
  } catch (const std::exception& err) {
    std::cerr << "autochunk_run: error: " << err.what() << "\n";
    return 1;
  }
}
