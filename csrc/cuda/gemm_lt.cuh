// One cuBLASLt call for the patch-embed GEMM with its whole epilogue:
//   out[b] = A[b] W^T + bias + pos          (A[b]: [T, K], W: [N, K], pos: [T, N], out[b]: [T, N])
// bias through CUBLASLT_EPILOGUE_BIAS, pos as the C matrix (beta = 1) with batch stride 0, so the
// positional embedding is read, never copied, and out is written once. Returns false when
// cuBLASLt offers no algorithm or the call fails; the caller then runs its own kernel.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace davae::cuda {

template <typename T>
struct LtType;
template <>
struct LtType<c10::Half> {
  static constexpr cudaDataType_t value = CUDA_R_16F;
};
template <>
struct LtType<c10::BFloat16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};

// Frees cuBLASLt descriptors on every return path.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

inline bool lt_ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }

// The largest power of two (up to 256) that divides the address: what cuBLASLt may assume.
inline uint32_t alignment_of(const void* p) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<std::uintptr_t>(p) % a) a /= 2;
  return a;
}

// Column-major view (cuBLASLt's): D^T[N, B*T] = W[N, K] (stored as col-major K x N, transposed)
// times A^T[K, B*T] (col-major K x M), batched over b with T columns each.
template <typename T>
bool lt_patch_gemm(const T* A, const T* W, const T* bias, const T* pos, T* out, int64_t B, int64_t Tn,
                   int64_t N, int64_t K, cudaStream_t stream) {
  constexpr cudaDataType_t dt = LtType<T>::value;
  LtDescriptors h;
  const bool batched = pos != nullptr && B > 1;
  const int64_t cols = batched ? Tn : B * Tn;  // columns of one batch entry of D
  const int32_t batch = batched ? static_cast<int32_t>(B) : 1;
  if (!lt_ok(cublasLtMatmulDescCreate(&h.op, CUBLAS_COMPUTE_32F, CUDA_R_32F))) return false;
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT));
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN));
  if (bias != nullptr) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
  }
  if (!lt_ok(cublasLtMatrixLayoutCreate(&h.a, dt, K, N, K)) ||        // W: col-major K x N, used transposed
      !lt_ok(cublasLtMatrixLayoutCreate(&h.b, dt, K, cols, K)) ||     // A^T: col-major K x cols
      !lt_ok(cublasLtMatrixLayoutCreate(&h.c, dt, N, cols, N)) ||     // pos^T (or D)
      !lt_ok(cublasLtMatrixLayoutCreate(&h.d, dt, N, cols, N)))       // out^T: col-major N x cols
    return false;
  if (batched) {
    const int64_t zero = 0, stride_b = Tn * K, stride_d = Tn * N;
    for (auto* layout : {h.a, h.b, h.c, h.d})
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch));
    cublasLtMatrixLayoutSetAttribute(h.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &zero, sizeof(zero));
    cublasLtMatrixLayoutSetAttribute(h.b, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_b, sizeof(stride_b));
    cublasLtMatrixLayoutSetAttribute(h.c, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &zero, sizeof(zero));
    cublasLtMatrixLayoutSetAttribute(h.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_d, sizeof(stride_d));
  }
  size_t workspace = at::cuda::getCUDABlasLtWorkspaceSize();
  void* ws = at::cuda::getCUDABlasLtWorkspace();
  if (!lt_ok(cublasLtMatmulPreferenceCreate(&h.pref))) return false;
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
  const uint32_t align_a = alignment_of(W), align_b = alignment_of(A), align_d = alignment_of(out);
  const uint32_t align_c = pos != nullptr ? alignment_of(pos) : align_d;
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  if (!lt_ok(cublasLtMatmulAlgoGetHeuristic(handle, h.op, h.a, h.b, h.c, h.d, h.pref, 1, &result, &found)) || found == 0)
    return false;
  const float alpha = 1.f, beta = pos != nullptr ? 1.f : 0.f;
  const void* c_ptr = pos != nullptr ? static_cast<const void*>(pos) : static_cast<const void*>(out);
  return lt_ok(cublasLtMatmul(handle, h.op, &alpha, W, h.a, A, h.b, &beta, c_ptr, h.c, out, h.d, &result.algo, ws,
                              workspace, stream));
}

}  // namespace davae::cuda
