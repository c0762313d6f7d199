// Autograd of latent_concat: d_base and d_detail are the two channel ranges of the gradient, as
// views (narrow), exactly as torch.cat's backward gives them: no copy, no backward kernel. Being
// ATen views, they also carry a gradient of the gradient.
#include <torch/library.h>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

at::Tensor concat_below_autograd(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>("davae_ext::latent_concat");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(base, detail, detail_first);
}

class LatentConcat : public torch::autograd::Function<LatentConcat> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& base, const at::Tensor& detail,
                            bool detail_first) {
    // The channel counts of a valid call (the op below checks); an invalid one never gets here.
    ctx->saved_data["base_channels"] = base.dim() > 1 ? base.size(1) : int64_t{0};
    ctx->saved_data["detail_channels"] = detail.dim() > 1 ? detail.size(1) : int64_t{0};
    ctx->saved_data["detail_first"] = detail_first;
    return concat_below_autograd(base, detail, detail_first);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t C = ctx->saved_data["base_channels"].toInt();
    const int64_t D = ctx->saved_data["detail_channels"].toInt();
    const at::Tensor& g = grads[0];
    if (ctx->saved_data["detail_first"].toBool()) return {g.narrow(1, D, C), g.narrow(1, 0, D), at::Tensor()};
    return {g.narrow(1, 0, C), g.narrow(1, C, D), at::Tensor()};
  }
};

at::Tensor latent_concat_autograd(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  if (!records_graph(base, detail)) return concat_below_autograd(base, detail, detail_first);
  return LatentConcat::apply(base, detail, detail_first);
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) { m.impl("latent_concat", &latent_concat_autograd); }

}  // namespace davae::autograd
