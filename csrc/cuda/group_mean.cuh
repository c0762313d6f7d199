// The group mean of Proj (Eq. 4) for one vector of a base-channel plane, shared by the
// detail_project and detail_align_loss kernels.
#pragma once

#include "cuda_utils.cuh"
#include "davae_ext/index_math.h"

namespace davae::cuda {

// acc[i] = mean_j detail[b, c * r + j, within * VEC + i], in float.
template <int VEC, typename T>
__device__ __forceinline__ void group_mean(const T* __restrict__ detail, int64_t b, int64_t c,
                                           int64_t within, int64_t r, int64_t D,
                                           int64_t vecs_per_plane, float (&acc)[VEC]) {
  using V = Vec<T, VEC>;
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  for (int64_t j = 0; j < r; ++j) {
    const int64_t plane = b * D + detail_channel(c, j, r);
    const V v = *reinterpret_cast<const V*>(detail + (plane * vecs_per_plane + within) * VEC);
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] += to_float(v.v[i]);
  }
  const float rf = static_cast<float>(r);
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] /= rf;
}

}  // namespace davae::cuda
