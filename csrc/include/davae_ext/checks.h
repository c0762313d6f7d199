// Host-side input validation shared by the CPU and CUDA kernels: the validation of every eager
// call, through davae_ext.ops or directly through `torch.ops.davae_ext.*`. Every check raises a
// Python exception (ValueError for shapes, values and devices, TypeError for dtypes) whose message
// names the op, the argument, and the expected and actual shape, dtype (as Python prints it) or
// device: never a crash, never a silent wrong answer. The fake kernels and the reference check the
// same things in Python (davae_ext/_validate.py) with the same wording.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <optional>

namespace davae {

struct LatentShape {
  int64_t B, C, D, H, W;
  int64_t HW() const { return H * W; }
};

// D = 0: one latent of C channels (patch_embed); else base and detail (detail_patch_embed).
struct PatchShape {
  int64_t B, C, D, H, W, p, N;
  int64_t Hp() const { return H / p; }
  int64_t Wp() const { return W / p; }
  int64_t T() const { return Hp() * Wp(); }
  int64_t M() const { return B * T(); }
  int64_t K() const { return (C + D) * p * p; }
};

// base [B, C, H, W] and detail [B, D, H, W], same dtype and device.
LatentShape check_base_detail(const char* op, const at::Tensor& base, const at::Tensor& detail);

// detail [B, D, H, W] with D a positive multiple of base_channels.
LatentShape check_project(const char* op, const at::Tensor& detail, int64_t base_channels);

// grad [B, C, H, W] of detail_project with D = r * C detail channels.
LatentShape check_project_grad(const at::Tensor& grad, int64_t detail_channels);

// detail [B, D, H, W], base [B, C, H, W], D a multiple of C, reduction in {0, 1, 2}.
LatentShape check_align(const char* op, const at::Tensor& detail, const at::Tensor& base,
                        int64_t reduction);

// grad of detail_align_loss: a scalar for mean/sum, [B, C, H, W] for none.
void check_align_grad(const at::Tensor& grad, const LatentShape& s, int64_t reduction,
                      const at::Tensor& like);

PatchShape check_patch_embed(const char* op, const at::Tensor& base, const at::Tensor& detail,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& pos_embed, int64_t patch_size);

// The inputs of detail_patch_embed_backward: the forward's checks (no bias / pos) plus grad.
PatchShape check_patch_embed_backward(const at::Tensor& grad, const at::Tensor& base,
                                      const at::Tensor& detail, const at::Tensor& weight,
                                      int64_t patch_size);

// patch_embed's latent [B, C, H, W] and weight [N, C, p, p], bias, pos_embed (a PatchShape with D = 0).
PatchShape check_latent_patch_embed(const char* op, const at::Tensor& latent, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& pos_embed, int64_t patch_size);

PatchShape check_latent_patch_embed_backward(const at::Tensor& grad, const at::Tensor& latent,
                                             const at::Tensor& weight, int64_t patch_size);

// Same dtype and device as `ref`.
void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref);

}  // namespace davae
