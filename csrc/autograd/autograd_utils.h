// Shared pieces of the ops' autograd kernels (csrc/autograd/<op>.cpp).
//
// Each forward op registers a torch::autograd::Function on the Autograd key: it saves what the
// backward needs and calls the op below autograd; its backward calls the op's backward op. The
// backward ops register a Function too, whose own backward raises: a gradient of the gradient
// (create_graph=True through a fused op) is a clear error, never a silently missing term.
// The Functions are traceable by compiled autograd: their backwards read only the context's
// saved tensors, saved_data and needs_input_grad, which it captures.
// Being C++, none of this runs Python per call (the Python register_autograd it replaced cost
// ~95 us per forward with grad on a 2-core CPU; see bench/bench_overhead.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

namespace davae::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dispatcher handle of davae_ext::<name> (looked up once per call site, on first use).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

[[noreturn]] inline void no_double_backward(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "davae_ext::", op,
                              ": double backward (a gradient of this op's gradient, "
                              "create_graph=True) is not implemented by the fused kernels; run "
                              "this op under davae_ext.use_backend(\"reference\") for "
                              "higher-order gradients");
}

// A backward op as an autograd Function: runs Op::call below autograd; its backward raises.
// Op: { static constexpr const char* kName; static variable_list call(args...); }.
template <typename Op>
class BackwardOpFunction : public torch::autograd::Function<BackwardOpFunction<Op>> {
 public:
  static constexpr bool is_traceable = true;
  template <typename... Args>
  static variable_list forward(AutogradContext*, const Args&... args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Op::call(args...);
  }
  static variable_list backward(AutogradContext*, variable_list) { no_double_backward(Op::kName); }
};

}  // namespace davae::autograd
