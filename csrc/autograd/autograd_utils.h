// Shared pieces of the ops' autograd kernels (csrc/autograd/<op>.cpp).
//
// Each forward op registers a torch::autograd::Function on the Autograd key: it saves what the
// backward needs and calls the op below autograd; its backward calls the op's backward op. The
// backward ops register a Function too, whose own backward raises: a gradient of the gradient
// (create_graph=True through a fused op) is a clear error, never a silently missing term.
// The Functions are traceable by compiled autograd: their backwards read only the context's
// saved tensors, saved_data and needs_input_grad, which it captures.
// Being C++, none of this runs Python per call: on a 2-core CPU a Python-side autograd
// registration cost 48-95 us per forward with grad, these 10-24 us (docs/performance.md,
// bench/bench_overhead.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <optional>

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

// Whether a call records a graph: grad mode is on and one of its tensors requires grad. When not
// (inference, a frozen input, any backward without create_graph), the ops skip their Function:
// no context, no saved tensors, no node, only the kernel (a few microseconds of host time, which
// is the whole cost of these ops at small sizes).
inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }
template <typename T>
bool requires_grad(const T&) {  // ints, bools, masks
  return false;
}

template <typename... Args>
bool records_graph(const Args&... args) {
  return at::GradMode::is_enabled() && (requires_grad(args) || ...);
}

// A backward op as an autograd Function: runs Op::call below autograd; its backward raises.
// Op: { static constexpr const char* kName; static variable_list call(args...); }.
// run(args...) is the entry point: the Function only when the call records a graph.
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

  template <typename... Args>
  static variable_list run(const Args&... args) {
    if (records_graph(args...)) return BackwardOpFunction::apply(args...);
    at::AutoDispatchBelowADInplaceOrView guard;
    return Op::call(args...);
  }
};

}  // namespace davae::autograd
