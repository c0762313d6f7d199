// detail_patch_embed and patch_embed on CUDA (the ops around these: patch_embed_ops.h).
//
// Forward: a gather of the patch matrix A [M, K] from base and detail, or from the one latent,
// read in place through their strides (the concatenated latent never exists), then one GEMM:
//   float16 / bfloat16: cuBLASLt, with the bias in its epilogue and the positional embedding as
//     its C matrix (batch stride 0), so out is written once (gemm_lt.cuh);
//   float32, and 16-bit when cuBLASLt offers no algorithm: ATen's addmm on the same A (cuBLAS;
//     TF32 only when torch.backends.cuda.matmul.allow_tf32 allows it).
// The gather is patch_tile_kernel: one tile of tokens per block through shared memory, 16-byte
// accesses on both sides (patch_tile.h, whose index math tests/cpp/kernel_items.cpp runs on the
// CPU). A patch row too long
// for its shared memory (over 32 KB) goes through ATen's strided copy instead.
//
// Backward: d_weight = dOut^T A is one GEMM on A re-gathered from the latents; for 16-bit inputs
// it is cuBLASLt's, whose BGRADB epilogue also gives d_bias when d_pos is not asked for (the usual
// fine-tuning case: pos_embed is a buffer), so dOut is read once for both. When d_pos is asked for
// (or the GEMM is not cuBLASLt's), one vectorised pass over dOut gives d_pos and d_bias (a
// deterministic two-stage column sum). d_input = dOut W is one GEMM whose [M, K] result the
// gather's inverse scatters into d_base / d_detail, or d_latent (patches do not overlap: no col2im
// accumulation).
#include <torch/library.h>

#include <array>
#include <optional>
#include <type_traits>

#include "cuda_utils.cuh"
#include "davae_ext/patch_embed_ops.h"
#include "davae_ext/patch_tile.h"
#include "davae_ext/pos_grad.h"
#include "gemm_lt.cuh"

namespace davae::cuda {
namespace {

// Moves patches between (base, detail) and the patch-row matrix A [M, K] one tile of tokens per
// block, in the two phases of patch_tile.h (host-callable, so tests/cpp/kernel_items.cpp checks
// this index math on the CPU): 16-byte loads of the latent's line segments into a shared-memory
// tile, then 16-byte stores of the tile's rows of A, which are contiguous (or the reverse).
// kTileTokens tokens of one token row per tile, at most kTileBytes of shared memory. SD3 at
// 2048 px (bf16, K = 128): 64 tokens, 17 KB, 256 blocks; ImageNet (K = 128, 16 tokens a row):
// 512 blocks. L: const T for the gather, T for the scatter.
constexpr int64_t kTileTokens = 64;
constexpr int64_t kTileBytes = 32 * 1024;

template <bool kScatter, int P, int VEC, typename T, typename L>
__global__ void __launch_bounds__(kThreads)
    patch_tile_kernel(T* __restrict__ A, Planes<L> base, Planes<L> detail, PatchTileArgs a) {
  extern __shared__ __align__(16) unsigned char tile_smem[];
  T* buf = reinterpret_cast<T*>(tile_smem);
  const PatchTile t = patch_tile(blockIdx.x, a);
  if constexpr (kScatter) {
    patch_tile_rows_phase<true, VEC>(A, buf, a, t, threadIdx.x, blockDim.x);
    __syncthreads();
    patch_tile_latent_phase<true, P, VEC>(base, detail, buf, a, t, threadIdx.x, blockDim.x);
  } else {
    patch_tile_latent_phase<false, P, VEC>(base, detail, buf, a, t, threadIdx.x, blockDim.x);
    __syncthreads();
    patch_tile_rows_phase<false, VEC>(A, buf, a, t, threadIdx.x, blockDim.x);
  }
}

// The same move through ATen's strided copy, for a patch row longer than the tile kernel's shared
// memory: A viewed as [B, Hp, Wp, C + D, p, p], each part's channels copied from (or to) its latent
// viewed as [B, channels, Hp, p, Wp, p] and permuted to match.
void move_patches_aten(bool scatter, const at::Tensor& A, const at::Tensor& base, const at::Tensor& detail,
                       const PatchShape& s, bool detail_first) {
  const at::Tensor rows = A.view({s.B, s.Hp(), s.Wp(), s.C + s.D, s.p, s.p});
  auto move = [&](const at::Tensor& part, int64_t first_channel) {
    const int64_t n = part.size(1);
    at::Tensor patches = part.view({s.B, n, s.Hp(), s.p, s.Wp(), s.p}).permute({0, 2, 4, 1, 3, 5});
    at::Tensor slice = rows.narrow(3, first_channel, n);
    if (scatter) {
      patches.copy_(slice);
    } else {
      slice.copy_(patches);
    }
  };
  move(base, s.D > 0 && detail_first ? s.D : 0);
  if (s.D > 0) move(detail, detail_first ? 0 : s.C);
}

// A <- (base, detail) (kScatter = false) or (base, detail) <- A, for D = 0 base alone.
template <bool kScatter, typename T>
void move_patches(const at::Tensor& A, const at::Tensor& base, const at::Tensor& detail, const PatchShape& s,
                  bool detail_first) {
  if (s.M() == 0) return;
  using L = std::conditional_t<kScatter, T, const T>;
  const Planes<L> bp = planes_of<L>(base);
  const Planes<L> dp = s.D > 0 ? planes_of<L>(detail) : bp;
  T* a = static_cast<T*>(A.data_ptr());
  PatchTilePlan plan{};
  const bool aligned = aligned16(a) && planes_aligned16(bp) && planes_aligned16(dp);
  if (!plan_patch_tiles(s.B, s.C, s.D, s.H, s.W, s.p, detail_first, sizeof(T), aligned, kTileTokens, kTileBytes,
                        plan) ||
      plan.tiles >= (int64_t{1} << 31)) {
    move_patches_aten(kScatter, A, base, detail, s, detail_first);
    return;
  }
  const size_t smem = static_cast<size_t>(plan.buffer_elems) * sizeof(T);
  with_patch_size(s.p, [&](auto patch) {
    constexpr int P = decltype(patch)::value;
    with_tile_vec<T>(plan, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      patch_tile_kernel<kScatter, P, VEC>
          <<<static_cast<unsigned>(plan.tiles), kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(a, bp, dp,
                                                                                                    plan.args);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// d_pos / d_bias pass (pos_grad.h): a block (32 x kPosGroups threads) owns 32 * VEC hidden
// columns and `rows` token rows; the column sums of its kPosGroups row groups are added in a fixed
// order into partial[blockIdx.y, n]. bias_grad_kernel adds the partials in index order:
// deterministic. `rows` (a multiple of kPosGroups, at most kMaxPosRows) comes from pos_rows():
// fewer rows per block when T is short, so the pass still spreads over the GPU.
constexpr int kMaxPosRows = 64;
constexpr int64_t kMinPosBlocks = 256;

// Token rows per block of the d_pos / d_bias pass: the most (up to kMaxPosRows) that still gives
// kMinPosBlocks blocks. A function of the shape only, so the order in which d_bias adds its
// partials (and so its bits) never depends on the GPU. ImageNet (T = 256, N = 1152): 8 rows,
// 160 blocks.
int64_t pos_rows(int64_t T_, int64_t column_blocks) {
  int64_t rows = kMaxPosRows;
  while (rows > kPosGroups && column_blocks * ((T_ + rows - 1) / rows) < kMinPosBlocks) rows /= 2;
  TORCH_CHECK((T_ + rows - 1) / rows <= 65535, "patch embed backward: too many tokens for one launch (", T_, ")");
  return rows;
}

template <int VEC, typename T>
__global__ void __launch_bounds__(32 * kPosGroups)
    pos_grad_kernel(const T* __restrict__ grad, T* __restrict__ d_pos, float* __restrict__ partial,
                    int64_t B, int64_t T_, int64_t N, int rows) {
  __shared__ float red[kPosGroups][32 * VEC];
  const int64_t n = (int64_t(blockIdx.x) * 32 + threadIdx.x) * VEC;
  float col[VEC];
  pos_grad_thread<VEC>(grad, d_pos, B, T_, N, n, int64_t(blockIdx.y) * rows, rows, threadIdx.y, col);
  if (partial == nullptr) return;
#pragma unroll
  for (int j = 0; j < VEC; ++j) red[threadIdx.y][threadIdx.x * VEC + j] = col[j];
  __syncthreads();
  if (threadIdx.y == 0 && n < N) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float sum = 0.f;
      for (int y = 0; y < kPosGroups; ++y) sum += red[y][threadIdx.x * VEC + j];
      partial[blockIdx.y * N + n + j] = sum;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const float* __restrict__ partial, T* __restrict__ d_bias, int64_t chunks, int64_t N) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float v = 0.f;
#pragma unroll 8
  for (int64_t c = 0; c < chunks; ++c) v += partial[c * N + n];  // fixed order
  d_bias[n] = from_float<T>(v);
}

// d_pos (when given) and d_bias (when given) from one pass over dOut [B, T, N].
template <typename T>
void pos_bias_grad(const at::Tensor& g, T* d_pos, at::Tensor& d_bias, const PatchShape& s) {
  const int64_t T_ = s.T(), N = s.N;
  if (N == 0 || T_ == 0) {
    if (d_bias.defined()) d_bias.zero_();  // no tokens: the sum over none
    return;
  }
  const T* gp = g.const_data_ptr<T>();
  const bool aligned = aligned16(gp) && (d_pos == nullptr || aligned16(d_pos));
  auto stream = at::cuda::getCurrentCUDAStream();
  with_vec<T>(N, aligned, [&](auto vec) {
    constexpr int V = decltype(vec)::value;
    const int64_t column_blocks = (N + 32 * V - 1) / (32 * V);
    const int64_t rows = pos_rows(T_, column_blocks);
    const int64_t chunks = (T_ + rows - 1) / rows;
    at::Tensor partial = d_bias.defined() ? at::empty({chunks, N}, g.options().dtype(at::kFloat)) : at::Tensor();
    float* pp = d_bias.defined() ? partial.data_ptr<float>() : nullptr;
    const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(chunks));
    pos_grad_kernel<V, T><<<grid, dim3(32, kPosGroups), 0, stream>>>(gp, d_pos, pp, s.B, T_, N, static_cast<int>(rows));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (d_bias.defined()) {
      bias_grad_kernel<T><<<blocks_for(N), kThreads, 0, stream>>>(pp, d_bias.data_ptr<T>(), chunks, N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// out = A W^T + bias + pos through ATen (cuBLAS): float32's forward, and 16-bit's when cuBLASLt
// offers no algorithm.
void aten_patch_gemm(at::Tensor& out, const at::Tensor& A, const at::Tensor& w, const at::Tensor& bias,
                     const at::Tensor& pos, const PatchShape& s) {
  at::Tensor out2 = out.view({s.M(), s.N});
  if (!pos.defined()) {
    if (bias.defined()) {
      at::addmm_out(out2, bias, A, w.t());
    } else {
      at::mm_out(out2, A, w.t());
    }
    return;
  }
  out.copy_((bias.defined() ? pos + bias : pos).expand({s.B, s.T(), s.N}));
  out2.addmm_(A, w.t());
}

struct CudaPatchEmbed {
  static at::Tensor forward(const at::Tensor& base, const at::Tensor& detail, const PatchShape& s, bool detail_first,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_embed) {
    const c10::cuda::CUDAGuard guard(base.device());
    at::Tensor out = at::empty({s.B, s.T(), s.N}, base.options());
    if (out.numel() == 0) return out;
    const at::Tensor w = weight.contiguous().view({s.N, s.K()});
    const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    const at::Tensor pos_c = pos_embed.has_value() && pos_embed->defined() ? pos_embed->contiguous() : at::Tensor();
    at::Tensor A = at::empty({s.M(), s.K()}, base.options());
    bool done = false;
    DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "patch_embed_cuda", [&] {
      move_patches<false, scalar_t>(A, base, detail, s, detail_first);
      if constexpr (!std::is_same_v<scalar_t, float>) {
        const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
        done = (bp == nullptr || aligned16(bp)) &&
               lt_patch_gemm<scalar_t>(A.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                                       pos_c.defined() ? pos_c.const_data_ptr<scalar_t>() : nullptr,
                                       out.data_ptr<scalar_t>(), s.B, s.T(), s.T(), s.N, s.K(),
                                       at::cuda::getCurrentCUDAStream());
      }
    });
    if (!done) aten_patch_gemm(out, A, w, bias_c, pos_c, s);
    return out;
  }

  static PatchGrads5 backward(const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
                              const PatchShape& s, bool detail_first, const at::Tensor& weight,
                              std::array<bool, 4> output_mask) {
    const c10::cuda::CUDAGuard guard(base.device());
    const auto [need_input, need_weight, need_bias, need_pos] = output_mask;
    const int64_t M = s.M(), K = s.K(), N = s.N;
    const at::Tensor g = grad.contiguous().view({M, N});
    auto none = [&] { return at::empty({0}, grad.options()); };
    at::Tensor d_base = none(), d_detail = none(), d_weight = none(), d_bias = none(), d_pos = none();

    DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "patch_embed_backward_cuda", [&] {
      // d_weight first: when d_pos is not asked for its cuBLASLt GEMM's epilogue also gives d_bias.
      bool bias_done = false;
      if (need_weight) {
        at::Tensor A = at::empty({M, K}, base.options());
        move_patches<false, scalar_t>(A, base, detail, s, detail_first);
        at::Tensor dw = at::empty({N, K}, grad.options());
        at::Tensor gemm_bias = need_bias && !need_pos ? at::empty({N}, grad.options()) : at::Tensor();
        bool lt = false;
        if constexpr (!std::is_same_v<scalar_t, float>) {
          lt = M > 0 && N > 0 &&
               lt_weight_grad<scalar_t>(A.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                        dw.data_ptr<scalar_t>(),
                                        gemm_bias.defined() ? gemm_bias.data_ptr<scalar_t>() : nullptr, M, N, K,
                                        at::cuda::getCurrentCUDAStream());
        }
        if (!lt) at::mm_out(dw, g.t(), A);
        if (lt && gemm_bias.defined()) {
          d_bias = gemm_bias;
          bias_done = true;
        }
        d_weight = dw.view({N, s.C + s.D, s.p, s.p});
      }
      if ((need_bias && !bias_done) || need_pos) {
        if (need_pos) d_pos = at::empty({1, s.T(), N}, grad.options());
        at::Tensor pass_bias = need_bias && !bias_done ? at::empty({N}, grad.options()) : at::Tensor();
        pos_bias_grad<scalar_t>(g, need_pos ? d_pos.data_ptr<scalar_t>() : nullptr, pass_bias, s);
        if (pass_bias.defined()) d_bias = pass_bias;
      }
      if (need_input) {
        const at::Tensor dA = at::mm(g, weight.reshape({N, K}));  // [M, K]
        d_base = at::empty({s.B, s.C, s.H, s.W}, base.options());
        if (s.D > 0) d_detail = at::empty({s.B, s.D, s.H, s.W}, detail.options());
        move_patches<true, scalar_t>(dA, d_base, s.D > 0 ? d_detail : d_base, s, detail_first);
      }
    });
    return {d_base, d_detail, d_weight, d_bias, d_pos};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) { register_patch_embed_ops<CudaPatchEmbed>(m); }

}  // namespace davae::cuda
