// torch.autocast rules of the fused ops: those of the eager PyTorch ops each one replaces (which
// are what davae_ext.reference runs), so under autocast the fused and the reference path compute
// in the same dtype, and a fused DetailPatchEmbed behaves like the Conv2d it replaces:
//   detail_patch_embed  a convolution       -> every input cast to the autocast dtype (bf16 / fp16)
//   patch_embed         a convolution       -> the same
//   detail_align_loss   mse_loss            -> both inputs cast to float32 (a float32 loss)
//   latent_concat       cat                 -> both inputs cast to the wider of their dtypes
//   detail_project      a mean              -> no rule: runs in its input's dtype
// The backward ops need no rule: autograd hands them tensors of their forward's dtypes, and the
// casts here are differentiable (gradients reach the original tensors in their own dtypes).
// Registered for CPU and CUDA autocast. Casts go through at::autocast::cached_cast: float64 and
// non-floating tensors are left alone, and a parameter cast once per autocast region is reused.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <optional>

#include "autograd/autograd_utils.h"

namespace davae {
namespace {

using at::autocast::cached_cast;
using autograd::op_handle;

template <c10::DeviceType kDevice>
struct AutocastRules {
  static at::Tensor detail_patch_embed(const at::Tensor& base, const at::Tensor& detail, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed,
                                int64_t patch_size, bool detail_first) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                int64_t, bool)>("davae_ext::detail_patch_embed");
    const at::ScalarType to = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
    return op.call(cached_cast(to, base, kDevice), cached_cast(to, detail, kDevice), cached_cast(to, weight, kDevice),
                   cached_cast(to, bias, kDevice), cached_cast(to, pos_embed, kDevice), patch_size, detail_first);
  }

  static at::Tensor patch_embed(const at::Tensor& latent, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& pos_embed, int64_t patch_size) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, int64_t)>("davae_ext::patch_embed");
    const at::ScalarType to = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
    return op.call(cached_cast(to, latent, kDevice), cached_cast(to, weight, kDevice), cached_cast(to, bias, kDevice),
                   cached_cast(to, pos_embed, kDevice), patch_size);
  }

  static at::Tensor align_loss(const at::Tensor& detail, const at::Tensor& base, int64_t reduction) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("davae_ext::detail_align_loss");
    return op.call(cached_cast(at::kFloat, detail, kDevice), cached_cast(at::kFloat, base, kDevice), reduction);
  }

  static at::Tensor concat(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>("davae_ext::latent_concat");
    if (base.scalar_type() == detail.scalar_type() || !base.is_floating_point() || !detail.is_floating_point()) {
      return op.call(base, detail, detail_first);  // nothing to do (or the op's own checks say what is wrong)
    }
    const at::ScalarType to = at::promote_types(base.scalar_type(), detail.scalar_type());
    return op.call(cached_cast(to, base, kDevice), cached_cast(to, detail, kDevice), detail_first);
  }
};

template <c10::DeviceType kDevice>
void register_rules(torch::Library& m) {
  m.impl("detail_patch_embed", &AutocastRules<kDevice>::detail_patch_embed);
  m.impl("patch_embed", &AutocastRules<kDevice>::patch_embed);
  m.impl("detail_align_loss", &AutocastRules<kDevice>::align_loss);
  m.impl("latent_concat", &AutocastRules<kDevice>::concat);
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, AutocastCPU, m) { register_rules<c10::DeviceType::CPU>(m); }

TORCH_LIBRARY_IMPL(davae_ext, AutocastCUDA, m) { register_rules<c10::DeviceType::CUDA>(m); }

}  // namespace davae
