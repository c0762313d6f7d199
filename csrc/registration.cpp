// All operator schemas of the `davae_ext` namespace, in one place, and the Python module init.
//
// Each op is a dispatcher op: CPU kernels register in csrc/cpu/<op>.cpp and CUDA kernels in
// csrc/cuda/<op>.cu with TORCH_LIBRARY_IMPL, autograd in csrc/autograd/<op>.cpp. The shape-only
// fake kernels (register_fake) live on the Python side, in python/davae_ext/_library/, so the
// ops work under torch.compile and torch.export. Backward kernels are ops of their own.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(davae_ext, m) {
  // [B, C, H, W] + [B, D, H, W] -> [B, C + D, H, W] (detail_first: detail channels first).
  m.def("latent_concat(Tensor base, Tensor detail, bool detail_first=False) -> Tensor");
  // Splits the gradient into fresh (non-view) d_base, d_detail.
  m.def("latent_concat_backward(Tensor grad, int base_channels, bool detail_first=False)"
        " -> (Tensor, Tensor)");

  // Eq. 4: [B, D, H, W] -> [B, C, H, W], channel c = mean of detail channels [c*r, (c+1)*r).
  m.def("detail_project(Tensor detail, int base_channels) -> Tensor");
  m.def("detail_project_backward(Tensor grad, int detail_channels) -> Tensor");

  // Eq. 3: ||Proj(detail) - base||^2, reduction 0 = none, 1 = mean, 2 = sum (as at::Reduction).
  m.def("detail_align_loss(Tensor detail, Tensor base, int reduction=1) -> Tensor");
  m.def("detail_align_loss_backward(Tensor grad, Tensor detail, Tensor base, int reduction=1)"
        " -> (Tensor, Tensor)");

  // conv2d(cat(base, detail), weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed,
  // without materialising the concatenation. weight [N, C + D, p, p], bias [N], pos [1, T, N].
  m.def("detail_patch_embed(Tensor base, Tensor detail, Tensor weight, Tensor? bias,"
        " Tensor? pos_embed, int patch_size, bool detail_first=False) -> Tensor");
  // output_mask = (inputs, weight, bias, pos_embed); gradients not asked for come back as
  // empty tensors of shape [0]. Returns (d_base, d_detail, d_weight, d_bias, d_pos_embed).
  m.def("detail_patch_embed_backward(Tensor grad, Tensor base, Tensor detail, Tensor weight,"
        " int patch_size, bool detail_first, bool[4] output_mask)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The module itself carries only build facts; tensors never pass through pybind11.
PYBIND11_MODULE(_C, m) {
  m.doc() = "davae_ext compiled kernels (ops are registered under torch.ops.davae_ext)";
  m.def("built_torch_version", [] { return std::string(DAVAE_TORCH_VERSION); });
#ifdef DAVAE_WITH_CUDA
  m.def("cuda_compiled", [] { return true; });
#else
  m.def("cuda_compiled", [] { return false; });
#endif
  m.def("cuda_archs", [] { return std::string(DAVAE_CUDA_ARCH_LIST); });
}
