// Autograd of detail_patch_embed: one backward op computes exactly the gradients asked for
// (output_mask), from dOut and the saved base, detail and weight.
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct PatchEmbedBackwardOp {
  static constexpr const char* kName = "detail_patch_embed";
  static variable_list call(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                            const at::Tensor& weight, int64_t patch_size, bool detail_first,
                            std::array<bool, 4> output_mask) {
    static const auto op = op_handle<Grads5(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, int64_t, bool, std::array<bool, 4>)>(
        "davae_ext::detail_patch_embed_backward");
    auto [d_base, d_detail, d_weight, d_bias, d_pos] =
        op.call(grad, base, detail, weight, patch_size, detail_first, output_mask);
    return {d_base, d_detail, d_weight, d_bias, d_pos};
  }
};
using PatchEmbedBackward = BackwardOpFunction<PatchEmbedBackwardOp>;

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

class PatchEmbed : public torch::autograd::Function<PatchEmbed> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& base, const at::Tensor& detail,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_embed, int64_t patch_size,
                            bool detail_first) {
    ctx->save_for_backward({base, detail, weight});
    ctx->saved_data["patch_size"] = patch_size;
    ctx->saved_data["detail_first"] = detail_first;
    ctx->saved_data["has_bias"] = present(bias);
    ctx->saved_data["has_pos"] = present(pos_embed);
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&,
                                                const std::optional<at::Tensor>&, int64_t, bool)>(
        "davae_ext::detail_patch_embed");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(base, detail, weight, bias, pos_embed, patch_size, detail_first);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool has_pos = ctx->saved_data["has_pos"].toBool();
    // needs_input_grad counts tensor inputs only: a None bias has no edge.
    const size_t bias_edge = 3, pos_edge = has_bias ? 4 : 3;
    const bool need_base = ctx->needs_input_grad(0), need_detail = ctx->needs_input_grad(1);
    const std::array<bool, 4> mask{need_base || need_detail, ctx->needs_input_grad(2),
                                   has_bias && ctx->needs_input_grad(bias_edge),
                                   has_pos && ctx->needs_input_grad(pos_edge)};
    const variable_list d = PatchEmbedBackward::apply(grads[0], saved[0], saved[1], saved[2],
                                                      ctx->saved_data["patch_size"].toInt(),
                                                      ctx->saved_data["detail_first"].toBool(), mask);
    return {need_base ? d[0] : at::Tensor(), need_detail ? d[1] : at::Tensor(),
            mask[1] ? d[2] : at::Tensor(),   mask[2] ? d[3] : at::Tensor(),
            mask[3] ? d[4] : at::Tensor(),   at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor patch_embed_autograd(const at::Tensor& base, const at::Tensor& detail, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed,
                                int64_t patch_size, bool detail_first) {
  return PatchEmbed::apply(base, detail, weight, bias, pos_embed, patch_size, detail_first);
}

Grads5 patch_embed_backward_autograd(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                                     const at::Tensor& weight, int64_t patch_size, bool detail_first,
                                     std::array<bool, 4> output_mask) {
  const variable_list d =
      PatchEmbedBackward::apply(grad, base, detail, weight, patch_size, detail_first, output_mask);
  return {d[0], d[1], d[2], d[3], d[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) {
  m.impl("detail_patch_embed", &patch_embed_autograd);
  m.impl("detail_patch_embed_backward", &patch_embed_backward_autograd);
}

}  // namespace davae::autograd
