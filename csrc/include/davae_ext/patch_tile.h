// Moving patches between the latent pair (base, detail) and the patch-row matrix A [M, K] (the
// patch embed's im2col without a concat, and its exact inverse), one tile at a time, in two
// phases through a tile buffer. The CUDA kernel (cuda/patch_embed.cu) runs each phase with the
// threads of a block, the buffer in shared memory and a __syncthreads between the phases; the CPU
// kernel (cpu/patch_embed.cpp) runs the same two functions with one thread. So the CPU tests
// check the GPU's index math, vector accesses and partial tiles; what they cannot check is the
// launch (grid, shared-memory size) and the barrier.
//
// A tile is nt <= tile_tokens consecutive tokens tx0 .. tx0 + nt - 1 of token row (b, ty). Its
// patch rows are the contiguous rows m0 .. m0 + nt - 1 of A (m0 = (b * Hp + ty) * Wp + tx0); the
// buffer holds them with row stride lds >= K. Its source is R = (C + D) * p line segments of
// nt * p elements: segment r = ch * p + py is line ty * p + py of channel ch of the concatenated
// latent (index_math.h: channel_source; D = 0 is one latent, all base), from x = tx0 * p. The
// latents are read and written through their strides (planes.h). Element e of segment r belongs to
// token tx0 + e / p, patch column k = ch * p^2 + py * p + e % p = r * p + e % p.
//
//   latent phase: segments <-> buffer. Work item i = v * R + r (r fastest, so neighbouring
//                 threads write neighbouring buffer columns) moves elements v * VEC .. v * VEC +
//                 VEC - 1 of segment r with one VEC-wide global access.
//   rows phase:   buffer <-> the tile's rows of A, VEC-wide on both sides.
// Gather (A <- latent): latent phase, then rows phase. Scatter (latent <- A): the reverse.
// Each thread issues kTileBatch work items' global loads before it uses any of them.
#pragma once

#include <cstdint>
#include <type_traits>

#include "davae_ext/index_math.h"
#include "davae_ext/planes.h"
#include "davae_ext/vec.h"

namespace davae {

struct PatchTileArgs {
  int64_t C, D, H, W, p, Hp, Wp, K;
  int64_t tile_tokens, tiles_per_row, lds;
  bool detail_first;
};

struct PatchTile {
  int64_t b, ty, tx0, m0;
  int nt;
};

constexpr int kTileBatch = 4;

DAVAE_HD PatchTile patch_tile(int64_t tile, const PatchTileArgs& a) {
  const int64_t row = tile / a.tiles_per_row;  // b * Hp + ty
  const int64_t tx0 = (tile - row * a.tiles_per_row) * a.tile_tokens;
  const int64_t b = row / a.Hp;
  const int64_t left = a.Wp - tx0;
  return PatchTile{b, row - b * a.Hp, tx0, row * a.Wp + tx0,
                   static_cast<int>(left < a.tile_tokens ? left : a.tile_tokens)};
}

// Element e of a segment whose first buffer column is col: its place in the tile buffer.
DAVAE_HD int tile_buffer_index(int e, int col, int p, int lds) { return (e / p) * lds + col + e % p; }

// P: the patch size when known at compile time (1, 2, 4), else 0 (read from a.p). L: T for the
// scatter (it writes the latents), const T for the gather.
template <bool kScatter, int P, int VEC, typename T, typename L>
DAVAE_HD void patch_tile_latent_phase(const Planes<L>& base, const Planes<L>& detail, T* buf, const PatchTileArgs& a,
                                      const PatchTile& t, int first, int step) {
  const int p = P > 0 ? P : static_cast<int>(a.p);
  const int R = static_cast<int>(a.C + a.D) * p;
  const int items = R * (t.nt * p / VEC);
  const int lds = static_cast<int>(a.lds);
  for (int i0 = first; i0 < items; i0 += step * kTileBatch) {
    L* seg[kTileBatch];
    int col[kTileBatch], e0[kTileBatch];
    Vec<T, VEC> x[kTileBatch];
#pragma unroll
    for (int u = 0; u < kTileBatch; ++u) {
      const int i = i0 + u * step;
      if (i >= items) continue;
      const int v = i / R;
      const int r = i - v * R;
      const int ch = r / p;
      const ChannelSource src = channel_source<int64_t>(ch, a.C, a.D, a.detail_first);
      L* plane = (src.is_base ? base : detail).plane(t.b, src.channel);
      seg[u] = plane + (t.ty * p + (r - ch * p)) * a.W + t.tx0 * p + int64_t{v} * VEC;
      col[u] = r * p;
      e0[u] = v * VEC;
      if constexpr (kScatter) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) x[u].v[j] = buf[tile_buffer_index(e0[u] + j, col[u], p, lds)];
      } else {
        x[u] = load_vec<VEC>(seg[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kTileBatch; ++u) {
      if (i0 + u * step >= items) continue;
      if constexpr (kScatter) {
        store_vec<VEC>(seg[u], x[u]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) buf[tile_buffer_index(e0[u] + j, col[u], p, lds)] = x[u].v[j];
      }
    }
  }
}

template <bool kScatter, int VEC, typename T>
DAVAE_HD void patch_tile_rows_phase(T* A, T* buf, const PatchTileArgs& a, const PatchTile& t, int first,
                                    int step) {
  const int per_row = static_cast<int>(a.K / VEC);
  const int items = t.nt * per_row;
  const int lds = static_cast<int>(a.lds);
  T* rows = A + t.m0 * a.K;  // the tile's rows are contiguous: item i is at rows + i * VEC
  for (int i0 = first; i0 < items; i0 += step * kTileBatch) {
    T* in_rows[kTileBatch];
    T* in_buf[kTileBatch];
    Vec<T, VEC> x[kTileBatch];
#pragma unroll
    for (int u = 0; u < kTileBatch; ++u) {
      const int i = i0 + u * step;
      if (i >= items) continue;
      const int r = i / per_row;
      in_rows[u] = rows + int64_t{i} * VEC;
      in_buf[u] = buf + r * lds + (i - r * per_row) * VEC;
      x[u] = load_vec<VEC>(kScatter ? in_rows[u] : in_buf[u]);
    }
#pragma unroll
    for (int u = 0; u < kTileBatch; ++u) {
      if (i0 + u * step >= items) continue;
      store_vec<VEC>(kScatter ? in_buf[u] : in_rows[u], x[u]);
    }
  }
}

// The host's plan: tile_tokens (at most max_tokens, and a buffer of at most buffer_bytes), the
// vector width (16 bytes when every access can be one: W, K and the tile's token span in whole
// vectors, `aligned` = A and every plane of base and detail 16-byte aligned; else 1), and how
// many tiles.
struct PatchTilePlan {
  PatchTileArgs args;
  int vec;
  int64_t tiles, buffer_elems;
};

// False when a single patch row does not fit the buffer (the caller then moves the patches its
// own way) or the index math inside a tile would not fit an int.
inline bool plan_patch_tiles(int64_t B, int64_t C, int64_t D, int64_t H, int64_t W, int64_t p, bool detail_first,
                             int elem_bytes, bool aligned, int64_t max_tokens, int64_t buffer_bytes,
                             PatchTilePlan& plan) {
  const int64_t K = (C + D) * p * p, Hp = H / p, Wp = W / p;
  const int full = 16 / elem_bytes;
  const int64_t lds = K + full;  // keeps 16-byte rows when K is whole vectors; shifts the banks
  int64_t cap = buffer_bytes / (lds * elem_bytes);
  if (cap > max_tokens) cap = max_tokens;
  if (cap < 1 || Wp < 1 || lds * cap >= (int64_t{1} << 30)) return false;
  int64_t tokens = Wp <= cap ? Wp : cap;
  bool vec = aligned && W % full == 0 && K % full == 0;
  if (vec && tokens < Wp) {  // every tile but the last must span whole vectors
    const int64_t rounded = tokens / full * full;
    if (rounded > 0) {
      tokens = rounded;
    } else {
      vec = false;
    }
  }
  plan.args = PatchTileArgs{C, D, H, W, p, Hp, Wp, K, tokens, (Wp + tokens - 1) / tokens, lds, detail_first};
  plan.vec = vec ? full : 1;
  plan.tiles = B * Hp * plan.args.tiles_per_row;
  plan.buffer_elems = tokens * lds;
  return true;
}

// f(std::integral_constant<int, VEC>) with the plan's vector width for T (16 bytes, or 1).
template <typename T, typename F>
void with_tile_vec(const PatchTilePlan& plan, F f) {
  if (plan.vec == vec16<T>()) {
    f(std::integral_constant<int, vec16<T>()>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

}  // namespace davae
