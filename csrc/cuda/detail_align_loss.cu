// detail_align_loss on CUDA: ||Proj(detail) - base||^2 in one launch each way, Proj never
// materialised, the inputs read in place through their strides. The per-vector code is plane_vectors.h's (align_diff, align_loss_backward_vector),
// which tests/cpp/kernel_items.cpp runs on the CPU. The reduced forward is deterministic: a grid
// sized from the input size only, a fixed-order block reduction into per-block partials, and the
// last block to finish (atomic ticket) adds the partials in index order. No host synchronisation.
#include <torch/library.h>

#include <tuple>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"
#include "davae_ext/index_math.h"
#include "plane_launch.cuh"

namespace davae::cuda {
namespace {

constexpr int64_t kMaxPartials = 1024;

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    align_loss_kernel(Planes<const T> detail, Planes<const T> base, T* __restrict__ out,
                      float* __restrict__ partials, unsigned int* __restrict__ ticket, PlaneVectors<Div> g,
                      typename Div::index_t r, int64_t reduction) {
  using I = typename Div::index_t;
  float local = 0.f;
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    float diff[VEC];
    align_diff<VEC>(detail, base, g, r, i, diff);
    if (reduction == kNone) {
      Vec<T, VEC> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = from_float<T>(diff[k] * diff[k]);
      store_vec<VEC>(out + static_cast<int64_t>(i) * VEC, o);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) local += diff[k] * diff[k];
    }
  }
  if (reduction == kNone) return;

  const float block_total = block_sum(local);
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_total;
    __threadfence();
    is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float v = 0.f;
  for (int64_t i = threadIdx.x; i < gridDim.x; i += blockDim.x) v += __ldcg(partials + i);
  v = block_sum(v);
  if (threadIdx.x == 0) {
    const float n = static_cast<float>(static_cast<int64_t>(g.total) * VEC);
    out[0] = from_float<T>(reduction == kMean ? v / n : v);
  }
}

template <int VEC, typename T, typename Div>
__global__ void __launch_bounds__(kThreads)
    align_loss_backward_kernel(Planes<const T> grad, Planes<const T> detail, Planes<const T> base,
                               Planes<T> d_detail, T* __restrict__ d_base, PlaneVectors<Div> g,
                               typename Div::index_t r, int64_t reduction) {
  using I = typename Div::index_t;
  const float scale = reduction == kMean ? 2.f / static_cast<float>(static_cast<int64_t>(g.total) * VEC) : 2.f;
  // A reduced loss's grad is one element (grad.data), read by every thread.
  const float g0 = reduction == kNone ? 0.f : to_float(grad.data[0]);
  const Planes<const T> per_element = reduction == kNone ? grad : Planes<const T>{nullptr, 0, 0};
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < g.total; i += I(gridDim.x) * blockDim.x) {
    align_loss_backward_vector<VEC>(per_element, g0, scale, detail, base, d_detail, d_base, g, r, i);
  }
}

at::Tensor detail_align_loss_cuda(const at::Tensor& detail, const at::Tensor& base,
                                  int64_t reduction) {
  const LatentShape s = check_align("detail_align_loss", detail, base, reduction);
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor d = with_contiguous_planes(detail);
  const at::Tensor z = with_contiguous_planes(base);
  const int64_t total = s.B * s.C * s.HW();
  if (reduction == kNone) {
    at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, base.options());
    if (total == 0) return out;
    DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "detail_align_loss_cuda", [&] {
      const auto dp = planes_of<const scalar_t>(d), zp = planes_of<const scalar_t>(z);
      scalar_t* op = out.data_ptr<scalar_t>();
      with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), planes_aligned16(dp) && planes_aligned16(zp) && aligned16(op),
                                   [&](auto vec, auto g) {
        using I = typename decltype(g)::I;
        align_loss_kernel<decltype(vec)::value><<<blocks_for(g.total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            dp, zp, op, nullptr, nullptr, g, I(s.D / s.C), reduction);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return out;
  }
  if (total == 0) {  // as F.mse_loss: NaN for the mean of nothing, 0 for the sum
    return at::full({}, reduction == kMean ? NAN : 0.0, base.options());
  }
  at::Tensor out = at::empty({}, base.options());
  at::Tensor ticket = at::zeros({1}, base.options().dtype(at::kInt));
  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "detail_align_loss_cuda", [&] {
    const auto dp = planes_of<const scalar_t>(d), zp = planes_of<const scalar_t>(z);
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), planes_aligned16(dp) && planes_aligned16(zp), [&](auto vec, auto g) {
      using I = typename decltype(g)::I;
      const int64_t blocks = blocks_for(g.total, kMaxPartials);
      at::Tensor partials = at::empty({blocks}, base.options().dtype(at::kFloat));
      align_loss_kernel<decltype(vec)::value><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dp, zp, out.data_ptr<scalar_t>(), partials.data_ptr<float>(),
          reinterpret_cast<unsigned int*>(ticket.data_ptr<int>()), g, I(s.D / s.C), reduction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> detail_align_loss_backward_cuda(const at::Tensor& grad,
                                                                   const at::Tensor& detail,
                                                                   const at::Tensor& base,
                                                                   int64_t reduction) {
  const LatentShape s = check_align("detail_align_loss_backward", detail, base, reduction);
  check_align_grad(grad, s, reduction, base);
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor d = with_contiguous_planes(detail);
  const at::Tensor z = with_contiguous_planes(base);
  const at::Tensor g = reduction == kNone ? with_contiguous_planes(grad) : grad;  // else one element
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, detail.options());
  at::Tensor d_base = at::empty({s.B, s.C, s.H, s.W}, base.options());
  const int64_t total = s.B * s.C * s.HW();
  if (total == 0) return {d_detail, d_base};
  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "detail_align_loss_backward_cuda", [&] {
    const Planes<const scalar_t> gp = reduction == kNone
                                          ? planes_of<const scalar_t>(g)
                                          : Planes<const scalar_t>{g.const_data_ptr<scalar_t>(), 0, 0};
    const auto dp = planes_of<const scalar_t>(d), zp = planes_of<const scalar_t>(z);
    const auto ddp = planes_of<scalar_t>(d_detail);
    scalar_t* dbp = d_base.data_ptr<scalar_t>();
    const bool aligned = planes_aligned16(dp) && planes_aligned16(zp) && planes_aligned16(ddp) && aligned16(dbp) &&
                         (reduction != kNone || planes_aligned16(gp));
    with_plane_vectors<scalar_t>(s.B, s.C, s.HW(), aligned, [&](auto vec, auto g) {
      using I = typename decltype(g)::I;
      align_loss_backward_kernel<decltype(vec)::value><<<blocks_for(g.total), kThreads, 0,
                                                         at::cuda::getCurrentCUDAStream()>>>(
          gp, dp, zp, ddp, dbp, g, I(s.D / s.C), reduction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {d_detail, d_base};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) {
  m.impl("detail_align_loss", &detail_align_loss_cuda);
  m.impl("detail_align_loss_backward", &detail_align_loss_backward_cuda);
}

}  // namespace davae::cuda
