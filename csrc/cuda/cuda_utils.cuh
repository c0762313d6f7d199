// Helpers shared by the CUDA kernels: dtype dispatch (float, half, bfloat16 only: no double on
// CUDA), 16-byte vectors, launch sizing and a deterministic block reduction.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "davae_ext/vec.h"

#define DAVAE_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                           \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

namespace davae::cuda {

constexpr int kThreads = 256;

// Grid size for `work` items of kThreads each, capped for grid-stride loops.
inline int64_t blocks_for(int64_t work, int64_t cap = 65535LL * 8) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return b < 1 ? 1 : (b > cap ? cap : b);
}

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  return static_cast<T>(x);
}

// Calls launch(std::integral_constant<int, VEC>) with VEC = 16 / sizeof(T) when rows of `inner`
// elements split into whole 16-byte vectors and the pointers are aligned, else with VEC = 1.
template <typename T, typename Launch>
void with_vec(int64_t inner, bool aligned, Launch launch) {
  constexpr int kVec = vec16<T>();
  if (inner % kVec == 0 && aligned) {
    launch(std::integral_constant<int, kVec>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// Sum over the block in a fixed order (warp shuffles, then warp 0): same bits on every run.
// Must be called by all threads of the block; the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? warp_sums[lane] : 0.f;
  if (warp == 0) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

}  // namespace davae::cuda
