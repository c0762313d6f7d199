// detail_project on CPU: per (batch, base channel) plane, the mean of its r detail planes,
// accumulated in opmath (float for 16-bit) over vectorisable chunks of the plane. Inputs are read
// through their strides (planes.h). 1 / r is a multiplication (a division per element was the
// loops' bottleneck; the CUDA kernels multiply too).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"
#include "davae_ext/index_math.h"
#include "parallel.h"

namespace davae {
namespace {

constexpr int64_t kChunk = 512;  // elements of a plane accumulated in registers / L1 at once

template <typename T>
void project_forward(const Planes<const T>& detail, T* out, const LatentShape& s) {
  using acc_t = at::opmath_type<T>;
  const int64_t r = group_size(s.C, s.D);
  const acc_t inv_r = acc_t(1) / static_cast<acc_t>(r);
  const int64_t HW = s.HW();
  at::parallel_for(0, s.B * s.C, grain_for(HW * (r + 1)), [&](int64_t begin, int64_t end) {
    acc_t acc[kChunk];
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / s.C;
      const int64_t c = q - b * s.C;
      for (int64_t x0 = 0; x0 < HW; x0 += kChunk) {
        const int64_t n = std::min(kChunk, HW - x0);
        for (int64_t i = 0; i < n; ++i) acc[i] = acc_t(0);
        for (int64_t j = 0; j < r; ++j) {
          const T* src = detail.plane(b, detail_channel(c, j, r)) + x0;
          for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<acc_t>(src[i]);
        }
        T* dst = out + q * HW + x0;
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(acc[i] * inv_r);
      }
    }
  });
}

template <typename T>
void project_backward(const Planes<const T>& grad, T* d_detail, const LatentShape& s) {
  using acc_t = at::opmath_type<T>;
  const int64_t r = group_size(s.C, s.D);
  const acc_t inv_r = acc_t(1) / static_cast<acc_t>(r);
  const int64_t HW = s.HW();
  at::parallel_for(0, s.B * s.D, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / s.D;
      const T* src = grad.plane(b, (q - b * s.D) / r);
      T* dst = d_detail + q * HW;
      for (int64_t i = 0; i < HW; ++i) dst[i] = static_cast<T>(static_cast<acc_t>(src[i]) * inv_r);
    }
  });
}

at::Tensor detail_project_cpu(const at::Tensor& detail, int64_t base_channels) {
  const LatentShape s = check_project("detail_project", detail, base_channels);
  const at::Tensor d = with_contiguous_planes(detail);
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, detail.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, detail.scalar_type(), "detail_project_cpu", [&] {
    project_forward(planes_of<const scalar_t>(d), out.data_ptr<scalar_t>(), s);
  });
  return out;
}

at::Tensor detail_project_backward_cpu(const at::Tensor& grad, int64_t detail_channels) {
  const LatentShape s = check_project_grad(grad, detail_channels);
  const at::Tensor g = with_contiguous_planes(grad);
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "detail_project_backward_cpu", [&] {
    project_backward(planes_of<const scalar_t>(g), d_detail.data_ptr<scalar_t>(), s);
  });
  return d_detail;
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CPU, m) {
  m.impl("detail_project", &detail_project_cpu);
  m.impl("detail_project_backward", &detail_project_backward_cpu);
}

}  // namespace davae
