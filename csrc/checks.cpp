// Host-side input checks (see include/davae_ext/checks.h). Kernels never validate.
#include "davae_ext/checks.h"

#include <c10/util/Exception.h>

#include <sstream>
#include <string>
#include <vector>

namespace davae {
namespace {

// "[3, *, 34, 34]": -1 entries print as "*".
std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) os << ", ";
    if (s[i] < 0) {
      os << "*";
    } else {
      os << s[i];
    }
  }
  os << "]";
  return os.str();
}

std::string shape_str(at::IntArrayRef s) { return shape_str(s.vec()); }

// A dtype as Python prints it ("torch.float32"), so these messages read like PyTorch's own.
std::string dtype_str(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch ScalarType ") + c10::toString(st);
  }
}

void check_defined_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": '", name, "' is an undefined tensor");
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kHalf || st == at::kBFloat16 ||
                  (st == at::kDouble && t.device().is_cpu());
  TORCH_CHECK_TYPE(ok, op, ": '", name, "' has unsupported dtype ", dtype_str(st),
                   "; expected one of torch.float32, torch.float16, torch.bfloat16 (torch.float64 on CPU only)");
}

// Rank and (partially known) shape; -1 = any size.
void check_shape(const char* op, const char* name, const at::Tensor& t,
                 const std::vector<int64_t>& expected, const char* why) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) {
    ok = expected[i] < 0 || t.size(static_cast<int64_t>(i)) == expected[i];
  }
  TORCH_CHECK_VALUE(ok, op, ": '", name, "' must have shape ", shape_str(expected), why,
                    ", got ", shape_str(t.sizes()));
}

void check_latent(const char* op, const char* name, const at::Tensor& t, const char* layout) {
  check_defined_float(op, name, t);
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": '", name, "' must be a 4-D tensor ", layout,
                    ", got shape ", shape_str(t.sizes()));
}

}  // namespace

void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": '", name, "' must have dtype ",
                   dtype_str(ref.scalar_type()), " (same as '", ref_name, "'), got ", dtype_str(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": '", name, "' must be on device ",
                    ref.device(), " (same as '", ref_name, "'), got ", t.device());
}

LatentShape check_base_detail(const char* op, const at::Tensor& base, const at::Tensor& detail) {
  check_latent(op, "base", base, "[B, C, H, W]");
  check_latent(op, "detail", detail, "[B, D, H, W]");
  check_same(op, "detail", detail, "base", base);
  check_shape(op, "detail", detail, {base.size(0), -1, base.size(2), base.size(3)},
              " (batch and spatial size of 'base')");
  LatentShape s{base.size(0), base.size(1), detail.size(1), base.size(2), base.size(3)};
  TORCH_CHECK_VALUE(s.C > 0, op, ": 'base' must have at least one channel, got shape ",
                    shape_str(base.sizes()));
  TORCH_CHECK_VALUE(s.D > 0, op, ": 'detail' must have at least one channel, got shape ",
                    shape_str(detail.sizes()));
  return s;
}

static void check_groups(const char* op, int64_t C, int64_t D) {
  TORCH_CHECK_VALUE(C > 0, op, ": 'base_channels' must be a positive int, got ", C);
  TORCH_CHECK_VALUE(D % C == 0, op, ": the detail channel count D=", D,
                    " must be a multiple of the base channel count C=", C,
                    " (Proj averages groups of D/C detail channels)");
}

LatentShape check_project(const char* op, const at::Tensor& detail, int64_t base_channels) {
  check_latent(op, "detail", detail, "[B, D, H, W]");
  check_groups(op, base_channels, detail.size(1));
  return LatentShape{detail.size(0), base_channels, detail.size(1), detail.size(2),
                     detail.size(3)};
}

LatentShape check_project_grad(const at::Tensor& grad, int64_t detail_channels) {
  const char* op = "detail_project_backward";
  check_latent(op, "grad", grad, "[B, C, H, W]");
  check_groups(op, grad.size(1), detail_channels);
  return LatentShape{grad.size(0), grad.size(1), detail_channels, grad.size(2), grad.size(3)};
}

LatentShape check_align(const char* op, const at::Tensor& detail, const at::Tensor& base,
                        int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, op,
                    ": 'reduction' must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  LatentShape s = check_base_detail(op, base, detail);
  check_groups(op, s.C, s.D);
  return s;
}

void check_align_grad(const at::Tensor& grad, const LatentShape& s, int64_t reduction,
                      const at::Tensor& like) {
  const char* op = "detail_align_loss_backward";
  check_defined_float(op, "grad", grad);
  check_same(op, "grad", grad, "base", like);
  if (reduction == 0) {
    check_shape(op, "grad", grad, {s.B, s.C, s.H, s.W}, " (the unreduced loss)");
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, op,
                      ": 'grad' must be a scalar for a reduced loss, got shape ",
                      shape_str(grad.sizes()));
  }
}

namespace {

// What both patch embeds check past their latents: the patch size divides H and W, the weight is
// a Conv2d weight over all C + D channels, bias and pos_embed (when given) fit it. `ref` is the
// tensor whose dtype and device the others must share.
PatchShape check_patch_params(const char* op, const LatentShape& s, const at::Tensor& ref, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed,
                              int64_t patch_size, const char* ref_name) {
  const int64_t p = patch_size;
  TORCH_CHECK_VALUE(p > 0, op, ": 'patch_size' must be a positive int, got ", p);
  TORCH_CHECK_VALUE(s.H % p == 0 && s.W % p == 0, op, ": the latent height and width (", s.H,
                    ", ", s.W, ") must be multiples of 'patch_size'=", p);
  check_defined_float(op, "weight", weight);
  check_same(op, "weight", weight, ref_name, ref);
  TORCH_CHECK_VALUE(weight.dim() == 4, op,
                    ": 'weight' must be a 4-D Conv2d weight [hidden, C + D, p, p], got shape ",
                    shape_str(weight.sizes()));
  const int64_t N = weight.size(0);
  check_shape(op, "weight", weight, {N, s.C + s.D, p, p}, " (Conv2d layout [hidden, C + D, p, p])");
  PatchShape ps{s.B, s.C, s.D, s.H, s.W, p, N};
  if (bias.has_value() && bias->defined()) {
    check_defined_float(op, "bias", *bias);
    check_same(op, "bias", *bias, ref_name, ref);
    check_shape(op, "bias", *bias, {N}, " (hidden size of 'weight')");
  }
  if (pos_embed.has_value() && pos_embed->defined()) {
    check_defined_float(op, "pos_embed", *pos_embed);
    check_same(op, "pos_embed", *pos_embed, ref_name, ref);
    check_shape(op, "pos_embed", *pos_embed, {1, ps.T(), N}, " ([1, tokens, hidden])");
  }
  return ps;
}

void check_patch_grad(const char* op, const at::Tensor& grad, const PatchShape& s, const at::Tensor& ref,
                      const char* ref_name) {
  check_defined_float(op, "grad", grad);
  check_same(op, "grad", grad, ref_name, ref);
  check_shape(op, "grad", grad, {s.B, s.T(), s.N}, " ([B, tokens, hidden])");
}

}  // namespace

PatchShape check_patch_embed(const char* op, const at::Tensor& base, const at::Tensor& detail,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& pos_embed, int64_t patch_size) {
  return check_patch_params(op, check_base_detail(op, base, detail), base, weight, bias, pos_embed, patch_size,
                            "base");
}

PatchShape check_patch_embed_backward(const at::Tensor& grad, const at::Tensor& base,
                                      const at::Tensor& detail, const at::Tensor& weight,
                                      int64_t patch_size) {
  const char* op = "detail_patch_embed_backward";
  const PatchShape s = check_patch_embed(op, base, detail, weight, std::nullopt, std::nullopt, patch_size);
  check_patch_grad(op, grad, s, base, "base");
  return s;
}

PatchShape check_latent_patch_embed(const char* op, const at::Tensor& latent, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& pos_embed, int64_t patch_size) {
  check_latent(op, "latent", latent, "[B, C, H, W]");
  const LatentShape s{latent.size(0), latent.size(1), 0, latent.size(2), latent.size(3)};
  TORCH_CHECK_VALUE(s.C > 0, op, ": 'latent' must have at least one channel, got shape ",
                    shape_str(latent.sizes()));
  return check_patch_params(op, s, latent, weight, bias, pos_embed, patch_size, "latent");
}

PatchShape check_latent_patch_embed_backward(const at::Tensor& grad, const at::Tensor& latent,
                                             const at::Tensor& weight, int64_t patch_size) {
  const char* op = "patch_embed_backward";
  const PatchShape s = check_latent_patch_embed(op, latent, weight, std::nullopt, std::nullopt, patch_size);
  check_patch_grad(op, grad, s, latent, "latent");
  return s;
}

}  // namespace davae
