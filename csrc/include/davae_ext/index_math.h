// Index arithmetic shared by the CPU (.cpp) and CUDA (.cu) kernels, so that the CPU tests
// exercise exactly the math the GPU kernels use.
//
// Layouts (all NCHW, contiguous after the host wrappers):
//   base    [B, C, H, W]           the pretrained VAE's latent
//   detail  [B, D, H, W]           the detail latent, D = r * C
//   latent  [B, C + D, H, W]       base then detail ("base_first"), or detail then base
//   tokens  [B, T, N]              T = (H / p) * (W / p), row-major token grid
// A patch row (one token) has K = (C + D) * p * p entries ordered like a Conv2d weight
// [N, C + D, p, p] flattened: k = ch * p * p + py * p + px, with ch a channel of `latent`.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DAVAE_HD __host__ __device__ __forceinline__
#else
#define DAVAE_HD inline
#endif

namespace davae {

// Where the base and detail channels start inside the concatenated latent.
struct ConcatLayout {
  int64_t base_offset;
  int64_t detail_offset;
};

DAVAE_HD ConcatLayout concat_layout(int64_t C, int64_t D, bool detail_first) {
  return detail_first ? ConcatLayout{D, 0} : ConcatLayout{0, C};
}

// Channel `ch` of the concatenated latent: which input it comes from and its channel there.
struct ChannelSource {
  bool is_base;
  int64_t channel;
};

template <typename I>
DAVAE_HD ChannelSource channel_source(I ch, I C, I D, bool detail_first) {
  if (detail_first) {
    return ch < D ? ChannelSource{false, ch} : ChannelSource{true, ch - D};
  }
  return ch < C ? ChannelSource{true, ch} : ChannelSource{false, ch - C};
}

// Projection (Eq. 4): base channel c is the mean of detail channels [c * r, (c + 1) * r).
template <typename I>
DAVAE_HD I group_size(I C, I D) { return D / C; }

template <typename I>
DAVAE_HD I detail_channel(I c, I j, I r) { return c * r + j; }

// Patch embedding: token row m = b * T + t, t = ty * Wp + tx.
template <typename I>
struct TokenCoord {
  I b, ty, tx;
};

template <typename I>
DAVAE_HD TokenCoord<I> token_coord(I m, I T, I Wp) {
  const I b = m / T;
  const I t = m - b * T;
  const I ty = t / Wp;
  return TokenCoord<I>{b, ty, t - ty * Wp};
}

// Patch column k -> (channel of the concatenated latent, row and column inside the patch).
template <typename I>
struct PatchColumn {
  I ch, py, px;
};

template <typename I>
DAVAE_HD PatchColumn<I> patch_column(I k, I p) {
  const I pp = p * p;
  const I ch = k / pp;
  const I rem = k - ch * pp;
  const I py = rem / p;
  return PatchColumn<I>{ch, py, rem - py * p};
}

// Offset of element (token m, column k) inside its source tensor (base or detail, NCHW
// contiguous with `src_channels` channels). `is_base` says which source.
template <typename I>
DAVAE_HD I patch_source_offset(I m, I k, I C, I D, I H, I W, I p, bool detail_first,
                               bool* is_base) {
  const I Wp = W / p;
  const I T = (H / p) * Wp;
  const TokenCoord<I> tc = token_coord(m, T, Wp);
  const PatchColumn<I> pc = patch_column(k, p);
  const ChannelSource src = channel_source<I>(pc.ch, C, D, detail_first);
  *is_base = src.is_base;
  const I src_channels = src.is_base ? C : D;
  const I y = tc.ty * p + pc.py;
  const I x = tc.tx * p + pc.px;
  return ((tc.b * src_channels + static_cast<I>(src.channel)) * H + y) * W + x;
}

// Reductions of the alignment loss, numbered like at::Reduction.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

}  // namespace davae
