// The 64 x 64 score-tile dot products shared by the Gram-form kernels (ghost_gram.cu,
// embedding.cu): acc[i][j] = Σ_k X[t0+4ty+i][k] * Xq[u0+4tx+j][k] for one 256-thread block.
// The tiling, loader and bank analysis are documented in ghost_gram.cu. Shared tiles Xs/Qs are
// owned by the caller ([GR_KC][GR_LD] floats each, 16-byte aligned).
#pragma once

#include "common.cuh"

#define GR_TT 64
#define GR_TU 64
#define GR_KC 32
#define GR_LD (GR_TT + 4)  // transposed tile row stride: 16-byte aligned rows, see the loader

// acc[i][j] = Σ_k X[t0+4ty+i][k] * Xq[u0+4tx+j][k] over k < d, for rows kept in keepT/keepU
// (others read as 0). X and Xq point at row 0 of their matrices (row stride d); their element
// types may differ (the ghg combined query is f32 beside bf16 / f16 training factors): both are
// widened to f32 in shared memory, so the arithmetic does not depend on them.
template <typename Elem, typename QElem>
__device__ __forceinline__ void gram_tile_dots(const Elem* __restrict__ X,
                                               const QElem* __restrict__ Xq, unsigned int d,
                                               unsigned int t0, unsigned int u0,
                                               const unsigned char* keepT,
                                               const unsigned char* keepU,
                                               float (*Xs)[GR_LD], float (*Qs)[GR_LD],
                                               float acc[4][4]) {
    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    // Loader: a warp reads 4 rows × 8 consecutive features per step (32-byte row segments for
    // f32) and stores them transposed, Xs[k][row]: bank (4k + row) % 32 is distinct over the
    // warp, so the stores are conflict-free.
    const unsigned int lk = threadIdx.x & 7u;
    const unsigned int lr = threadIdx.x >> 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (unsigned int k0 = 0; k0 < d; k0 += GR_KC) {
#pragma unroll
        for (int p = 0; p < (GR_KC * GR_TT) / GG_BLOCK; ++p) {
            const unsigned int kc = (p & 3) * 8u + lk;
            const unsigned int r = lr + 32u * (p >> 2);
            const unsigned int k = k0 + kc;
            float x = 0.0f;
            if (k < d && keepT[r]) x = to_f32(X[(size_t)(t0 + r) * d + k]);
            Xs[kc][r] = x;
            float q = 0.0f;
            if (k < d && keepU[r]) q = to_f32(Xq[(size_t)(u0 + r) * d + k]);
            Qs[kc][r] = q;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < GR_KC; ++kk) {
            gg_fma_row_4x4(Xs[kk], Qs[kk], tx, ty, acc);
        }
        __syncthreads();
    }
}

