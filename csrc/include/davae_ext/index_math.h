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

#include "davae_ext/host_device.h"

namespace davae {

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

// Element (m, k) of the patch matrix A, split the way the tiled forward kernel gathers it (a block
// computes the column part once per column, a thread the token part once per token): it is
// element column.offset + token.offset of batch entry token.b of base (column.is_base) or detail.
template <typename I>
struct ColumnSource {
  bool is_base;
  I offset;  // channel * H * W + py * W + px, in base or detail
};

template <typename I>
DAVAE_HD ColumnSource<I> patch_column_source(I k, I C, I D, I H, I W, I p, bool detail_first) {
  const PatchColumn<I> pc = patch_column<I>(k, p);
  const ChannelSource src = channel_source<I>(pc.ch, C, D, detail_first);
  return ColumnSource<I>{src.is_base, static_cast<I>(src.channel) * H * W + pc.py * W + pc.px};
}

template <typename I>
struct TokenSource {
  I b, offset;  // offset: (ty * p) * W + tx * p, the patch's top-left inside a plane
};

template <typename I>
DAVAE_HD TokenSource<I> patch_token_source(I m, I T, I Wp, I W, I p) {
  const TokenCoord<I> tc = token_coord<I>(m, T, Wp);
  return TokenSource<I>{tc.b, tc.ty * p * W + tc.tx * p};
}

// Element e of the latent pair, numbered in the concatenated latent's order (b, ch, y, x): its
// offset in its own tensor (base or detail) and in the patch matrix A [M, K]. The CUDA patch
// move's per-element fallback (the tile kernel of patch_tile.h is the main path).
template <typename I>
struct PatchElement {
  bool is_base;
  I source, a;
};

template <typename I>
DAVAE_HD PatchElement<I> patch_element(I e, I C, I D, I H, I W, I p, bool detail_first) {
  const I CD = C + D, HW = H * W, Wp = W / p, T = (H / p) * Wp, K = CD * p * p;
  const I q = e / HW;  // b * CD + ch
  const I yx = e - q * HW;
  const I b = q / CD;
  const I ch = q - b * CD;
  const I y = yx / W, x = yx - y * W;
  const ChannelSource src = channel_source<I>(ch, C, D, detail_first);
  const I plane = b * (src.is_base ? C : D) + static_cast<I>(src.channel);
  const I m = b * T + (y / p) * Wp + x / p;
  return PatchElement<I>{src.is_base, plane * HW + yx, m * K + ch * p * p + (y % p) * p + (x % p)};
}

// Reductions of the alignment loss, numbered like at::Reduction.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

}  // namespace davae
