// detail_project on CUDA: one thread per 16-byte vector of the output (forward) or of the
// gradient (backward, which writes the r detail vectors of its group). The per-vector code is
// plane_vectors.h's (project_vector, project_backward_vector), which tests/cpp/kernel_items.cpp
// runs on the CPU.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "plane_launch.cuh"

namespace davae::cuda {
namespace {

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    project_forward_kernel(const T* __restrict__ detail, T* __restrict__ out, PlaneVectors<Div> g,
                           typename Div::index_t r) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    project_vector<VEC>(detail, out, g, r, i);
  }
}

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    project_backward_kernel(const T* __restrict__ grad, T* __restrict__ d_detail, PlaneVectors<Div> g,
                            typename Div::index_t r) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    project_backward_vector<VEC>(grad, d_detail, g, r, i);
  }
}

at::Tensor detail_project_cuda(const at::Tensor& detail, int64_t base_channels) {
  const LatentShape s = check_project("detail_project", detail, base_channels);
  const c10::cuda::CUDAGuard guard(detail.device());
  const at::Tensor d = detail.contiguous();
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, detail.options());
  if (out.numel() == 0) return out;
  DAVAE_DISPATCH_FLOAT_HALF_BF16(detail.scalar_type(), "detail_project_cuda", [&] {
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), aligned16(dp) && aligned16(op), [&](auto vec, auto g) {
      using I = typename decltype(g)::I;
      project_forward_kernel<decltype(vec)::value><<<blocks_for(g.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dp, op, g, I(s.D / s.C));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor detail_project_backward_cuda(const at::Tensor& grad, int64_t detail_channels) {
  const LatentShape s = check_project_grad(grad, detail_channels);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, grad.options());
  if (g.numel() == 0) return d_detail;
  DAVAE_DISPATCH_FLOAT_HALF_BF16(grad.scalar_type(), "detail_project_backward_cuda", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = d_detail.data_ptr<scalar_t>();
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), aligned16(gp) && aligned16(dp), [&](auto vec, auto g) {
      using I = typename decltype(g)::I;
      project_backward_kernel<decltype(vec)::value><<<blocks_for(g.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          gp, dp, g, I(s.D / s.C));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return d_detail;
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) {
  m.impl("detail_project", &detail_project_cuda);
  m.impl("detail_project_backward", &detail_project_backward_cuda);
}

}  // namespace davae::cuda
