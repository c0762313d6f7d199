// detail_patch_embed and patch_embed on CPU (the ops around these: patch_embed_ops.h).
//
// Forward: one parallel pass over token rows packs each token's patch row [K = (C+D) p^2]
// straight from base and detail, or the one latent, through their strides (the concatenated
// latent never exists) and writes the epilogue (pos_embed + bias) into the output rows; then one
// GEMM accumulates A * W^T into the output (addmm_, beta = 1).
// Backward: dA = dOut * W (one GEMM) is scattered back into d_base / d_detail or d_latent
// (patches do not overlap, so no col2im accumulation); dW = dOut^T * A (one GEMM on the re-packed
// rows); d_pos_embed = the sum of dOut over the batch, d_bias over all its rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include "davae_ext/index_math.h"
#include "davae_ext/patch_embed_ops.h"
#include "parallel.h"

namespace davae {
namespace {

// Moves the patch rows of one token row (b, ty) between the latent pair (base, detail; D = 0: base
// is the one latent) and A [M, K]. kScatter = false: A <- latent (im2col without a concat); true:
// latent <- A (its exact inverse: patches do not overlap). Line ty * p + py of channel ch holds
// entry (ch, py, px) of the row's Wp tokens at x = tx * p + px: read in order, written K apart
// (the row's block of A stays in L1). The CUDA kernel moves tiles
// through shared memory instead (patch_tile.h, tested on the CPU by tests/cpp/kernel_items.cpp).
template <bool kScatter, int P, typename T, typename L>
void move_token_row(T* rows, const Planes<L>& base, const Planes<L>& detail, const PatchShape& s,
                    bool detail_first, int64_t b, int64_t ty) {
  const int64_t p = P > 0 ? P : s.p, K = s.K(), Wp = s.Wp();
  for (int64_t ch = 0; ch < s.C + s.D; ++ch) {
    const ChannelSource src = channel_source<int64_t>(ch, s.C, s.D, detail_first);
    L* plane = (src.is_base ? base : detail).plane(b, src.channel);
    for (int64_t py = 0; py < p; ++py) {
      L* line = plane + (ty * p + py) * s.W;
      T* col = rows + (ch * p + py) * p;
      for (int64_t tx = 0; tx < Wp; ++tx) {
        for (int64_t px = 0; px < p; ++px) {
          if constexpr (kScatter) {
            line[tx * p + px] = col[tx * K + px];
          } else {
            col[tx * K + px] = line[tx * p + px];
          }
        }
      }
    }
  }
}

// All token rows, in parallel; `row_epilogue(m0, count)` runs after a token row's patch rows are
// done (the forward's output epilogue, while they are hot in cache).
template <bool kScatter, typename T, typename L, typename Epilogue>
void move_patches(T* A, const Planes<L>& base, const Planes<L>& detail, const PatchShape& s,
                  bool detail_first, Epilogue row_epilogue) {
  const int64_t Wp = s.Wp();
  if (s.M() == 0) return;
  with_patch_size(s.p, [&](auto patch) {
    constexpr int P = decltype(patch)::value;
    at::parallel_for(0, s.B * s.Hp(), grain_for(Wp * s.K()), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t m0 = row * Wp;
        move_token_row<kScatter, P>(A + m0 * s.K(), base, detail, s, detail_first, row / s.Hp(), row % s.Hp());
        row_epilogue(m0, Wp);
      }
    });
  });
}

// The patch rows of (base, detail) as a new [M, K] matrix.
template <typename T>
at::Tensor gather_patches(const at::Tensor& base, const at::Tensor& detail, const PatchShape& s, bool detail_first) {
  at::Tensor A = at::empty({s.M(), s.K()}, base.options());
  move_patches<false>(A.data_ptr<T>(), planes_of<const T>(base), planes_of<const T>(detail), s, detail_first,
                      [](int64_t, int64_t) {});
  return A;
}

struct CpuPatchEmbed {
  static at::Tensor forward(const at::Tensor& base, const at::Tensor& detail, const PatchShape& s, bool detail_first,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_embed) {
    const bool has_bias = bias.has_value() && bias->defined();
    const bool has_pos = pos_embed.has_value() && pos_embed->defined();
    const int64_t M = s.M(), K = s.K(), N = s.N, T = s.T();
    at::Tensor A = at::empty({M, K}, base.options());
    at::Tensor out = at::empty({s.B, T, N}, base.options());
    const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
    const at::Tensor pos_c = has_pos ? pos_embed->contiguous() : at::Tensor();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "patch_embed_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* o = out.data_ptr<scalar_t>();
      const scalar_t* bp = has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* pp = has_pos ? pos_c.const_data_ptr<scalar_t>() : nullptr;
      // out[m, :] = pos_embed[m % T, :] + bias; the GEMM then accumulates onto it.
      auto epilogue = [&](int64_t m0, int64_t count) {
        for (int64_t m = m0; m < m0 + count; ++m) {
          scalar_t* orow = o + m * N;
          const scalar_t* prow = has_pos ? pp + (m % T) * N : nullptr;
          if (has_pos && has_bias) {
            for (int64_t n = 0; n < N; ++n)
              orow[n] = static_cast<scalar_t>(static_cast<acc_t>(prow[n]) + static_cast<acc_t>(bp[n]));
          } else if (has_pos) {
            std::memcpy(orow, prow, N * sizeof(scalar_t));
          } else if (has_bias) {
            std::memcpy(orow, bp, N * sizeof(scalar_t));
          }
        }
      };
      move_patches<false>(A.data_ptr<scalar_t>(), planes_of<const scalar_t>(base),
                          planes_of<const scalar_t>(detail), s, detail_first, epilogue);
    });
    at::Tensor out2 = out.view({M, N});
    const at::Tensor w = weight.reshape({N, K});
    if (has_bias || has_pos) {
      out2.addmm_(A, w.t());
    } else {
      at::mm_out(out2, A, w.t());
    }
    return out;
  }

  static PatchGrads5 backward(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                              const PatchShape& s, bool detail_first, const at::Tensor& weight,
                              std::array<bool, 4> output_mask) {
    const auto [need_input, need_weight, need_bias, need_pos] = output_mask;
    const int64_t M = s.M(), K = s.K(), N = s.N, T = s.T();
    const at::Tensor g = grad.contiguous().view({M, N});
    const at::Tensor w = weight.reshape({N, K});
    auto none = [&] { return at::empty({0}, grad.options()); };
    at::Tensor d_base = none(), d_detail = none(), d_weight = none(), d_bias = none(), d_pos = none();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "patch_embed_backward_cpu", [&] {
      if (need_input) {
        at::Tensor dA = at::mm(g, w);
        d_base = at::empty({s.B, s.C, s.H, s.W}, base.options());
        if (s.D > 0) d_detail = at::empty({s.B, s.D, s.H, s.W}, detail.options());
        const Planes<scalar_t> db = planes_of<scalar_t>(d_base);
        move_patches<true>(dA.data_ptr<scalar_t>(), db, s.D > 0 ? planes_of<scalar_t>(d_detail) : db, s,
                           detail_first, [](int64_t, int64_t) {});
      }
      if (need_weight) {
        d_weight = at::mm(g.t(), gather_patches<scalar_t>(base, detail, s, detail_first))
                       .view({N, s.C + s.D, s.p, s.p});
      }
    });
    // d_pos = the sum of dOut over the batch, d_bias over all its rows: ATen's reductions (float
    // accumulation for 16-bit inputs; a d_bias column appended to the d_weight GEMM was slower).
    if (need_pos) d_pos = at::sum(g.view({s.B, T, N}), {0}, /*keepdim=*/true);
    if (need_bias) d_bias = at::sum(g, {0});
    return {d_base, d_detail, d_weight, d_bias, d_pos};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CPU, m) { register_patch_embed_ops<CpuPatchEmbed>(m); }

}  // namespace davae
