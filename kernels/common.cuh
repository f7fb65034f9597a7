// Shared helpers for the ghostgrad kernels.
//
// * `to_f32(x)`: element -> f32 for the three input types (float, __nv_bfloat16, __half).
//   The bf16/f16 conversions use the cuda_bf16.h / cuda_fp16.h intrinsics, which are exact and
//   available on every architecture we build for (sm_75 included).
// * `block_sum_256(v)`: sum of one float per thread over a 256-thread block in a FIXED order
//   (shuffle-down tree inside each warp, then warp 0 sums the 8 warp totals in warp order).
//   The result is valid in thread 0 only. Every thread of the block must call it (it contains
//   shuffles with a full mask and barriers): kernels never return early per thread.
// * `segment_rows(...)`: the query-row range of segment / batch item v (see ghost_gram.cu).
// * `keep_row(mask, idx)`: nonzero mask byte = keep; a null mask keeps everything.
// * `split_range(s, per_split, count, &b, &e)`: the items [b, e) that reduction split s owns
//   when every split takes `per_split` of `count` items in order (0 = one split takes all):
//   b = min(s·per, count), e = min(b + per, count); empty past the end.
// * `gg_same_type<A, B>::value`: type equality, for `if constexpr` over element types.
// * `gg_fma_row_4x4(x, y, tx, ty, c)`: one reduction step of a 64×64 register-tiled product:
//   thread (ty, tx) updates its 4×4 tile c[a][b] = fmaf(x[4ty+a], y[4tx+b], c[a][b]) (a, b
//   ascending) from one row each of two shared tiles (float4 reads: x + 4ty and y + 4tx must be
//   16-byte aligned). Every tiled kernel's inner loop; the fma order is part of the result.
//
// Conventions shared by all kernels: block = 256 threads, 1-D; static shared memory only;
// every element offset is computed in 64-bit (size_t); no atomics; no fast-math.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stddef.h>

#define GG_BLOCK 256
// Every kernel: 256 threads, and at least 2 resident blocks per SM (caps registers at 128).
// The explicit minimum also stops ptxas 13.5 from choosing a 48-register budget with spills.
#define GG_LAUNCH_BOUNDS __launch_bounds__(256, 2)
#define GG_FLAG_BIAS 1u
#define GG_FLAG_SELF 2u

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// gg_same_type<A, B>::value: whether A and B are one type (for `if constexpr` on element types).
template <typename A, typename B>
struct gg_same_type {
    static constexpr bool value = false;
};
template <typename A>
struct gg_same_type<A, A> {
    static constexpr bool value = true;
};

__device__ __forceinline__ bool keep_row(const unsigned char* mask, size_t idx) {
    return mask == nullptr || mask[idx] != 0;
}

// Token id `i` of an id buffer of int32 (wide == false) or int64 (wide == true) elements (torch
// holds ids in int64). An int64 id outside the int32 range reads as -1, outside every vocabulary,
// so it takes the same path as any out-of-range id (NaN, never an out-of-bounds access); every
// int32-range id reads exactly. `wide` is uniform over the launch (a flag bit of the kernel).
__device__ __forceinline__ int gg_load_id(const void* __restrict__ ids, size_t i, bool wide) {
    if (wide) {
        const long long v = static_cast<const long long*>(ids)[i];
        return (v >= -1ll && v <= 2147483647ll) ? (int)v : -1;
    }
    return static_cast<const int*>(ids)[i];
}

// Fixed-order block reduction for blockDim.x == 256. Result valid in thread 0.
__device__ __forceinline__ float block_sum_256(float v) {
    __shared__ float warp_tot[GG_BLOCK / 32];
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warp = threadIdx.x >> 5;
    v += __shfl_down_sync(0xffffffffu, v, 16);
    v += __shfl_down_sync(0xffffffffu, v, 8);
    v += __shfl_down_sync(0xffffffffu, v, 4);
    v += __shfl_down_sync(0xffffffffu, v, 2);
    v += __shfl_down_sync(0xffffffffu, v, 1);
    if (lane == 0) warp_tot[warp] = v;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0) {
#pragma unroll
        for (int w = 0; w < GG_BLOCK / 32; ++w) total += warp_tot[w];
    }
    return total;
}

// Rows [*start, *end) of segment v out of Q rows:
//   seg_offsets != null: [seg_offsets[v], seg_offsets[v+1]) clamped into [0, Q]; end < start
//                        means empty;
//   else V == 1:         [0, Q);
//   else:                [v*seg_len, min(Q, (v+1)*seg_len)).
__device__ __forceinline__ void segment_rows(const int* seg_offsets, unsigned int seg_len,
                                             unsigned int v, unsigned int V, unsigned int Q,
                                             unsigned int* start, unsigned int* end) {
    unsigned long long s, e;
    if (seg_offsets != nullptr) {
        long long a = seg_offsets[v];
        long long b = seg_offsets[v + 1];
        a = a < 0 ? 0 : (a > (long long)Q ? (long long)Q : a);
        b = b < 0 ? 0 : (b > (long long)Q ? (long long)Q : b);
        s = (unsigned long long)a;
        e = (unsigned long long)b;
    } else if (V == 1u) {
        s = 0;
        e = Q;
    } else {
        s = (unsigned long long)v * seg_len;
        e = s + seg_len;
        if (s > Q) s = Q;
        if (e > Q) e = Q;
    }
    if (e < s) e = s;
    *start = (unsigned int)s;
    *end = (unsigned int)e;
}

__device__ __forceinline__ void gg_fma_row_4x4(const float* x, const float* y, unsigned int tx,
                                               unsigned int ty, float (*c)[4]) {
    const float4 x4 = *reinterpret_cast<const float4*>(x + 4 * ty);
    const float4 y4 = *reinterpret_cast<const float4*>(y + 4 * tx);
    const float xv[4] = {x4.x, x4.y, x4.z, x4.w};
    const float yv[4] = {y4.x, y4.y, y4.z, y4.w};
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) c[a][b] = fmaf(xv[a], yv[b], c[a][b]);
}

__device__ __forceinline__ void split_range(unsigned long long s, unsigned long long per_split,
                                            unsigned long long count, unsigned long long* b,
                                            unsigned long long* e) {
    const unsigned long long per = per_split ? per_split : count;
    unsigned long long lo = s * per, hi = lo + per;
    if (hi > count) hi = count;
    if (lo > hi) lo = hi;
    *b = lo;
    *e = hi;
}
