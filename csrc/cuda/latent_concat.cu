// latent_concat on CUDA: one launch. Each thread moves one 16-byte vector of a plane of the
// concatenated latent from the base or detail plane it belongs to, read in place through the
// input's strides (plane_vectors.h: concat_vector, which tests/cpp/kernel_items.cpp runs on the
// CPU). Scalar path when a plane is not a whole number of vectors or a plane does not start
// 16-byte aligned. (The backward is views of the gradient: autograd.)
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"
#include "plane_launch.cuh"

namespace davae::cuda {
namespace {

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    concat_kernel(T* __restrict__ latent, Planes<const T> base, Planes<const T> detail, PlaneVectors<Div> g,
                  typename Div::index_t C, typename Div::index_t D, bool detail_first) {
  using I = typename Div::index_t;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    concat_vector<VEC>(latent, base, detail, g, i, C, D, detail_first);
  }
}

at::Tensor latent_concat_cuda(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  const LatentShape s = check_base_detail("latent_concat", base, detail);
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor b = with_contiguous_planes(base);
  const at::Tensor d = with_contiguous_planes(detail);
  at::Tensor out = at::empty({s.B, s.C + s.D, s.H, s.W}, base.options());
  if (out.numel() == 0) return out;
  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "latent_concat_cuda", [&] {
    const auto bp = planes_of<const scalar_t>(b), dp = planes_of<const scalar_t>(d);
    scalar_t* op = out.data_ptr<scalar_t>();
    const bool aligned = aligned16(op) && planes_aligned16(bp) && planes_aligned16(dp);
    with_plane_vectors<scalar_t>(s.B, s.C + s.D, s.HW(), aligned, [&](auto vec, auto g) {
      using I = typename decltype(g)::I;
      concat_kernel<decltype(vec)::value><<<blocks_for(g.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          op, bp, dp, g, I(s.C), I(s.D), detail_first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) { m.impl("latent_concat", &latent_concat_cuda); }

}  // namespace davae::cuda
