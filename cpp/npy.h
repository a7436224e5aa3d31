// Reading and writing NumPy .npy files (format versions 1.0-3.0, C order, little-endian).
//
// The runner's only I/O format: `np.save` writes what it reads and `np.load` reads what it
// writes. A dtype is carried as a DLPack DLDataType so tensors go to and from TVM unchanged.
#ifndef AUTOCHUNK_TVM_CPP_NPY_H_
#define AUTOCHUNK_TVM_CPP_NPY_H_

#include <dlpack/dlpack.h>

#include <cstdint>
#include <string>
#include <vector>

namespace autochunk {

struct NpyArray {
  DLDataType dtype{};
  std::vector<int64_t> shape;
  std::vector<char> data;  // numel * element size bytes, C order

  int64_t numel() const;
};

// Bytes of one element of `dtype` (sub-byte and vector types are rejected by the parser).
size_t ElementBytes(DLDataType dtype);

// "float32", "int64", ... for messages.
std::string DTypeName(DLDataType dtype);

// Throws std::runtime_error saying what is wrong with the file and what is supported.
NpyArray LoadNpy(const std::string& path);

// Throws std::runtime_error when the file cannot be written.
void SaveNpy(const std::string& path, const NpyArray& array);

}  // namespace autochunk

#endif  // AUTOCHUNK_TVM_CPP_NPY_H_
