// Index arithmetic shared by the CPU (.cpp) and CUDA (.cu) kernels, so that the CPU tests
// exercise exactly the math the GPU kernels use.
//
// Layouts (all NCHW; latents are addressed through planes.h, so only their H x W planes need be
// contiguous):
//   base    [B, C, H, W]           the pretrained VAE's latent
//   detail  [B, D, H, W]           the detail latent, D = r * C
//   latent  [B, C + D, H, W]       base then detail ("base_first"), or detail then base
//   tokens  [B, T, N]              T = (H / p) * (W / p), row-major token grid
// A patch row (one token) has K = (C + D) * p * p entries ordered like a Conv2d weight
// [N, C + D, p, p] flattened: k = ch * p * p + py * p + px, with ch a channel of `latent`
// (patch_tile.h moves them).
#pragma once

#include <cstdint>
#include <type_traits>

#include "davae_ext/host_device.h"

namespace davae {

// Channel `ch` of the concatenated latent: which input it comes from and its channel there.
// D = 0 (and base_first) is one latent of C channels, all of them "base".
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

// Host: f(std::integral_constant<int, P>) with P the patch size when it is 1, 2 or 4, else 0 (the
// kernels' loops over a patch unroll for the common sizes).
template <typename F>
void with_patch_size(int64_t p, F f) {
  switch (p) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

// Reductions of the alignment loss, numbered like at::Reduction.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

}  // namespace davae
