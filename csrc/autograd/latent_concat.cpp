// Autograd of latent_concat: d_base and d_detail are the two channel ranges of the gradient.
#include <torch/library.h>

#include <tuple>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

struct ConcatBackwardOp {
  static constexpr const char* kName = "latent_concat";
  static variable_list call(const at::Tensor& grad, int64_t base_channels, bool detail_first) {
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool)>(
        "davae_ext::latent_concat_backward");
    auto [d_base, d_detail] = op.call(grad, base_channels, detail_first);
    return {d_base, d_detail};
  }
};
using ConcatBackward = BackwardOpFunction<ConcatBackwardOp>;

class LatentConcat : public torch::autograd::Function<LatentConcat> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& base, const at::Tensor& detail,
                            bool detail_first) {
    ctx->saved_data["base_channels"] = base.dim() > 1 ? base.size(1) : int64_t{0};
    ctx->saved_data["detail_first"] = detail_first;
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>("davae_ext::latent_concat");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(base, detail, detail_first);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list d = ConcatBackward::apply(grads[0], ctx->saved_data["base_channels"].toInt(),
                                                  ctx->saved_data["detail_first"].toBool());
    return {d[0], d[1], at::Tensor()};
  }
};

at::Tensor latent_concat_autograd(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  return LatentConcat::apply(base, detail, detail_first);
}

std::tuple<at::Tensor, at::Tensor> latent_concat_backward_autograd(const at::Tensor& grad,
                                                                   int64_t base_channels,
                                                                   bool detail_first) {
  const variable_list d = ConcatBackward::apply(grad, base_channels, detail_first);
  return {d[0], d[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) {
  m.impl("latent_concat", &latent_concat_autograd);
  m.impl("latent_concat_backward", &latent_concat_backward_autograd);
}

}  // namespace davae::autograd
