// detail_project on CUDA: one thread per 16-byte vector of the output (forward) or of the
// gradient (backward, which writes the r detail vectors of its group).
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "davae_ext/index_math.h"
#include "group_mean.cuh"

namespace davae::cuda {
namespace {

template <int VEC, typename T>
__global__ void __launch_bounds__(kThreads)
    project_forward_kernel(const T* __restrict__ detail, T* __restrict__ out, int64_t total_vecs,
                           int64_t vecs_per_plane, int64_t C, int64_t D) {
  using V = Vec<T, VEC>;
  const int64_t r = group_size(C, D);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total_vecs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i / vecs_per_plane;  // b * C + c
    const int64_t b = q / C;
    float acc[VEC];
    group_mean<VEC>(detail, b, q - b * C, i - q * vecs_per_plane, r, D, vecs_per_plane, acc);
    V o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = from_float<T>(acc[k]);
    *reinterpret_cast<V*>(out + i * VEC) = o;
  }
}

template <int VEC, typename T>
__global__ void __launch_bounds__(kThreads)
    project_backward_kernel(const T* __restrict__ grad, T* __restrict__ d_detail,
                            int64_t total_vecs, int64_t vecs_per_plane, int64_t C, int64_t D) {
  using V = Vec<T, VEC>;
  const int64_t r = group_size(C, D);
  const float inv_r = 1.f / static_cast<float>(r);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total_vecs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i / vecs_per_plane;
    const int64_t b = q / C;
    const int64_t c = q - b * C;
    const int64_t within = i - q * vecs_per_plane;
    const V g = *reinterpret_cast<const V*>(grad + i * VEC);
    V o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = from_float<T>(to_float(g.v[k]) * inv_r);
    for (int64_t j = 0; j < r; ++j) {
      const int64_t plane = b * D + detail_channel(c, j, r);
      *reinterpret_cast<V*>(d_detail + (plane * vecs_per_plane + within) * VEC) = o;
    }
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
    with_vec<scalar_t>(s.HW(), aligned16(dp) && aligned16(op), [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const int64_t vecs = out.numel() / V;
      project_forward_kernel<V><<<blocks_for(vecs), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dp, op, vecs, s.HW() / V, s.C, s.D);
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
    with_vec<scalar_t>(s.HW(), aligned16(gp) && aligned16(dp), [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const int64_t vecs = g.numel() / V;
      project_backward_kernel<V><<<blocks_for(vecs), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          gp, dp, vecs, s.HW() / V, s.C, s.D);
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
