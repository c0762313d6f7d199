// The patch embed backward's d_pos / d_bias pass, per thread (cuda/patch_embed.cu: pos_grad_kernel
// runs it; tests/cpp/kernel_items.cpp runs it on the CPU, every thread of every block).
//
// A block of 32 x kPosGroups threads owns 32 * VEC hidden columns and `rows` token rows from t0.
// Thread (x, y) handles columns n .. n + VEC - 1 (n = (column block * 32 + x) * VEC) and the rows
// t0 + y, t0 + y + kPosGroups, ...: for each it sums dOut over the batch, in batch order, writes
// d_pos[t, n..] (when d_pos is given), and adds the row into its column sums. The kernel then adds
// the kPosGroups column sums of a column in order y = 0, 1, ... into partial[row chunk, n], and
// bias_grad adds the partials in chunk order: the same bits on every run.
#pragma once

#include <cstdint>

#include "davae_ext/host_device.h"
#include "davae_ext/vec.h"

namespace davae {

constexpr int kPosGroups = 8;

template <int VEC, typename T>
DAVAE_HD void pos_grad_thread(const T* grad, T* d_pos, int64_t B, int64_t T_, int64_t N, int64_t n, int64_t t0,
                              int rows, int y, float (&col)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) col[j] = 0.f;
  if (n >= N) return;  // N % VEC == 0 when VEC > 1
  const int end = T_ - t0 < rows ? static_cast<int>(T_ - t0) : rows;  // the last chunk may be short
#pragma unroll 4
  for (int r = y; r < end; r += kPosGroups) {
    const int64_t t = t0 + r;
    float v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = 0.f;
#pragma unroll 4  // independent loads in flight; the adds stay in batch order
    for (int64_t b = 0; b < B; ++b) {
      const Vec<T, VEC> g = load_vec<VEC>(grad + (b * T_ + t) * N + n);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] += static_cast<float>(g.v[j]);
    }
    if (d_pos != nullptr) {
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(v[j]);
      store_vec<VEC>(d_pos + t * N + n, o);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) col[j] += v[j];
  }
}

}  // namespace davae
