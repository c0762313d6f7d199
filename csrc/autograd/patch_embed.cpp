// Autograd of detail_patch_embed and patch_embed: one backward op computes exactly the gradients
// asked for (output_mask), from dOut and the saved latents and weight. patch_embed's d_latent is
// one tensor, written once: the SD3 transformer's pos_embed(latent) gets no slice gradients to
// zero-fill and add.
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Grads4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Mask = std::array<bool, 4>;
using OptTensor = std::optional<at::Tensor>;

struct DetailPatchEmbedBackwardOp {
  static constexpr const char* kName = "detail_patch_embed";
  static variable_list call(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                            const at::Tensor& weight, int64_t patch_size, bool detail_first, Mask output_mask) {
    static const auto op = op_handle<Grads5(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, int64_t, bool, Mask)>(
        "davae_ext::detail_patch_embed_backward");
    auto [d_base, d_detail, d_weight, d_bias, d_pos] =
        op.call(grad, base, detail, weight, patch_size, detail_first, output_mask);
    return {d_base, d_detail, d_weight, d_bias, d_pos};
  }
};
using DetailPatchEmbedBackward = BackwardOpFunction<DetailPatchEmbedBackwardOp>;

struct PatchEmbedBackwardOp {
  static constexpr const char* kName = "patch_embed";
  static variable_list call(const at::Tensor& grad, const at::Tensor& latent, const at::Tensor& weight,
                            int64_t patch_size, Mask output_mask) {
    static const auto op =
        op_handle<Grads4(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, Mask)>(
            "davae_ext::patch_embed_backward");
    auto [d_latent, d_weight, d_bias, d_pos] = op.call(grad, latent, weight, patch_size, output_mask);
    return {d_latent, d_weight, d_bias, d_pos};
  }
};
using PatchEmbedBackward = BackwardOpFunction<PatchEmbedBackwardOp>;

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// Saves whether bias and pos_embed were given (a None has no autograd edge).
void save_epilogue(AutogradContext* ctx, const OptTensor& bias, const OptTensor& pos_embed) {
  ctx->saved_data["has_bias"] = present(bias);
  ctx->saved_data["has_pos"] = present(pos_embed);
}

// Which of (weight, bias, pos_embed) need a gradient, for a forward whose weight is tensor input
// `weight_edge`: needs_input_grad counts tensor inputs only, so a None bias shifts pos_embed's edge.
// With one batch entry d_pos_embed is dOut itself (the sum over a batch of one), which autograd
// takes as it is, as it does for eager broadcasting: `pos_is_grad`, and the kernel is not asked.
struct ParamGrads {
  bool weight, bias, pos, pos_is_grad;
};

ParamGrads param_grads(AutogradContext* ctx, size_t weight_edge, int64_t batch) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  const bool has_pos = ctx->saved_data["has_pos"].toBool();
  const size_t pos_edge = has_bias ? weight_edge + 2 : weight_edge + 1;
  const bool pos = has_pos && ctx->needs_input_grad(pos_edge);
  return {ctx->needs_input_grad(weight_edge), has_bias && ctx->needs_input_grad(weight_edge + 1), pos && batch != 1,
          pos && batch == 1};
}

// d_pos_embed: the kernel's, or dOut itself for a batch of one.
at::Tensor pos_grad(const ParamGrads& p, const at::Tensor& from_kernel, const at::Tensor& grad) {
  return p.pos_is_grad ? grad : (p.pos ? from_kernel : at::Tensor());
}

at::Tensor detail_patch_embed_below_autograd(const at::Tensor& base, const at::Tensor& detail,
                                             const at::Tensor& weight, const OptTensor& bias,
                                             const OptTensor& pos_embed, int64_t patch_size, bool detail_first) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptTensor&, const OptTensor&, int64_t, bool)>(
      "davae_ext::detail_patch_embed");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(base, detail, weight, bias, pos_embed, patch_size, detail_first);
}

at::Tensor patch_embed_below_autograd(const at::Tensor& latent, const at::Tensor& weight, const OptTensor& bias,
                                      const OptTensor& pos_embed, int64_t patch_size) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                              const OptTensor&, int64_t)>("davae_ext::patch_embed");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(latent, weight, bias, pos_embed, patch_size);
}

class DetailPatchEmbed : public torch::autograd::Function<DetailPatchEmbed> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& base, const at::Tensor& detail,
                            const at::Tensor& weight, const OptTensor& bias, const OptTensor& pos_embed,
                            int64_t patch_size, bool detail_first) {
    ctx->save_for_backward({base, detail, weight});
    ctx->saved_data["patch_size"] = patch_size;
    ctx->saved_data["detail_first"] = detail_first;
    save_epilogue(ctx, bias, pos_embed);
    return detail_patch_embed_below_autograd(base, detail, weight, bias, pos_embed, patch_size, detail_first);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool need_base = ctx->needs_input_grad(0), need_detail = ctx->needs_input_grad(1);
    const ParamGrads p = param_grads(ctx, 2, saved[0].size(0));
    const Mask mask{need_base || need_detail, p.weight, p.bias, p.pos};
    const variable_list d = DetailPatchEmbedBackward::run(grads[0], saved[0], saved[1], saved[2],
                                                            ctx->saved_data["patch_size"].toInt(),
                                                            ctx->saved_data["detail_first"].toBool(), mask);
    return {need_base ? d[0] : at::Tensor(), need_detail ? d[1] : at::Tensor(),
            p.weight ? d[2] : at::Tensor(),  p.bias ? d[3] : at::Tensor(),
            pos_grad(p, d[4], grads[0]),     at::Tensor(),
            at::Tensor()};
  }
};

class PatchEmbed : public torch::autograd::Function<PatchEmbed> {
 public:
  static constexpr bool is_traceable = true;
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& latent, const at::Tensor& weight,
                            const OptTensor& bias, const OptTensor& pos_embed, int64_t patch_size) {
    ctx->save_for_backward({latent, weight});
    ctx->saved_data["patch_size"] = patch_size;
    save_epilogue(ctx, bias, pos_embed);
    return patch_embed_below_autograd(latent, weight, bias, pos_embed, patch_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool need_latent = ctx->needs_input_grad(0);
    const ParamGrads p = param_grads(ctx, 1, saved[0].size(0));
    const variable_list d = PatchEmbedBackward::run(grads[0], saved[0], saved[1],
                                                      ctx->saved_data["patch_size"].toInt(),
                                                      Mask{need_latent, p.weight, p.bias, p.pos});
    return {need_latent ? d[0] : at::Tensor(), p.weight ? d[1] : at::Tensor(), p.bias ? d[2] : at::Tensor(),
            pos_grad(p, d[3], grads[0]), at::Tensor()};
  }
};

at::Tensor detail_patch_embed_autograd(const at::Tensor& base, const at::Tensor& detail, const at::Tensor& weight,
                                       const OptTensor& bias, const OptTensor& pos_embed, int64_t patch_size,
                                       bool detail_first) {
  if (!records_graph(base, detail, weight, bias, pos_embed))
    return detail_patch_embed_below_autograd(base, detail, weight, bias, pos_embed, patch_size, detail_first);
  return DetailPatchEmbed::apply(base, detail, weight, bias, pos_embed, patch_size, detail_first);
}

Grads5 detail_patch_embed_backward_autograd(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                                            const at::Tensor& weight, int64_t patch_size, bool detail_first,
                                            Mask output_mask) {
  const variable_list d =
      DetailPatchEmbedBackward::run(grad, base, detail, weight, patch_size, detail_first, output_mask);
  return {d[0], d[1], d[2], d[3], d[4]};
}

at::Tensor patch_embed_autograd(const at::Tensor& latent, const at::Tensor& weight, const OptTensor& bias,
                                const OptTensor& pos_embed, int64_t patch_size) {
  if (!records_graph(latent, weight, bias, pos_embed))
    return patch_embed_below_autograd(latent, weight, bias, pos_embed, patch_size);
  return PatchEmbed::apply(latent, weight, bias, pos_embed, patch_size);
}

Grads4 patch_embed_backward_autograd(const at::Tensor& grad, const at::Tensor& latent, const at::Tensor& weight,
                                     int64_t patch_size, Mask output_mask) {
  const variable_list d = PatchEmbedBackward::run(grad, latent, weight, patch_size, output_mask);
  return {d[0], d[1], d[2], d[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) {
  m.impl("detail_patch_embed", &detail_patch_embed_autograd);
  m.impl("detail_patch_embed_backward", &detail_patch_embed_backward_autograd);
  m.impl("patch_embed", &patch_embed_autograd);
  m.impl("patch_embed_backward", &patch_embed_backward_autograd);
}

}  // namespace davae::autograd
