// latent_concat on CUDA: one launch each way. Each thread moves one 16-byte vector of a plane of
// the concatenated latent from / to the base or detail plane it belongs to (plane_vectors.h:
// concat_vector, which tests/cpp/kernel_items.cpp runs on the CPU). Scalar path when a plane is
// not a whole number of vectors or a pointer is not 16-byte aligned.
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "plane_launch.cuh"

namespace davae::cuda {
namespace {

template <bool kSplit, int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    concat_kernel(T* __restrict__ latent, T* __restrict__ base, T* __restrict__ detail, PlaneVectors<Div> g,
                  typename Div::index_t C, typename Div::index_t D, bool detail_first) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    concat_vector<kSplit, VEC>(latent, base, detail, g, i, C, D, detail_first);
  }
}

template <bool kSplit, typename T>
void launch(T* latent, T* base, T* detail, const LatentShape& s, bool detail_first) {
  if (s.B * (s.C + s.D) * s.HW() == 0) return;
  const bool aligned = aligned16(latent) && aligned16(base) && aligned16(detail);
  with_plane_vectors<T>(s.B, s.C + s.D, s.HW(), aligned, [&](auto vec, auto g) {
    using I = typename decltype(g)::I;
    concat_kernel<kSplit, decltype(vec)::value><<<blocks_for(g.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        latent, base, detail, g, I(s.C), I(s.D), detail_first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor latent_concat_cuda(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  const LatentShape s = check_base_detail("latent_concat", base, detail);
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor b = base.contiguous();
  const at::Tensor d = detail.contiguous();
  at::Tensor out = at::empty({s.B, s.C + s.D, s.H, s.W}, base.options());
  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "latent_concat_cuda", [&] {
    launch<false>(out.data_ptr<scalar_t>(), const_cast<scalar_t*>(b.const_data_ptr<scalar_t>()),
                  const_cast<scalar_t*>(d.const_data_ptr<scalar_t>()), s, detail_first);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> latent_concat_backward_cuda(const at::Tensor& grad,
                                                               int64_t base_channels,
                                                               bool detail_first) {
  const LatentShape s = check_concat_grad(grad, base_channels);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  at::Tensor d_base = at::empty({s.B, s.C, s.H, s.W}, grad.options());
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, grad.options());
  DAVAE_DISPATCH_FLOAT_HALF_BF16(grad.scalar_type(), "latent_concat_backward_cuda", [&] {
    launch<true>(const_cast<scalar_t*>(g.const_data_ptr<scalar_t>()), d_base.data_ptr<scalar_t>(),
                 d_detail.data_ptr<scalar_t>(), s, detail_first);
  });
  return {d_base, d_detail};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) {
  m.impl("latent_concat", &latent_concat_cuda);
  m.impl("latent_concat_backward", &latent_concat_backward_cuda);
}

}  // namespace davae::cuda
