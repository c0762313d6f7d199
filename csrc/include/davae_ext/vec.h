// VEC elements of T moved as one access (16 bytes when VEC = 16 / sizeof(T)): the CUDA kernels'
// vector loads and stores, and the same code run on the CPU (patch_tile.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "davae_ext/host_device.h"

namespace davae {

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T>
constexpr int vec16() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// One VEC-wide load / store at an address aligned to sizeof(Vec<T, VEC>). On the host through
// memcpy (no type punning), which compiles to the same single move.
template <int VEC, typename T>
DAVAE_HD Vec<T, VEC> load_vec(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
#else
  Vec<T, VEC> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

template <int VEC, typename T>
DAVAE_HD void store_vec(T* p, const Vec<T, VEC>& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

}  // namespace davae
