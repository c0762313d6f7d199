// DAVAE_HD: a function both the CPU (.cpp) and the CUDA (.cu) kernels call.
#pragma once

#if defined(__CUDACC__)
#define DAVAE_HD __host__ __device__ __forceinline__
#else
#define DAVAE_HD inline
#endif
