// The launch side of the elementwise kernels (latent_concat, detail_project, detail_align_loss):
// which vector width and which divider (divmod.h) their kernels are instantiated for.
#pragma once

#include "cuda_utils.cuh"
#include "davae_ext/divmod.h"
#include "davae_ext/plane_vectors.h"

namespace davae::cuda {

// f(vec, g): g = PlaneVectors<Div> over the vectors of a [B, channels, H, W] tensor, vec =
// std::integral_constant<int, VEC> (16 bytes' worth when HW is whole vectors and `aligned`, else 1),
// Div = FastDivmod when the vector indices fit it, else Divmod64. The kernel covers g.total items.
template <typename T, typename F>
void with_plane_vectors(int64_t B, int64_t channels, int64_t HW, bool aligned, F f) {
  with_vec<T>(HW, aligned, [&](auto vec) {
    constexpr int V = decltype(vec)::value;
    with_divmod(B * channels * HW / V, [&](auto div) { f(vec, plane_vectors<decltype(div)>(B, channels, HW, V)); });
  });
}

}  // namespace davae::cuda
