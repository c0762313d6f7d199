// A [B, channels, H, W] latent addressed through its batch and channel strides. Only its H x W
// planes must be contiguous, so channel-slice views of one latent (latent[:, :C], latent[:, C:]),
// batch-strided views and the pieces of torch.split / chunk are read and written in place, with
// no copy. Both devices' kernels take their latents as Planes (host side: host_planes.h).
#pragma once

#include <cstdint>

#include "davae_ext/host_device.h"
#include "davae_ext/vec.h"

namespace davae {

template <typename T>
struct Planes {
  T* data;
  int64_t batch_stride, channel_stride;  // in elements; 0 for a dimension of size 1

  DAVAE_HD T* plane(int64_t b, int64_t c) const { return data + b * batch_stride + c * channel_stride; }
};

// Every plane of p starts on a 16-byte boundary: the first one does and the strides are whole
// 16-byte vectors (the planes' own length is the caller's to check).
template <typename T>
bool planes_aligned16(const Planes<T>& p) {
  constexpr int64_t kVec = vec16<T>();
  return aligned16(p.data) && p.batch_stride % kVec == 0 && p.channel_stride % kVec == 0;
}

}  // namespace davae
