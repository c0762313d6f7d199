// detail_project on CUDA: one thread per 16-byte vector of the output (forward) or of the
// gradient (backward, which writes the r detail vectors of its group). Inputs are read in place
// through their strides. The per-vector code is plane_vectors.h's (project_vector,
// project_backward_vector), which tests/cpp/kernel_items.cpp runs on the CPU.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"
#include "plane_launch.cuh"

namespace davae::cuda {
namespace {

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    project_forward_kernel(Planes<const T> detail, T* __restrict__ out, PlaneVectors<Div> g, typename Div::index_t r) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    project_vector<VEC>(detail, out, g, r, i);
  }
}

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    project_backward_kernel(Planes<const T> grad, Planes<T> d_detail, PlaneVectors<Div> g, typename Div::index_t r) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    project_backward_vector<VEC>(grad, d_detail, g, r, i);
  }
}

at::Tensor detail_project_cuda(const at::Tensor& detail, int64_t base_channels) {
  const LatentShape s = check_project("detail_project", detail, base_channels);
  const c10::cuda::CUDAGuard guard(detail.device());
  const at::Tensor d = with_contiguous_planes(detail);
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, detail.options());
  if (out.numel() == 0) return out;
  DAVAE_DISPATCH_FLOAT_HALF_BF16(detail.scalar_type(), "detail_project_cuda", [&] {
    const auto dp = planes_of<const scalar_t>(d);
    scalar_t* op = out.data_ptr<scalar_t>();
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), planes_aligned16(dp) && aligned16(op), [&](auto vec, auto g) {
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
  const at::Tensor g = with_contiguous_planes(grad);
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, grad.options());
  if (g.numel() == 0) return d_detail;
  DAVAE_DISPATCH_FLOAT_HALF_BF16(grad.scalar_type(), "detail_project_backward_cuda", [&] {
    const auto gp = planes_of<const scalar_t>(g);
    const auto dp = planes_of<scalar_t>(d_detail);
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), planes_aligned16(gp) && planes_aligned16(dp), [&](auto vec, auto pv) {
      using I = typename decltype(pv)::I;
      project_backward_kernel<decltype(vec)::value><<<blocks_for(pv.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          gp, dp, pv, I(s.D / s.C));
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
