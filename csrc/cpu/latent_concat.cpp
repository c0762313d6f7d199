// latent_concat on CPU: one memcpy per (batch, channel) plane, parallel over planes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "davae_ext/checks.h"
#include "davae_ext/index_math.h"
#include "parallel.h"

namespace davae {
namespace {

// Copies every plane of the concatenated latent from (kSplit = false) or to (kSplit = true)
// the base / detail plane it belongs to.
template <bool kSplit, typename T>
void copy_planes(T* latent, T* base, T* detail, const LatentShape& s, bool detail_first) {
  const int64_t CD = s.C + s.D;
  const int64_t HW = s.HW();
  // A second thread only pays off past ~256K copied elements per task: one memcpy stream is fast.
  at::parallel_for(0, s.B * CD, grain_for(HW, int64_t{1} << 18), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / CD;
      const ChannelSource src = channel_source<int64_t>(q - b * CD, s.C, s.D, detail_first);
      T* part = src.is_base ? base + (b * s.C + src.channel) * HW
                            : detail + (b * s.D + src.channel) * HW;
      T* whole = latent + q * HW;
      if constexpr (kSplit) {
        std::memcpy(part, whole, HW * sizeof(T));
      } else {
        std::memcpy(whole, part, HW * sizeof(T));
      }
    }
  });
}

at::Tensor latent_concat_cpu(const at::Tensor& base, const at::Tensor& detail,
                             bool detail_first) {
  const LatentShape s = check_base_detail("latent_concat", base, detail);
  const at::Tensor b = base.contiguous();
  const at::Tensor d = detail.contiguous();
  at::Tensor out = at::empty({s.B, s.C + s.D, s.H, s.W}, base.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(),
                                  "latent_concat_cpu", [&] {
    copy_planes<false>(out.data_ptr<scalar_t>(), const_cast<scalar_t*>(b.const_data_ptr<scalar_t>()),
                       const_cast<scalar_t*>(d.const_data_ptr<scalar_t>()), s, detail_first);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> latent_concat_backward_cpu(const at::Tensor& grad,
                                                              int64_t base_channels,
                                                              bool detail_first) {
  const LatentShape s = check_concat_grad(grad, base_channels);
  const at::Tensor g = grad.contiguous();
  at::Tensor d_base = at::empty({s.B, s.C, s.H, s.W}, grad.options());
  at::Tensor d_detail = at::empty({s.B, s.D, s.H, s.W}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "latent_concat_backward_cpu", [&] {
    copy_planes<true>(const_cast<scalar_t*>(g.const_data_ptr<scalar_t>()),
                      d_base.data_ptr<scalar_t>(), d_detail.data_ptr<scalar_t>(), s, detail_first);
  });
  return {d_base, d_detail};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CPU, m) {
  m.impl("latent_concat", &latent_concat_cpu);
  m.impl("latent_concat_backward", &latent_concat_backward_cpu);
}

}  // namespace davae
