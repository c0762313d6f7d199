// The patch embed's GEMMs through cuBLASLt, each one call with its epilogue:
//   forward:  out[b] = A[b] W^T + bias + pos   (A[b]: [T, K], W: [N, K], pos: [T, N], out[b]: [T, N])
//             bias through CUBLASLT_EPILOGUE_BIAS, pos as the C matrix (beta = 1) with batch
//             stride 0, so the positional embedding is read, never copied, and out is written once;
//   backward: d_weight = dOut^T A and d_bias = column sums of dOut (CUBLASLT_EPILOGUE_BGRADB), so
//             dOut is read once for both.
// Each returns false when cuBLASLt offers no algorithm or the call fails; the caller then runs
// its own path.
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

// Asks the heuristic for one algorithm for the GEMM described by h.op / h.a-d (alignments taken
// from the pointers) and runs D = op(A) op(B) + beta C on `stream`.
inline bool lt_matmul(LtDescriptors& h, const void* A, const void* B, float beta, const void* C, void* D,
                      cudaStream_t stream) {
  size_t workspace = at::cuda::getCUDABlasLtWorkspaceSize();
  void* ws = at::cuda::getCUDABlasLtWorkspace();
  if (!lt_ok(cublasLtMatmulPreferenceCreate(&h.pref))) return false;
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
  const uint32_t align_a = alignment_of(A), align_b = alignment_of(B), align_c = alignment_of(C),
                 align_d = alignment_of(D);
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  cublasLtMatmulPreferenceSetAttribute(h.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  if (!lt_ok(cublasLtMatmulAlgoGetHeuristic(handle, h.op, h.a, h.b, h.c, h.d, h.pref, 1, &result, &found)) || found == 0)
    return false;
  const float alpha = 1.f;
  return lt_ok(cublasLtMatmul(handle, h.op, &alpha, A, h.a, B, h.b, &beta, C, h.c, D, h.d, &result.algo, ws,
                              workspace, stream));
}

inline bool lt_op_desc(LtDescriptors& h, cublasOperation_t trans_a, cublasOperation_t trans_b) {
  if (!lt_ok(cublasLtMatmulDescCreate(&h.op, CUBLAS_COMPUTE_32F, CUDA_R_32F))) return false;
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a));
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b));
  return true;
}

inline void lt_epilogue(LtDescriptors& h, cublasLtEpilogue_t epilogue, const void* vector) {
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  cublasLtMatmulDescSetAttribute(h.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vector, sizeof(vector));
}

// Forward. Column-major view (cuBLASLt's): D^T[N, cols] = W[N, K] (stored as col-major K x N,
// transposed) times A^T[K, cols] (col-major K x cols). With pos and B > 1, a batch of B such
// GEMMs over `rows` token rows each, batch entries `batch_rows` rows apart in A and out, pos
// shared (batch stride 0); else one GEMM over all B * rows rows (pos then has them all, B = 1).
// A, pos and out point at the first row; the caller may pass a slice of the token rows.
template <typename T>
bool lt_patch_gemm(const T* A, const T* W, const T* bias, const T* pos, T* out, int64_t B, int64_t rows,
                   int64_t batch_rows, int64_t N, int64_t K, cudaStream_t stream) {
  constexpr cudaDataType_t dt = LtType<T>::value;
  LtDescriptors h;
  const bool batched = pos != nullptr && B > 1;
  const int64_t cols = batched ? rows : B * rows;  // columns of one batch entry of D
  const int32_t batch = batched ? static_cast<int32_t>(B) : 1;
  if (!lt_op_desc(h, CUBLAS_OP_T, CUBLAS_OP_N)) return false;
  if (bias != nullptr) lt_epilogue(h, CUBLASLT_EPILOGUE_BIAS, bias);
  if (!lt_ok(cublasLtMatrixLayoutCreate(&h.a, dt, K, N, K)) ||        // W: col-major K x N, used transposed
      !lt_ok(cublasLtMatrixLayoutCreate(&h.b, dt, K, cols, K)) ||     // A^T: col-major K x cols
      !lt_ok(cublasLtMatrixLayoutCreate(&h.c, dt, N, cols, N)) ||     // pos^T (or D)
      !lt_ok(cublasLtMatrixLayoutCreate(&h.d, dt, N, cols, N)))       // out^T: col-major N x cols
    return false;
  if (batched) {
    const int64_t zero = 0, stride_b = batch_rows * K, stride_d = batch_rows * N;
    for (auto* layout : {h.a, h.b, h.c, h.d})
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch));
    cublasLtMatrixLayoutSetAttribute(h.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &zero, sizeof(zero));
    cublasLtMatrixLayoutSetAttribute(h.b, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_b, sizeof(stride_b));
    cublasLtMatrixLayoutSetAttribute(h.c, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &zero, sizeof(zero));
    cublasLtMatrixLayoutSetAttribute(h.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_d, sizeof(stride_d));
  }
  const float beta = pos != nullptr ? 1.f : 0.f;
  const void* c_ptr = pos != nullptr ? static_cast<const void*>(pos) : static_cast<const void*>(out);
  return lt_matmul(h, W, A, beta, c_ptr, out, stream);
}

// Backward, d_weight [N, K] = dOut^T [N, M] A [M, K] and, when d_bias is given, d_bias [N] = the
// sum of dOut over its M rows, from the same pass over dOut. Column-major view: D[K, N] (d_weight
// row-major) = A^T[K, M] (A row-major [M, K]) times dOut[M, N] (dOut row-major is col-major
// N x M, used transposed); the GEMM's reduction dimension is M, and BGRADB reduces the B operand
// (dOut) over it into a vector of D's N columns.
template <typename T>
bool lt_weight_grad(const T* A, const T* dOut, T* d_weight, T* d_bias, int64_t M, int64_t N, int64_t K,
                    cudaStream_t stream) {
  constexpr cudaDataType_t dt = LtType<T>::value;
  LtDescriptors h;
  if (!lt_op_desc(h, CUBLAS_OP_N, CUBLAS_OP_T)) return false;
  if (d_bias != nullptr) lt_epilogue(h, CUBLASLT_EPILOGUE_BGRADB, d_bias);
  if (!lt_ok(cublasLtMatrixLayoutCreate(&h.a, dt, K, M, K)) ||  // A^T: col-major K x M
      !lt_ok(cublasLtMatrixLayoutCreate(&h.b, dt, N, M, N)) ||  // dOut: col-major N x M, used transposed
      !lt_ok(cublasLtMatrixLayoutCreate(&h.c, dt, K, N, K)) ||
      !lt_ok(cublasLtMatrixLayoutCreate(&h.d, dt, K, N, K)))    // d_weight: col-major K x N
    return false;
  return lt_matmul(h, A, dOut, 0.f, d_weight, d_weight, stream);
}

}  // namespace davae::cuda
