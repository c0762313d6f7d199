// detail_patch_embed on CUDA.
//
// Forward, float16 / bfloat16: a gather of the patch matrix A from base and detail (one tile of
// tokens per block through shared memory, 16-byte accesses on both sides: patch_tile_kernel,
// the same code as the CPU's), then one cuBLASLt GEMM with the bias and positional embedding in
// its epilogue (patch_embed_lt below).
// Forward, float32, and the 16-bit fallback (DAVAE_PATCH_EMBED_LT=0, or no cuBLASLt algorithm):
// one tiled kernel. A block owns a 128-token x 128-hidden output tile. For each 32-wide slice
// of K = (C+D) p^2 it gathers the A tile straight from base and detail (the concatenated latent
// never exists; a per-block column table holds each column's source and offset, from
// index_math.h) and the matching weight tile through registers into shared memory (the next
// slice's loads are in flight while the current slice is multiplied), and multiplies:
//   - float16 / bfloat16: tensor cores through WMMA (16x16x16, float accumulators);
//   - float32: FFMA on CUDA cores (exact float32 products, no TF32 rounding), 8x8 per thread.
// The epilogue stages the float tile through shared memory (in two 64-row halves), adds bias and
// the positional embedding, converts, and writes with 16-byte vector stores.
//
// Backward (not one kernel): d_weight = dOut^T A is one cuBLASLt GEMM on A re-gathered from base
// and detail, whose BGRADB epilogue also gives d_bias when d_pos is not asked for (the usual
// fine-tuning case: pos_embed is a buffer), so dOut is read once for both. When d_pos is asked for,
// one vectorised pass over dOut gives d_pos and d_bias (a deterministic two-stage column sum).
// d_input = dOut W is one GEMM whose [M, K] result is scattered straight into d_base / d_detail
// by the gather's inverse (patches do not overlap: no col2im accumulation). dOut is read once per
// GEMM asked for, plus once for d_pos.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda_utils.cuh"
#include "davae_ext/checks.h"
#include "gemm_lt.cuh"
#include "davae_ext/index_math.h"
#include "davae_ext/patch_tile.h"
#include "davae_ext/pos_grad.h"

namespace davae::cuda {
namespace {

constexpr int BM = 128;  // tokens per block tile
constexpr int BN = 128;  // hidden units per block tile
constexpr int BK = 32;   // K slice
constexpr int kHalfRows = BM / 2;
constexpr int LDC = BN + 4;  // float staging tile row stride (multiple of 4 for WMMA stores)
constexpr int kMaxTableK = 1024;  // K up to this uses a per-block column table in shared memory

template <typename T>
struct Tile {
  // Row strides (elements) of the A and W tiles: WMMA needs a multiple of 8 for 16-bit types
  // (and 32-byte aligned fragment rows); the FFMA path wants an odd stride (no bank conflicts).
  static constexpr int LD = std::is_same_v<T, float> ? BK + 1 : BK + 8;
  static constexpr int kABytes = BM * LD * sizeof(T);
  static constexpr int kWBytes = BN * LD * sizeof(T);
  static constexpr int kCBytes = kHalfRows * LDC * sizeof(float);
  static constexpr int kBytes = (kABytes + kWBytes) > kCBytes ? (kABytes + kWBytes) : kCBytes;
};

// The WMMA element type of a c10 16-bit type (float never reaches the WMMA path).
template <typename T>
struct WmmaType {
  using type = __half;
};
template <>
struct WmmaType<c10::Half> {
  using type = __half;
};
template <>
struct WmmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

struct FwdParams {
  int64_t M, N, K, T, C, D, H, W, p, Wp;
  bool detail_first, has_bias, has_pos, vec_out;
};

template <typename T, bool kVecW>
__global__ void __launch_bounds__(kThreads, 2)
    patch_embed_fwd_kernel(const T* __restrict__ base, const T* __restrict__ detail,
                           const T* __restrict__ weight, const T* __restrict__ bias,
                           const T* __restrict__ pos, T* __restrict__ out, FwdParams P) {
  using TL = Tile<T>;
  constexpr int LD = TL::LD;
  __shared__ __align__(128) unsigned char smem[TL::kBytes];
  T* As = reinterpret_cast<T*>(smem);
  T* Ws = reinterpret_cast<T*>(smem + TL::kABytes);
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x;
  const int64_t n0 = int64_t(blockIdx.x) * BN;
  const int64_t m0 = int64_t(blockIdx.y) * BM;
  // Offsets inside one latent of the batch fit in int (checked on the host).
  const int W = static_cast<int>(P.W), HW = static_cast<int>(P.H * P.W);
  const int p = static_cast<int>(P.p), C = static_cast<int>(P.C), D = static_cast<int>(P.D);

  // Each thread gathers A for one fixed token of the tile (256 threads, 128 tokens) and the
  // columns kk_first, kk_first + 2, ... of each K slice.
  constexpr int kColStep = kThreads / BM;
  const int mi = tid % BM;
  const int kk_first = tid / BM;
  const int64_t m = m0 + mi;
  const bool m_ok = m < P.M;
  const T* base_b = base;
  const T* detail_b = detail;
  int token_off = 0;
  if (m_ok) {
    const TokenSource<int64_t> ts = patch_token_source<int64_t>(m, P.T, P.Wp, P.W, P.p);
    base_b = base + ts.b * P.C * HW;
    detail_b = detail + ts.b * P.D * HW;
    token_off = static_cast<int>(ts.offset);
  }

  // Column k of A: its offset inside one latent of the batch (times 2) plus 1 for detail. For
  // K <= kMaxTableK the block computes the table once; every gathered element then costs one
  // shared-memory broadcast instead of the index arithmetic.
  __shared__ int col_table[kMaxTableK];
  auto column_entry = [&](int k) {
    const ColumnSource<int> cs = patch_column_source<int>(k, C, D, static_cast<int>(P.H), W, p, P.detail_first);
    return (cs.offset << 1) | (cs.is_base ? 0 : 1);
  };
  const bool use_table = P.K <= kMaxTableK;
  if (use_table) {
    for (int k = tid; k < P.K; k += kThreads) col_table[k] = column_entry(k);
  }
  __syncthreads();

  // Register staging: the next K slice is loaded while the current one is multiplied.
  constexpr int kARegs = BM * BK / kThreads;
  constexpr int VW = kVecW ? vec16<T>() : 1;
  constexpr int kWRegs = BN * BK / VW / kThreads;
  using VWt = Vec<T, VW>;
  T a_reg[kARegs];
  VWt w_reg[kWRegs];

  auto load_slice = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kARegs; ++i) {
      const int64_t k = k0 + kk_first + kColStep * i;
      T v = T(0);
      if (m_ok && k < P.K) {
        const int entry = use_table ? col_table[k] : column_entry(static_cast<int>(k));
        v = ((entry & 1) ? detail_b : base_b)[(entry >> 1) + token_off];
      }
      a_reg[i] = v;
    }
#pragma unroll
    for (int i = 0; i < kWRegs; ++i) {
      const int e = tid + i * kThreads;  // consecutive threads: consecutive k of one row
      const int nn = e / (BK / VW), kv = e % (BK / VW);
      const int64_t n = n0 + nn, k = k0 + kv * VW;
      if constexpr (kVecW) {  // K % VW == 0: a vector is wholly inside or outside K
        if (n < P.N && k < P.K) {
          w_reg[i] = *reinterpret_cast<const VWt*>(weight + n * P.K + k);
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) w_reg[i].v[j] = T(0);
        }
      } else {
        w_reg[i].v[0] = (n < P.N && k < P.K) ? weight[n * P.K + k] : T(0);
      }
    }
  };
  auto store_slice = [&]() {
#pragma unroll
    for (int i = 0; i < kARegs; ++i) As[mi * LD + kk_first + kColStep * i] = a_reg[i];
#pragma unroll
    for (int i = 0; i < kWRegs; ++i) {
      const int e = tid + i * kThreads;
      const int nn = e / (BK / VW), kv = e % (BK / VW);
#pragma unroll
      for (int j = 0; j < VW; ++j) Ws[nn * LD + kv * VW + j] = w_reg[i].v[j];
    }
  };

  // Accumulators.
  using namespace nvcuda;
  constexpr bool kTensorCores = !std::is_same_v<T, float>;
  const int warp = tid / 32;
  // WMMA: 8 warps as 4 (M) x 2 (N), 32 x 64 each. FFMA: 16 x 16 threads, 8 x 8 each.
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int tr = tid / 16, tcol = tid % 16;
  using WT = typename WmmaType<T>::type;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag[2][4];
  float acc[8][8];
  if constexpr (kTensorCores) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc_frag[i][j], 0.f);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }

  load_slice(0);
  for (int64_t k0 = 0; k0 < P.K; k0 += BK) {
    store_slice();
    __syncthreads();
    if (k0 + BK < P.K) load_slice(k0 + BK);  // in flight during the multiply below

    if constexpr (kTensorCores) {
      const WT* Aw = reinterpret_cast<const WT*>(As);
      const WT* Ww = reinterpret_cast<const WT*>(Ws);
#pragma unroll
      for (int ks = 0; ks < BK; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> b[4];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], Aw + (warp_m * 32 + i * 16) * LD + ks, LD);
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::load_matrix_sync(b[j], Ww + (warp_n * 64 + j * 16) * LD + ks, LD);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) wmma::mma_sync(acc_frag[i][j], a[i], b[j], acc_frag[i][j]);
      }
    } else {
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        float a[8], b[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = to_float(As[(tr * 8 + i) * LD + kk]);
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = to_float(Ws[(tcol + 16 * j) * LD + kk]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

  // Epilogue, one 64-row half at a time through the float staging tile.
  constexpr int VEC = vec16<T>();
  using V = Vec<T, VEC>;
  for (int h = 0; h < 2; ++h) {
    if constexpr (kTensorCores) {
      if (warp_m / 2 == h) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            wmma::store_matrix_sync(Cs + ((warp_m % 2) * 32 + i * 16) * LDC + warp_n * 64 + j * 16,
                                    acc_frag[i][j], LDC, wmma::mem_row_major);
      }
    } else {
      if (tr / 8 == h) {
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) Cs[((tr % 8) * 8 + i) * LDC + tcol + 16 * j] = acc[i][j];
      }
    }
    __syncthreads();
    for (int e = tid; e < kHalfRows * (BN / VEC); e += kThreads) {
      const int row = e / (BN / VEC);
      const int cv = e % (BN / VEC);
      const int64_t mm = m0 + h * kHalfRows + row;
      const int64_t n = n0 + cv * VEC;
      if (mm >= P.M || n >= P.N) continue;
      const float* c = Cs + row * LDC + cv * VEC;
      const int64_t t = mm % P.T;
      if (P.vec_out && n + VEC <= P.N) {
        float v[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = c[i];
        if (P.has_bias) {
          const V bv = *reinterpret_cast<const V*>(bias + n);
#pragma unroll
          for (int i = 0; i < VEC; ++i) v[i] += to_float(bv.v[i]);
        }
        if (P.has_pos) {
          const V pv = *reinterpret_cast<const V*>(pos + t * P.N + n);
#pragma unroll
          for (int i = 0; i < VEC; ++i) v[i] += to_float(pv.v[i]);
        }
        V o;
#pragma unroll
        for (int i = 0; i < VEC; ++i) o.v[i] = from_float<T>(v[i]);
        *reinterpret_cast<V*>(out + mm * P.N + n) = o;
      } else {
        for (int i = 0; i < VEC && n + i < P.N; ++i) {
          float v = c[i];
          if (P.has_bias) v += to_float(bias[n + i]);
          if (P.has_pos) v += to_float(pos[t * P.N + n + i]);
          out[mm * P.N + n + i] = from_float<T>(v);
        }
      }
    }
    __syncthreads();
  }
}

// Moves patches between (base, detail) and the patch-row matrix A [M, K] one tile of tokens per
// block, in the two phases of patch_tile.h (the same functions the CPU kernel runs, so the CPU
// tests check this index math): 16-byte loads of the latent's line segments into a shared-memory
// tile, then 16-byte stores of the tile's rows of A, which are contiguous (or the reverse).
// kTileTokens tokens of one token row per tile, at most kTileBytes of shared memory. SD3 at
// 2048 px (bf16, K = 128): 64 tokens, 17 KB, 256 blocks; ImageNet (K = 128, 16 tokens a row):
// 512 blocks. The per-element kernel it replaces spent several integer divisions per 2-byte element
// and wrote A in 4-byte pieces 256 bytes apart.
constexpr int64_t kTileTokens = 64;
constexpr int64_t kTileBytes = 32 * 1024;

template <bool kScatter, int P, int VEC, typename T>
__global__ void __launch_bounds__(kThreads)
    patch_tile_kernel(T* __restrict__ A, T* __restrict__ base, T* __restrict__ detail, PatchTileArgs a) {
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

// The fallback when one patch row does not fit kTileBytes (or DAVAE_PATCH_TILE_MOVE=0): one thread
// per latent element, reading (or writing) the latent coalesced. I is the index type (int when
// everything fits, which keeps the divisions cheap).
template <bool kScatter, typename I, typename T>
__global__ void __launch_bounds__(kThreads)
    patch_move_kernel(T* __restrict__ A, T* __restrict__ base, T* __restrict__ detail, I total,
                      I C, I D, I H, I W, I p, bool detail_first) {
  for (I e = blockIdx.x * I(blockDim.x) + threadIdx.x; e < total; e += I(gridDim.x) * blockDim.x) {
    const PatchElement<I> pe = patch_element<I>(e, C, D, H, W, p, detail_first);
    T* latent = (pe.is_base ? base : detail) + pe.source;
    if constexpr (kScatter) {
      *latent = A[pe.a];
    } else {
      A[pe.a] = *latent;
    }
  }
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
// 160 blocks, where a fixed 64 gave 20 blocks for 19 MB of dOut.
int64_t pos_rows(int64_t T_, int64_t column_blocks) {
  int64_t rows = kMaxPosRows;
  while (rows > kPosGroups && column_blocks * ((T_ + rows - 1) / rows) < kMinPosBlocks) rows /= 2;
  TORCH_CHECK((T_ + rows - 1) / rows <= 65535, "detail_patch_embed_backward: too many tokens for one launch (",
              T_, ")");
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
    bias_grad_kernel(const float* __restrict__ partial, T* __restrict__ d_bias, int64_t chunks,
                     int64_t N) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float v = 0.f;
#pragma unroll 8
  for (int64_t c = 0; c < chunks; ++c) v += partial[c * N + n];  // fixed order
  d_bias[n] = from_float<T>(v);
}

bool env_enabled(const char* name) {  // read on every call (~0.1 us), so a benchmark can compare paths
  const char* v = std::getenv(name);
  return v == nullptr || std::string(v) != "0";
}

// A <- (base, detail) (kScatter = false) or (base, detail) <- A: the tile kernel when a patch row
// fits its shared memory, else the per-element kernel.
template <bool kScatter, typename T>
void launch_move(T* A, T* base, T* detail, const PatchShape& s, bool detail_first) {
  const int64_t total = s.B * (s.C + s.D) * s.H * s.W;
  if (total == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  PatchTilePlan plan{};
  if (env_enabled("DAVAE_PATCH_TILE_MOVE") &&
      plan_patch_tiles(s.B, s.C, s.D, s.H, s.W, s.p, detail_first, sizeof(T),
                       aligned16(A) && aligned16(base) && aligned16(detail), kTileTokens, kTileBytes, plan) &&
      plan.tiles < (int64_t{1} << 31)) {
    const size_t smem = static_cast<size_t>(plan.buffer_elems) * sizeof(T);
    with_patch_size(s.p, [&](auto patch) {
      constexpr int P = decltype(patch)::value;
      with_tile_vec<T>(plan, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        patch_tile_kernel<kScatter, P, VEC><<<static_cast<unsigned>(plan.tiles), kThreads, smem, stream>>>(
            A, base, detail, plan.args);
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (total < (int64_t{1} << 31) && s.M() * s.K() < (int64_t{1} << 31)) {
    patch_move_kernel<kScatter, int><<<blocks_for(total), kThreads, 0, stream>>>(
        A, base, detail, static_cast<int>(total), static_cast<int>(s.C), static_cast<int>(s.D),
        static_cast<int>(s.H), static_cast<int>(s.W), static_cast<int>(s.p), detail_first);
  } else {
    patch_move_kernel<kScatter, int64_t><<<blocks_for(total), kThreads, 0, stream>>>(
        A, base, detail, total, s.C, s.D, s.H, s.W, s.p, detail_first);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The forward through cuBLASLt for 16-bit inputs: A gathered from base and detail by one
// coalesced pass (the concatenated latent never exists), then one cuBLASLt GEMM whose epilogue
// adds bias and whose C matrix is the positional embedding (gemm_lt.cuh). Measured on an H100
// (SD3 2048 px, bf16) the tiled WMMA kernel above reached 18% of the copy bandwidth, cuBLAS's
// GEMM alone 86%. DAVAE_PATCH_EMBED_LT=0 forces the WMMA kernel. False: not taken.
bool lt_enabled() { return env_enabled("DAVAE_PATCH_EMBED_LT"); }

// How many token chunks the batched GEMM runs in. cuBLASLt runs a batched GEMM roughly one batch
// entry after another, and each entry reads the positional embedding (its C matrix, batch stride
// 0) again: when pos is larger than what L2 keeps between entries, while the output streams
// through, that is up to B reads of pos from DRAM (SD3 2048 px: pos 12.6 MB, out 50 MB, 4 entries).
// One GEMM per chunk of tokens whose pos slice is at most DAVAE_PATCH_EMBED_POS_CHUNK bytes would
// keep each slice in L2 for all B entries, at the cost of a launch per chunk (4 MiB, a twelfth of
// an H100's L2: SD3 2048 px in 4 chunks of 1024 tokens; 1024 px and ImageNet in one). That is a
// hypothesis no GPU has timed yet, so it is off by default (0: one GEMM, the path measured on an
// H100); the benchmarks time it (fused_pos_chunked), and the next GPU run decides the default.
int64_t pos_chunks(int64_t T_, int64_t N, int64_t elem_bytes) {
  int64_t budget = 0;
  if (const char* v = std::getenv("DAVAE_PATCH_EMBED_POS_CHUNK")) budget = std::strtoll(v, nullptr, 10);
  if (budget <= 0) return 1;
  const int64_t chunks = (T_ * N * elem_bytes + budget - 1) / budget;
  return chunks < 1 ? 1 : (chunks > T_ ? T_ : chunks);
}

template <typename T>
bool patch_embed_lt(const at::Tensor& b, const at::Tensor& d, const at::Tensor& w, const T* bias, const T* pos,
                    at::Tensor& out, const PatchShape& s, bool detail_first) {
  if constexpr (std::is_same_v<T, float>) {
    return false;  // float32 keeps exact FFMA products (no TF32)
  } else {
    if (!lt_enabled() || (bias != nullptr && !aligned16(bias))) return false;
    at::Tensor A = at::empty({s.M(), s.K()}, b.options());
    launch_move<false>(A.data_ptr<T>(), const_cast<T*>(b.const_data_ptr<T>()), const_cast<T*>(d.const_data_ptr<T>()),
                       s, detail_first);
    const int64_t T_ = s.T(), K = s.K(), N = s.N;
    const int64_t chunks = pos != nullptr && s.B > 1 ? pos_chunks(T_, N, sizeof(T)) : 1;
    const int64_t per_chunk = (T_ + chunks - 1) / chunks;
    for (int64_t t0 = 0; t0 < T_; t0 += per_chunk) {
      const int64_t rows = per_chunk < T_ - t0 ? per_chunk : T_ - t0;
      // False (no algorithm for this chunk's shape): the caller's tiled kernel rewrites all of out.
      if (!lt_patch_gemm<T>(A.const_data_ptr<T>() + t0 * K, w.const_data_ptr<T>(), bias,
                            pos != nullptr ? pos + t0 * N : nullptr, out.data_ptr<T>() + t0 * N, s.B, rows, T_, N, K,
                            at::cuda::getCurrentCUDAStream()))
        return false;
    }
    return true;
  }
}

// d_weight = dOut^T A through cuBLASLt for 16-bit inputs; with `d_bias` given, the GEMM's BGRADB
// epilogue also sums dOut's rows into it, so dOut is read once for both. False: not taken (the
// caller runs at::mm and the d_pos/d_bias pass). DAVAE_PATCH_EMBED_LT=0 disables it too.
template <typename T>
bool weight_grad_lt(const at::Tensor& A, const at::Tensor& g, at::Tensor& d_weight, T* d_bias, const PatchShape& s) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    if (!lt_enabled() || s.M() == 0 || s.N == 0 || s.K() == 0) return false;
    return lt_weight_grad<T>(A.const_data_ptr<T>(), g.const_data_ptr<T>(), d_weight.data_ptr<T>(), d_bias, s.M(), s.N,
                             s.K(), at::cuda::getCurrentCUDAStream());
  }
}

at::Tensor patch_embed_cuda(const at::Tensor& base, const at::Tensor& detail,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_embed, int64_t patch_size,
                            bool detail_first) {
  const PatchShape s =
      check_patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size);
  const c10::cuda::CUDAGuard guard(base.device());
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_pos = pos_embed.has_value() && pos_embed->defined();
  const at::Tensor b = base.contiguous();
  const at::Tensor d = detail.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  const at::Tensor pos_c = has_pos ? pos_embed->contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.B, s.T(), s.N}, base.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK(s.C * s.H * s.W < (int64_t{1} << 30) && s.D * s.H * s.W < (int64_t{1} << 30),
              "detail_patch_embed: one latent of the batch must have fewer than 2^30 elements");

  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "detail_patch_embed_cuda", [&] {
    const scalar_t* bp = has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pp = has_pos ? pos_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    constexpr int kVec = vec16<scalar_t>();
    FwdParams P{s.M(), s.N, s.K(), s.T(), s.C, s.D, s.H, s.W, s.p, s.Wp(), detail_first, has_bias,
                has_pos, false};
    P.vec_out = s.N % kVec == 0 && aligned16(op) && (!has_bias || aligned16(bp)) &&
                (!has_pos || aligned16(pp));
    if (patch_embed_lt<scalar_t>(b, d, w, bp, pp, out, s, detail_first)) return;
    const dim3 grid(static_cast<unsigned>((s.N + BN - 1) / BN), static_cast<unsigned>((s.M() + BM - 1) / BM));
    TORCH_CHECK(grid.y <= 65535, "detail_patch_embed: too many tokens for one launch (", s.M(), ")");
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    auto stream = at::cuda::getCurrentCUDAStream();
    if (s.K() % kVec == 0 && aligned16(wp)) {
      patch_embed_fwd_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(
          b.const_data_ptr<scalar_t>(), d.const_data_ptr<scalar_t>(), wp, bp, pp, op, P);
    } else {
      patch_embed_fwd_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
          b.const_data_ptr<scalar_t>(), d.const_data_ptr<scalar_t>(), wp, bp, pp, op, P);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_cuda(
    const at::Tensor& grad, const at::Tensor& base, const at::Tensor& detail,
    const at::Tensor& weight, int64_t patch_size, bool detail_first,
    std::array<bool, 4> output_mask) {
  const PatchShape s = check_patch_embed_backward(grad, base, detail, weight, patch_size);
  const c10::cuda::CUDAGuard guard(base.device());
  const auto [need_input, need_weight, need_bias, need_pos] = output_mask;
  const int64_t M = s.M(), K = s.K(), N = s.N, T_ = s.T();
  const at::Tensor g = grad.contiguous().view({M, N});
  const at::Tensor w = weight.reshape({N, K});
  auto none = [&] { return at::empty({0}, grad.options()); };
  at::Tensor d_base = none(), d_detail = none(), d_weight = none(), d_bias = none(), d_pos = none();
  auto stream = at::cuda::getCurrentCUDAStream();

  DAVAE_DISPATCH_FLOAT_HALF_BF16(base.scalar_type(), "detail_patch_embed_backward_cuda", [&] {
    // d_weight first: when d_pos is not asked for (the usual fine-tuning case, where pos_embed is
    // a buffer) its GEMM's epilogue also gives d_bias, and the d_pos/d_bias pass is skipped.
    bool bias_from_gemm = false;
    if (need_weight) {
      const at::Tensor b = base.contiguous();
      const at::Tensor d = detail.contiguous();
      at::Tensor A = at::empty({M, K}, base.options());
      launch_move<false>(A.data_ptr<scalar_t>(), const_cast<scalar_t*>(b.const_data_ptr<scalar_t>()),
                         const_cast<scalar_t*>(d.const_data_ptr<scalar_t>()), s, detail_first);
      at::Tensor dw = at::empty({N, K}, grad.options());
      at::Tensor fused_bias = need_bias && !need_pos ? at::empty({N}, grad.options()) : at::Tensor();
      if (weight_grad_lt<scalar_t>(A, g, dw, fused_bias.defined() ? fused_bias.data_ptr<scalar_t>() : nullptr, s)) {
        if (fused_bias.defined()) {
          d_bias = fused_bias;
          bias_from_gemm = true;
        }
      } else {
        at::mm_out(dw, g.t(), A);
      }
      d_weight = dw.view({N, s.C + s.D, s.p, s.p});
    }
    const bool bias_in_pass = need_bias && !bias_from_gemm;
    if (bias_in_pass || need_pos) {
      if (need_pos) d_pos = at::empty({1, T_, N}, grad.options());
      if (bias_in_pass) d_bias = at::empty({N}, grad.options());
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* dpp = need_pos ? d_pos.data_ptr<scalar_t>() : nullptr;
      const bool aligned = aligned16(gp) && (dpp == nullptr || aligned16(dpp));
      if (N > 0 && T_ > 0) {
        with_vec<scalar_t>(N, aligned, [&](auto vec) {
          constexpr int V = decltype(vec)::value;
          const int64_t column_blocks = (N + 32 * V - 1) / (32 * V);
          const int64_t rows = pos_rows(T_, column_blocks);
          const int64_t chunks = (T_ + rows - 1) / rows;
          at::Tensor partial = bias_in_pass ? at::empty({chunks, N}, grad.options().dtype(at::kFloat)) : at::Tensor();
          float* pp = bias_in_pass ? partial.data_ptr<float>() : nullptr;
          const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(chunks));
          pos_grad_kernel<V, scalar_t><<<grid, dim3(32, kPosGroups), 0, stream>>>(gp, dpp, pp, s.B, T_, N,
                                                                                  static_cast<int>(rows));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (bias_in_pass) {
            bias_grad_kernel<scalar_t><<<blocks_for(N), kThreads, 0, stream>>>(pp, d_bias.data_ptr<scalar_t>(),
                                                                               chunks, N);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
      } else if (bias_in_pass) {
        d_bias.zero_();  // no tokens: the sum over none
      }
    }
    if (need_input) {
      const at::Tensor dA = at::mm(g, w);  // [M, K]
      d_base = at::empty({s.B, s.C, s.H, s.W}, base.options());
      d_detail = at::empty({s.B, s.D, s.H, s.W}, detail.options());
      launch_move<true>(const_cast<scalar_t*>(dA.const_data_ptr<scalar_t>()), d_base.data_ptr<scalar_t>(),
                        d_detail.data_ptr<scalar_t>(), s, detail_first);
    }
  });
  return {d_base, d_detail, d_weight, d_bias, d_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(davae_ext, CUDA, m) {
  m.impl("detail_patch_embed", &patch_embed_cuda);
  m.impl("detail_patch_embed_backward", &patch_embed_backward_cuda);
}

}  // namespace davae::cuda
