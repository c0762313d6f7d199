// Host side of planes.h: a latent tensor as Planes, read in place whenever its H x W planes are
// contiguous, whatever its batch and channel strides.
#pragma once

#include <ATen/core/Tensor.h>

#include <type_traits>

#include "davae_ext/planes.h"

namespace davae {

// Whether t's H x W planes are contiguous (t is [B, channels, H, W]; a dimension of size 1 may
// have any stride).
inline bool planes_contiguous(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  return (W <= 1 || t.stride(3) == 1) && (H <= 1 || t.stride(2) == W);
}

// t when its planes are contiguous, else a contiguous copy (the only copy any op makes of a latent).
inline at::Tensor with_contiguous_planes(const at::Tensor& t) {
  return planes_contiguous(t) ? t : t.contiguous();
}

// t (planes contiguous) as Planes; the stride of a dimension of size 1 is never used and reads 0,
// so it cannot spoil the 16-byte alignment of the others. Planes<const T> to read, Planes<T> to write.
template <typename T>
Planes<T> planes_of(const at::Tensor& t) {
  T* data;
  if constexpr (std::is_const_v<T>) {
    data = static_cast<T*>(t.const_data_ptr());
  } else {
    data = static_cast<T*>(t.mutable_data_ptr());
  }
  return Planes<T>{data, t.size(0) > 1 ? t.stride(0) : 0, t.size(1) > 1 ? t.stride(1) : 0};
}

}  // namespace davae
