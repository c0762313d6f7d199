// The launch side of the elementwise kernels (latent_concat, detail_project, detail_align_loss):
// which vector width and which divider (divmod.h) their kernels are instantiated for.
#pragma once

#include <type_traits>

#include "cuda_utils.cuh"
#include "davae_ext/divmod.h"
#include "davae_ext/plane_vectors.h"

namespace davae::cuda {

// f(vec, g): g = PlaneVectors<Div> over the vectors of a [B, channels, H, W] tensor and vec =
// std::integral_constant<int, VEC>. Up to 2^31 vectors: FastDivmod, with 16 bytes' worth per
// vector when HW is whole vectors and `aligned`, else one element. Beyond (over 32 GB of bf16 in
// 16-byte vectors): Divmod64 with one element per vector, the only width it is instantiated for,
// so the 64-bit path costs one kernel per op and dtype to compile (test_cuda_past_2_31_vectors
// launches it).
template <typename T, typename F>
void with_plane_vectors(int64_t B, int64_t channels, int64_t HW, bool aligned, F f) {
  const int64_t elems = B * channels * HW;
  bool fits = false;
  with_vec<T>(HW, aligned, [&](auto vec) {
    constexpr int V = decltype(vec)::value;
    if (elems / V < FastDivmod::kLimit) {
      fits = true;
      f(vec, plane_vectors<FastDivmod>(B, channels, HW, V));
    }
  });
  if (!fits) f(std::integral_constant<int, 1>{}, plane_vectors<Divmod64>(B, channels, HW, 1));
}

}  // namespace davae::cuda
