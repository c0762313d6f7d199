// latent_concat on CPU: one memcpy per (batch, channel) plane, parallel over planes, each plane
// read in place through its input's strides. (The backward is views of the gradient: autograd.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "davae_ext/checks.h"
#include "davae_ext/host_planes.h"
#include "davae_ext/index_math.h"
#include "parallel.h"

namespace davae {
namespace {

template <typename T>
void concat_planes(T* latent, const Planes<const T>& base, const Planes<const T>& detail, const LatentShape& s,
                   bool detail_first) {
  const int64_t CD = s.C + s.D;
  const int64_t HW = s.HW();
  // Tasks of at least 32K elements, as ATen's own copies (torch.cat) split theirs.
  at::parallel_for(0, s.B * CD, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / CD;
      const ChannelSource src = channel_source<int64_t>(q - b * CD, s.C, s.D, detail_first);
      std::memcpy(latent + q * HW, (src.is_base ? base : detail).plane(b, src.channel), HW * sizeof(T));
    }
  });
}

at::Tensor latent_concat_cpu(const at::Tensor& base, const at::Tensor& detail, bool detail_first) {
  const LatentShape s = check_base_detail("latent_concat", base, detail);
  const at::Tensor b = with_contiguous_planes(base);
  const at::Tensor d = with_contiguous_planes(detail);
  at::Tensor out = at::empty({s.B, s.C + s.D, s.H, s.W}, base.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "latent_concat_cpu", [&] {
    concat_planes(out.data_ptr<scalar_t>(), planes_of<const scalar_t>(b), planes_of<const scalar_t>(d), s,
                  detail_first);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CPU, m) { m.impl("latent_concat", &latent_concat_cpu); }

}  // namespace davae
