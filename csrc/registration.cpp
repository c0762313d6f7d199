// All operator schemas of the `davae_ext` namespace, in one place, and the Python module init.
//
// Each op is a dispatcher op: CPU kernels register in csrc/cpu/<op>.cpp and CUDA kernels in
// csrc/cuda/<op>.cu with TORCH_LIBRARY_IMPL, autograd in csrc/autograd/<op>.cpp. The shape-only
// fake kernels (register_fake) live on the Python side, in python/davae_ext/_library/, so the
// ops work under torch.compile and torch.export. Backward kernels are ops of their own, but for
// latent_concat, whose gradients are views of the output's (as torch.cat's are). Every latent is
// read in place through its strides when its H x W planes are contiguous (include/davae_ext/planes.h).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(davae_ext, m) {
  // [B, C, H, W] + [B, D, H, W] -> [B, C + D, H, W] (detail_first: detail channels first).
  m.def("latent_concat(Tensor base, Tensor detail, bool detail_first=False) -> Tensor");

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

  // The same of one latent [B, C, H, W] (base and detail concatenated already, as the SD3
  // transformer's pos_embed(latent) gets it): conv2d(latent, weight [N, C, p, p], bias, stride=p)
  // .flatten(2).transpose(1, 2) + pos_embed. Its backward writes d_latent as one tensor.
  m.def("patch_embed(Tensor latent, Tensor weight, Tensor? bias, Tensor? pos_embed, int patch_size)"
        " -> Tensor");
  // output_mask = (latent, weight, bias, pos_embed). Returns (d_latent, d_weight, d_bias, d_pos_embed).
  m.def("patch_embed_backward(Tensor grad, Tensor latent, Tensor weight, int patch_size, bool[4] output_mask)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
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
