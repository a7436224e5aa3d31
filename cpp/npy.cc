#include "npy.h"

#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace autochunk {
namespace {

struct DTypeCode {
  const char* descr;  // without the byte-order character
  DLDataType dtype;
  const char* name;
};

// NOTE [bfloat16 in .npy]: numpy has no bfloat16; ml_dtypes' bfloat16 arrays are saved with
// the opaque descr 'V2'. It is the only two-byte void type TVM or ml_dtypes produce, so the
// runner reads 'V2' as bfloat16 and writes bfloat16 outputs as 'V2' (view them back with
// `np.load(p).view(ml_dtypes.bfloat16)`).
const DTypeCode kDTypes[] = {
    {"f4", {kDLFloat, 32, 1}, "float32"}, {"f8", {kDLFloat, 64, 1}, "float64"},
    {"f2", {kDLFloat, 16, 1}, "float16"}, {"V2", {kDLBfloat, 16, 1}, "bfloat16"},
    {"i8", {kDLInt, 64, 1}, "int64"},     {"i4", {kDLInt, 32, 1}, "int32"},
    {"i2", {kDLInt, 16, 1}, "int16"},     {"i1", {kDLInt, 8, 1}, "int8"},
    {"u8", {kDLUInt, 64, 1}, "uint64"},   {"u4", {kDLUInt, 32, 1}, "uint32"},
    {"u2", {kDLUInt, 16, 1}, "uint16"},   {"u1", {kDLUInt, 8, 1}, "uint8"},
    {"b1", {kDLBool, 8, 1}, "bool"},
};

bool SameDType(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

const DTypeCode* FindByDescr(const std::string& descr) {
  for (const DTypeCode& c : kDTypes) {
    if (descr == c.descr) return &c;
  }
  return nullptr;
}

const DTypeCode* FindByDType(DLDataType dtype) {
  for (const DTypeCode& c : kDTypes) {
    if (SameDType(dtype, c.dtype)) return &c;
  }
  return nullptr;
}

// The value of `key` in the header's Python dict literal, as raw text.
std::string HeaderField(const std::string& header, const std::string& key,
                        const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) {
    throw std::runtime_error(path + ": .npy header has no '" + key + "' field");
  }
  at = header.find(':', at);
  size_t begin = header.find_first_not_of(" ", at + 1);
  size_t end;
  if (header[begin] == '(') {
    end = header.find(')', begin) + 1;
  } else if (header[begin] == '\'') {
    end = header.find('\'', begin + 1) + 1;
  } else {
    end = header.find_first_of(",}", begin);
  }
  return header.substr(begin, end - begin);
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t ElementBytes(DLDataType dtype) { return (dtype.bits * dtype.lanes + 7) / 8; }

std::string DTypeName(DLDataType dtype) {
  const DTypeCode* c = FindByDType(dtype);
  if (c != nullptr) return c->name;
  std::ostringstream os;
  os << "dtype(code=" << int(dtype.code) << ", bits=" << int(dtype.bits)
     << ", lanes=" << dtype.lanes << ")";
  return os.str();
}

NpyArray LoadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open input file " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(path + " is not a .npy file (write inputs with numpy.save)");
  }
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char len[2];
    in.read(reinterpret_cast<char*>(len), 2);
    header_len = len[0] | (len[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char len[4];
    in.read(reinterpret_cast<char*>(len), 4);
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (uint32_t(len[3]) << 24);
  } else {
    throw std::runtime_error(path + ": unsupported .npy format version " + std::to_string(major));
  }
  std::string header(header_len, '\0');
  in.read(&header[0], header_len);
  if (!in) throw std::runtime_error(path + ": truncated .npy header");

  std::string descr = HeaderField(header, "descr", path);
  descr = descr.substr(1, descr.size() - 2);  // strip quotes
  if (!descr.empty() && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=')) {
    descr = descr.substr(1);
  } else if (!descr.empty() && descr[0] == '>') {
    throw std::runtime_error(path +
                             ": big-endian data; save it little-endian "
                             "(array.astype(array.dtype.newbyteorder('<')))");
  }
  const DTypeCode* code = FindByDescr(descr);
  if (code == nullptr) {
    throw std::runtime_error(path + ": unsupported dtype '" + descr +
                             "' (supported: float16/32/64, bfloat16, int8-64, uint8-64, bool)");
  }
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw std::runtime_error(path + ": Fortran-ordered array; save np.ascontiguousarray(a)");
  }

  NpyArray array;
  array.dtype = code->dtype;
  std::string shape = HeaderField(header, "shape", path);  // "(2, 3)" or "(4,)" or "()"
  std::istringstream dims(shape.substr(1, shape.size() - 2));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(" ") == std::string::npos) continue;
    array.shape.push_back(std::stoll(dim));
  }
  const size_t nbytes = static_cast<size_t>(array.numel()) * ElementBytes(array.dtype);
  array.data.resize(nbytes);
  in.read(array.data.data(), static_cast<std::streamsize>(nbytes));
  if (static_cast<size_t>(in.gcount()) != nbytes) {
    throw std::runtime_error(path + ": file holds fewer bytes than its shape needs");
  }
  return array;
}

void SaveNpy(const std::string& path, const NpyArray& array) {
  const DTypeCode* code = FindByDType(array.dtype);
  if (code == nullptr) {
    throw std::runtime_error("cannot write " + DTypeName(array.dtype) + " to .npy");
  }
  const char order = ElementBytes(array.dtype) == 1 ? '|' : '<';
  std::ostringstream dict;
  dict << "{'descr': '" << order << code->descr << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < array.shape.size(); ++i) {
    dict << array.shape[i] << (array.shape.size() == 1 || i + 1 < array.shape.size() ? "," : "");
    if (i + 1 < array.shape.size()) dict << " ";
  }
  dict << "), }";
  std::string header = dict.str();
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write output file " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(array.data.data(), static_cast<std::streamsize>(array.data.size()));
  if (!out) throw std::runtime_error("failed writing " + path);
}

}  // namespace autochunk
