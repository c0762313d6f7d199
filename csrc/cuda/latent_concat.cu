// latent_concat on CUDA: one launch each way. Each thread moves one 16-byte vector of a plane of
// the concatenated latent from / to the base or detail plane it belongs to (index math from
// index_math.h, as on CPU). Scalar path when a plane is not a whole number of vectors or a
// pointer is not 16-byte aligned.
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "davae_ext/index_math.h"

namespace davae::cuda {
namespace {

template <bool kSplit, int VEC, typename T>
__global__ void __launch_bounds__(kThreads)
    concat_planes_kernel(T* __restrict__ latent, T* __restrict__ base, T* __restrict__ detail,
                         int64_t total_vecs, int64_t vecs_per_plane, int64_t C, int64_t D,
                         bool detail_first) {
  using V = Vec<T, VEC>;
  const int64_t CD = C + D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total_vecs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i / vecs_per_plane;  // plane of the concatenated latent: b * CD + ch
    const int64_t within = i - q * vecs_per_plane;
    const int64_t b = q / CD;
    const ChannelSource src = channel_source<int64_t>(q - b * CD, C, D, detail_first);
    T* part = src.is_base ? base + ((b * C + src.channel) * vecs_per_plane + within) * VEC
                          : detail + ((b * D + src.channel) * vecs_per_plane + within) * VEC;
    T* whole = latent + i * VEC;
    if constexpr (kSplit) {
      *reinterpret_cast<V*>(part) = *reinterpret_cast<const V*>(whole);
    } else {
      *reinterpret_cast<V*>(whole) = *reinterpret_cast<const V*>(part);
    }
  }
}

template <bool kSplit, typename T>
void launch(T* latent, T* base, T* detail, const LatentShape& s, bool detail_first) {
  const int64_t HW = s.HW();
  const int64_t total = s.B * (s.C + s.D) * HW;
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  constexpr int kVec = vec16<T>();
  const bool vec_ok = HW % kVec == 0 && aligned16(latent) && aligned16(base) && aligned16(detail);
  if (vec_ok) {
    const int64_t vecs = total / kVec;
    concat_planes_kernel<kSplit, kVec><<<blocks_for(vecs), kThreads, 0, stream>>>(
        latent, base, detail, vecs, HW / kVec, s.C, s.D, detail_first);
  } else {
    concat_planes_kernel<kSplit, 1><<<blocks_for(total), kThreads, 0, stream>>>(
        latent, base, detail, total, HW, s.C, s.D, detail_first);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
