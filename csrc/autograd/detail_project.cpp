// Autograd of detail_project: each detail channel gets its group's gradient / r.
#include <torch/library.h>

#include "autograd_utils.h"

namespace davae::autograd {
namespace {

struct ProjectBackwardOp {
  static constexpr const char* kName = "detail_project";
  static variable_list call(const at::Tensor& grad, int64_t detail_channels) {
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, int64_t)>("davae_ext::detail_project_backward");
    return {op.call(grad, detail_channels)};
  }
};
using ProjectBackward = BackwardOpFunction<ProjectBackwardOp>;

at::Tensor project_below_autograd(const at::Tensor& detail, int64_t base_channels) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, int64_t)>("davae_ext::detail_project");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(detail, base_channels);
}

class DetailProject : public torch::autograd::Function<DetailProject> {
 public:
  static constexpr bool is_traceable = true;  // compiled autograd traces the backward
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& detail, int64_t base_channels) {
    ctx->saved_data["detail_channels"] = detail.dim() > 1 ? detail.size(1) : int64_t{0};
    return project_below_autograd(detail, base_channels);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ProjectBackward::run(grads[0], ctx->saved_data["detail_channels"].toInt())[0], at::Tensor()};
  }
};

at::Tensor detail_project_autograd(const at::Tensor& detail, int64_t base_channels) {
  if (!records_graph(detail)) return project_below_autograd(detail, base_channels);
  return DetailProject::apply(detail, base_channels);
}

at::Tensor detail_project_backward_autograd(const at::Tensor& grad, int64_t detail_channels) {
  return ProjectBackward::run(grad, detail_channels)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, Autograd, m) {
  m.impl("detail_project", &detail_project_autograd);
  m.impl("detail_project_backward", &detail_project_backward_autograd);
}

}  // namespace davae::autograd
