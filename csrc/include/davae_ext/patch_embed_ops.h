// The four patch-embed ops (detail_patch_embed, patch_embed and their backwards) on top of one
// device's forward and backward. The two forward ops are one computation: patch_embed's latent
// is detail_patch_embed's pair with D = 0 (base = the latent, detail unused). Each op checks its
// inputs on the host (checks.h), keeps its latents in place when their H x W planes are
// contiguous (host_planes.h) and calls
//   Impl::forward(base, detail, s, detail_first, weight, bias, pos_embed) -> out [B, T, N]
//   Impl::backward(grad, base, detail, s, detail_first, weight, output_mask)
//       -> (d_base, d_detail, d_weight, d_bias, d_pos_embed), the ones not asked for (and d_detail
//          when D = 0) as empty tensors of shape [0].
// cpu/patch_embed.cpp and cuda/patch_embed.cu register PatchEmbedOps<their Impl>.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"

namespace davae {

using PatchGrads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using PatchGrads4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename Impl>
struct PatchEmbedOps {
  static at::Tensor detail_patch_embed(const at::Tensor& base, const at::Tensor& detail, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& pos_embed, int64_t patch_size,
                                       bool detail_first) {
    const PatchShape s = check_patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size);
    return Impl::forward(with_contiguous_planes(base), with_contiguous_planes(detail), s, detail_first, weight,
                         bias, pos_embed);
  }

  static PatchGrads5 detail_patch_embed_backward(const at::Tensor& grad, const at::Tensor& base,
                                                 const at::Tensor& detail, const at::Tensor& weight,
                                                 int64_t patch_size, bool detail_first,
                                                 std::array<bool, 4> output_mask) {
    const PatchShape s = check_patch_embed_backward(grad, base, detail, weight, patch_size);
    return Impl::backward(grad, with_contiguous_planes(base), with_contiguous_planes(detail), s, detail_first,
                          weight, output_mask);
  }

  static at::Tensor patch_embed(const at::Tensor& latent, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed,
                                int64_t patch_size) {
    const PatchShape s = check_latent_patch_embed("patch_embed", latent, weight, bias, pos_embed, patch_size);
    const at::Tensor x = with_contiguous_planes(latent);
    return Impl::forward(x, x, s, false, weight, bias, pos_embed);
  }

  static PatchGrads4 patch_embed_backward(const at::Tensor& grad, const at::Tensor& latent, const at::Tensor& weight,
                                          int64_t patch_size, std::array<bool, 4> output_mask) {
    const PatchShape s = check_latent_patch_embed_backward(grad, latent, weight, patch_size);
    const at::Tensor x = with_contiguous_planes(latent);
    auto [d_latent, unused, d_weight, d_bias, d_pos] = Impl::backward(grad, x, x, s, false, weight, output_mask);
    return {d_latent, d_weight, d_bias, d_pos};
  }
};

// Registers the four ops in a TORCH_LIBRARY_IMPL block: register_patch_embed_ops<Impl>(m).
template <typename Impl, typename Library>
void register_patch_embed_ops(Library& m) {
  m.impl("detail_patch_embed", &PatchEmbedOps<Impl>::detail_patch_embed);
  m.impl("detail_patch_embed_backward", &PatchEmbedOps<Impl>::detail_patch_embed_backward);
  m.impl("patch_embed", &PatchEmbedOps<Impl>::patch_embed);
  m.impl("patch_embed_backward", &PatchEmbedOps<Impl>::patch_embed_backward);
}

}  // namespace davae
