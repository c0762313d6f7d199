// The per-vector work of the CUDA kernels of latent_concat, detail_project and detail_align_loss,
// as functions of the vector index. A CUDA thread runs them for the indices of its grid-stride
// loop (cuda/latent_concat.cu, detail_project.cu, detail_align_loss.cu); tests/cpp/kernel_items.cpp
// runs them for every index on the CPU and compares with a direct computation, so the GPU
// kernels' index math, vector accesses and float arithmetic are tested without a GPU. (The CPU
// kernels, cpu/*.cpp, copy and reduce whole planes instead.)
//
// A vector is VEC consecutive elements of one H x W plane: 16 bytes' worth when every plane is a
// whole number of them and the pointers are 16-byte aligned, else one element. Vector i of a
// tensor with `channels` planes per batch entry is vector i % per_plane of plane
// q = i / per_plane = b * channels + channel. The divisions go through divmod.h.
#pragma once

#include <cstdint>

#include "davae_ext/divmod.h"
#include "davae_ext/host_device.h"
#include "davae_ext/index_math.h"
#include "davae_ext/vec.h"

namespace davae {

template <typename Div>
struct PlaneVectors {
  using I = typename Div::index_t;
  Div per_plane;  // vectors per plane
  Div channels;   // planes per batch entry
  I total;        // vectors in the tensor

  // Vector i -> plane q and the vector's place in it.
  DAVAE_HD void plane_of(I i, I& q, I& within) const { per_plane.divmod(i, q, within); }
};

// The vectors of a [B, channels, H, W] tensor, VEC elements each (HW % VEC == 0). Div must hold
// B * channels * HW / VEC (cuda/plane_launch.cuh picks it).
template <typename Div>
PlaneVectors<Div> plane_vectors(int64_t B, int64_t channels, int64_t HW, int vec) {
  return PlaneVectors<Div>{Div(HW / vec), Div(channels),
                           static_cast<typename Div::index_t>(B * channels * HW / vec)};
}

// Element offset of vector `within` of a plane, in 64 bits: a detail plane's index (q * r + j)
// and an element index may pass what the divider's index type holds.
template <int VEC, typename I>
DAVAE_HD int64_t vector_offset(int64_t plane, I within, I per_plane) {
  return (plane * per_plane + within) * VEC;
}

// Plane j of the detail group of base plane q = b * C + c: b * D + c * r + j = q * r + j (D = r * C,
// index_math.h: detail_channel).
template <typename I>
DAVAE_HD int64_t group_plane(I q, I j, I r) {
  return static_cast<int64_t>(q) * r + j;
}

// latent_concat: vector i of the concatenated latent [B, C + D, H, W] from (kSplit = false) or
// to (kSplit = true) the base or detail vector it belongs to. g: the latent's vectors
// (channels = C + D).
template <bool kSplit, int VEC, typename T, typename Div>
DAVAE_HD void concat_vector(T* latent, T* base, T* detail, const PlaneVectors<Div>& g,
                            typename Div::index_t i, typename Div::index_t C,
                            typename Div::index_t D, bool detail_first) {
  using I = typename Div::index_t;
  I q, within, b, ch;
  g.plane_of(i, q, within);
  g.channels.divmod(q, b, ch);
  const ChannelSource src = channel_source<I>(ch, C, D, detail_first);
  const int64_t part_plane = static_cast<int64_t>(b) * (src.is_base ? C : D) + src.channel;
  T* part = (src.is_base ? base : detail) + vector_offset<VEC>(part_plane, within, static_cast<I>(g.per_plane.d));
  T* whole = latent + static_cast<int64_t>(i) * VEC;
  if constexpr (kSplit) {
    store_vec<VEC>(part, load_vec<VEC>(whole));
  } else {
    store_vec<VEC>(whole, load_vec<VEC>(part));
  }
}

// Proj (Eq. 4) at vector `within` of base plane q: the mean over its group's r detail planes, in
// float, in order j = 0 .. r - 1.
template <int VEC, typename T, typename I>
DAVAE_HD void group_mean(const T* detail, I q, I within, I per_plane, I r, float (&acc)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  for (I j = 0; j < r; ++j) {
    const Vec<T, VEC> v = load_vec<VEC>(detail + vector_offset<VEC>(group_plane(q, j, r), within, per_plane));
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += static_cast<float>(v.v[k]);
  }
  const float rf = static_cast<float>(r);
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] /= rf;
}

// The backward of group_mean's gather: v into vector `within` of each of the r detail planes of
// base plane q's group.
template <int VEC, typename T, typename I>
DAVAE_HD void store_to_group(T* d_detail, I q, I within, I per_plane, I r, const Vec<T, VEC>& v) {
  for (I j = 0; j < r; ++j) store_vec<VEC>(d_detail + vector_offset<VEC>(group_plane(q, j, r), within, per_plane), v);
}

// detail_project forward: vector i of Proj(detail) [B, C, H, W]. g: the output's vectors.
template <int VEC, typename T, typename Div>
DAVAE_HD void project_vector(const T* detail, T* out, const PlaneVectors<Div>& g, typename Div::index_t r,
                             typename Div::index_t i) {
  using I = typename Div::index_t;
  I q, within;
  g.plane_of(i, q, within);
  float acc[VEC];
  group_mean<VEC>(detail, q, within, static_cast<I>(g.per_plane.d), r, acc);
  Vec<T, VEC> o;
#pragma unroll
  for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<T>(acc[k]);
  store_vec<VEC>(out + static_cast<int64_t>(i) * VEC, o);
}

// detail_project backward: vector i of the gradient [B, C, H, W], divided by r, into each of the
// r detail vectors of its group.
template <int VEC, typename T, typename Div>
DAVAE_HD void project_backward_vector(const T* grad, T* d_detail, const PlaneVectors<Div>& g,
                                      typename Div::index_t r, typename Div::index_t i) {
  using I = typename Div::index_t;
  I q, within;
  g.plane_of(i, q, within);
  const Vec<T, VEC> gv = load_vec<VEC>(grad + static_cast<int64_t>(i) * VEC);
  const float inv_r = 1.f / static_cast<float>(r);
  Vec<T, VEC> o;
#pragma unroll
  for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<T>(static_cast<float>(gv.v[k]) * inv_r);
  store_to_group<VEC>(d_detail, q, within, static_cast<I>(g.per_plane.d), r, o);
}

// detail_align_loss: diff = Proj(detail) - base at vector i of base [B, C, H, W], which is vector
// `within` of plane q, in float.
template <int VEC, typename T, typename I>
DAVAE_HD void align_diff_at(const T* detail, const T* base, I q, I within, I per_plane, I r, I i, float (&diff)[VEC]) {
  group_mean<VEC>(detail, q, within, per_plane, r, diff);
  const Vec<T, VEC> z = load_vec<VEC>(base + static_cast<int64_t>(i) * VEC);
#pragma unroll
  for (int k = 0; k < VEC; ++k) diff[k] -= static_cast<float>(z.v[k]);
}

template <int VEC, typename T, typename Div>
DAVAE_HD void align_diff(const T* detail, const T* base, const PlaneVectors<Div>& g, typename Div::index_t r,
                         typename Div::index_t i, float (&diff)[VEC]) {
  using I = typename Div::index_t;
  I q, within;
  g.plane_of(i, q, within);
  align_diff_at<VEC>(detail, base, q, within, static_cast<I>(g.per_plane.d), r, i, diff);
}

// detail_align_loss backward at vector i: with d = scale * grad * diff (scale = 2, or 2 / n for
// the mean; grad per element when `grad` is given, reduction none, else the scalar g0),
// d_base = -d and each of the r detail vectors of the group gets d / r.
template <int VEC, typename T, typename Div>
DAVAE_HD void align_loss_backward_vector(const T* grad, float g0, float scale, const T* detail, const T* base,
                                         T* d_detail, T* d_base, const PlaneVectors<Div>& g,
                                         typename Div::index_t r, typename Div::index_t i) {
  using I = typename Div::index_t;
  const I per_plane = static_cast<I>(g.per_plane.d);
  I q, within;
  g.plane_of(i, q, within);
  float diff[VEC];
  align_diff_at<VEC>(detail, base, q, within, per_plane, r, i, diff);
  float gk[VEC];
  if (grad != nullptr) {
    const Vec<T, VEC> gv = load_vec<VEC>(grad + static_cast<int64_t>(i) * VEC);
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
  store_to_group<VEC>(d_detail, q, within, per_plane, r, dd);
}

}  // namespace davae
