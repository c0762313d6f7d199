// Autograd of detail_align_loss: d_detail and d_base from one backward op (both computed; the one
// not asked for is dropped).
#include <torch/library.h>

#include <tuple>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

struct AlignBackwardOp {
  static constexpr const char* kName = "detail_align_loss";
  static variable_list call(const at::Tensor& grad, const at::Tensor& detail, const at::Tensor& base,
                            int64_t reduction) {
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>("davae_ext::detail_align_loss_backward");
    auto [d_detail, d_base] = op.call(grad, detail, base, reduction);
    return {d_detail, d_base};
  }
};
using AlignBackward = BackwardOpFunction<AlignBackwardOp>;

at::Tensor align_below_autograd(const at::Tensor& detail, const at::Tensor& base, int64_t reduction) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("davae_ext::detail_align_loss");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(detail, base, reduction);
}

class DetailAlignLoss : public torch::autograd::Function<DetailAlignLoss> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& detail, const at::Tensor& base,
                            int64_t reduction) {
    ctx->save_for_backward({detail, base});
    ctx->saved_data["reduction"] = reduction;
    return align_below_autograd(detail, base, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const variable_list d =
        AlignBackward::run(grads[0], saved[0], saved[1], ctx->saved_data["reduction"].toInt());
    return {ctx->needs_input_grad(0) ? d[0] : at::Tensor(), ctx->needs_input_grad(1) ? d[1] : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor detail_align_loss_autograd(const at::Tensor& detail, const at::Tensor& base, int64_t reduction) {
  if (!records_graph(detail, base)) return align_below_autograd(detail, base, reduction);
  return DetailAlignLoss::apply(detail, base, reduction);
}

std::tuple<at::Tensor, at::Tensor> detail_align_loss_backward_autograd(const at::Tensor& grad,
                                                                       const at::Tensor& detail,
                                                                       const at::Tensor& base,
                                                                       int64_t reduction) {
  const variable_list d = AlignBackward::run(grad, detail, base, reduction);
  return {d[0], d[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) {
  m.impl("detail_align_loss", &detail_align_loss_autograd);
  m.impl("detail_align_loss_backward", &detail_align_loss_backward_autograd);
}

}  // namespace davae::autograd
