// The per-vector work of the CUDA kernels of latent_concat, detail_project and detail_align_loss,
// as functions of the vector index. A CUDA thread runs them for the indices of its grid-stride
// loop (cuda/latent_concat.cu, detail_project.cu, detail_align_loss.cu); tests/cpp/kernel_items.cpp
// runs them for every index on the CPU and compares with a direct computation, so the GPU
// kernels' index math, vector accesses and float arithmetic are tested without a GPU. (The CPU
// kernels, cpu/*.cpp, copy and reduce whole planes instead.)
//
// A vector is VEC consecutive elements of one H x W plane: 16 bytes' worth when every plane is a
// whole number of them and every plane starts 16-byte aligned, else one element. Vector i of a
// grid over `channels` planes per batch entry is vector `within` = i % per_plane of plane (b, c),
// b * channels + c = i / per_plane; the divisions go through divmod.h. Inputs are read through
// their strides (planes.h); the outputs the ops allocate are contiguous, so a grid over the output
// writes vector i at element i * VEC.
#pragma once

#include <cstdint>

#include "davae_ext/divmod.h"
#include "davae_ext/host_device.h"
#include "davae_ext/index_math.h"
#include "davae_ext/planes.h"
#include "davae_ext/vec.h"

namespace davae {

template <typename I>
struct VectorPlace {
  I b, c, within;
};

template <typename Div>
struct PlaneVectors {
  using I = typename Div::index_t;
  Div per_plane;  // vectors per plane
  Div channels;   // planes per batch entry
  I total;        // vectors in the grid

  DAVAE_HD VectorPlace<I> place(I i) const {
    VectorPlace<I> v;
    I q;
    per_plane.divmod(i, q, v.within);
    channels.divmod(q, v.b, v.c);
    return v;
  }
};

// The vectors of [B, channels, H, W] planes, VEC elements each (HW % VEC == 0). Div must hold
// B * channels * HW / VEC (cuda/plane_launch.cuh picks it).
template <typename Div>
PlaneVectors<Div> plane_vectors(int64_t B, int64_t channels, int64_t HW, int vec) {
  return PlaneVectors<Div>{Div(HW / vec), Div(channels),
                           static_cast<typename Div::index_t>(B * channels * HW / vec)};
}

// The first element of vector `within` of plane (b, c).
template <int VEC, typename T, typename I>
DAVAE_HD T* vector_at(const Planes<T>& p, I b, int64_t c, I within) {
  return p.plane(b, c) + static_cast<int64_t>(within) * VEC;
}

// latent_concat: vector i of the concatenated latent [B, C + D, H, W] (contiguous) from the base
// or detail vector it belongs to. g: the latent's vectors (channels = C + D).
template <int VEC, typename T, typename Div>
DAVAE_HD void concat_vector(T* latent, const Planes<const T>& base, const Planes<const T>& detail,
                            const PlaneVectors<Div>& g, typename Div::index_t i, typename Div::index_t C,
                            typename Div::index_t D, bool detail_first) {
  using I = typename Div::index_t;
  const VectorPlace<I> v = g.place(i);
  const ChannelSource src = channel_source<I>(v.c, C, D, detail_first);
  const T* part = vector_at<VEC>(src.is_base ? base : detail, v.b, src.channel, v.within);
  store_vec<VEC>(latent + static_cast<int64_t>(i) * VEC, load_vec<VEC>(part));
}

// Proj (Eq. 4) at vector `within` of base plane (b, c): the mean over its group's r detail planes
// (c * r + j, index_math.h: detail_channel), in float, in order j = 0 .. r - 1.
template <int VEC, typename T, typename I>
DAVAE_HD void group_mean(const Planes<const T>& detail, I b, I c, I within, I r, float (&acc)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  for (I j = 0; j < r; ++j) {
    const Vec<T, VEC> x = load_vec<VEC>(vector_at<VEC>(detail, b, detail_channel<int64_t>(c, j, r), within));
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += static_cast<float>(x.v[k]);
  }
  const float rf = static_cast<float>(r);
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] /= rf;
}

// The backward of group_mean's gather: x into vector `within` of each of the r detail planes of
// base plane (b, c)'s group.
template <int VEC, typename T, typename I>
DAVAE_HD void store_to_group(const Planes<T>& d_detail, I b, I c, I within, I r, const Vec<T, VEC>& x) {
  for (I j = 0; j < r; ++j) store_vec<VEC>(vector_at<VEC>(d_detail, b, detail_channel<int64_t>(c, j, r), within), x);
}

// detail_project forward: vector i of Proj(detail) [B, C, H, W]. g: the output's vectors.
template <int VEC, typename T, typename Div>
DAVAE_HD void project_vector(const Planes<const T>& detail, T* out, const PlaneVectors<Div>& g,
                             typename Div::index_t r, typename Div::index_t i) {
  const VectorPlace<typename Div::index_t> v = g.place(i);
  float acc[VEC];
  group_mean<VEC>(detail, v.b, v.c, v.within, r, acc);
  Vec<T, VEC> o;
#pragma unroll
  for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<T>(acc[k]);
  store_vec<VEC>(out + static_cast<int64_t>(i) * VEC, o);
}

// detail_project backward: vector i of the gradient [B, C, H, W], divided by r, into each of the
// r detail vectors of its group. g: the gradient's vectors.
template <int VEC, typename T, typename Div>
DAVAE_HD void project_backward_vector(const Planes<const T>& grad, const Planes<T>& d_detail,
                                      const PlaneVectors<Div>& g, typename Div::index_t r,
                                      typename Div::index_t i) {
  const VectorPlace<typename Div::index_t> v = g.place(i);
  const Vec<T, VEC> gv = load_vec<VEC>(vector_at<VEC>(grad, v.b, v.c, v.within));
  const float inv_r = 1.f / static_cast<float>(r);
  Vec<T, VEC> o;
#pragma unroll
  for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<T>(static_cast<float>(gv.v[k]) * inv_r);
  store_to_group<VEC>(d_detail, v.b, v.c, v.within, r, o);
}

// detail_align_loss: diff = Proj(detail) - base at vector `within` of base plane (b, c), in float.
template <int VEC, typename T, typename I>
DAVAE_HD void align_diff_at(const Planes<const T>& detail, const Planes<const T>& base, const VectorPlace<I>& v, I r,
                            float (&diff)[VEC]) {
  group_mean<VEC>(detail, v.b, v.c, v.within, r, diff);
  const Vec<T, VEC> z = load_vec<VEC>(vector_at<VEC>(base, v.b, v.c, v.within));
#pragma unroll
  for (int k = 0; k < VEC; ++k) diff[k] -= static_cast<float>(z.v[k]);
}

// The same at vector i of the grid over base's planes.
template <int VEC, typename T, typename Div>
DAVAE_HD void align_diff(const Planes<const T>& detail, const Planes<const T>& base, const PlaneVectors<Div>& g,
                         typename Div::index_t r, typename Div::index_t i, float (&diff)[VEC]) {
  align_diff_at<VEC>(detail, base, g.place(i), r, diff);
}

// detail_align_loss backward at vector i: with d = scale * grad * diff (scale = 2, or 2 / n for
// the mean; grad per element when grad.data is given, reduction none, else the scalar g0),
// d_base = -d (contiguous, vector i) and each of the r detail vectors of the group gets d / r.
template <int VEC, typename T, typename Div>
DAVAE_HD void align_loss_backward_vector(const Planes<const T>& grad, float g0, float scale,
                                         const Planes<const T>& detail, const Planes<const T>& base,
                                         const Planes<T>& d_detail, T* d_base, const PlaneVectors<Div>& g,
                                         typename Div::index_t r, typename Div::index_t i) {
  const VectorPlace<typename Div::index_t> v = g.place(i);
  float diff[VEC];
  align_diff_at<VEC>(detail, base, v, r, diff);
  float gk[VEC];
  if (grad.data != nullptr) {
    const Vec<T, VEC> gv = load_vec<VEC>(vector_at<VEC>(grad, v.b, v.c, v.within));
#pragma unroll
    for (int k = 0; k < VEC; ++k) gk[k] = static_cast<float>(gv.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) gk[k] = g0;
  }
  const float inv_r = 1.f / static_cast<float>(r);
  Vec<T, VEC> db, dd;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float d_proj = scale * gk[k] * diff[k];
    db.v[k] = static_cast<T>(-d_proj);
    dd.v[k] = static_cast<T>(d_proj * inv_r);
  }
  store_vec<VEC>(d_base + static_cast<int64_t>(i) * VEC, db);
  store_to_group<VEC>(d_detail, v.b, v.c, v.within, r, dd);
}

}  // namespace davae
