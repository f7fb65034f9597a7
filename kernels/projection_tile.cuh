// Device helpers shared by the projection kernels (projection.cu) and the covariance kernels
// (covariance.cu): the counter-based generator of random projection entries, the 32-token
// projection tile of a dense factor, and its embedding counterpart, a column gather by token id.
//
// gg_proj_random(key, row, col, flags, scale): entry (row, col) of a random matrix, bit for bit
//   the formula of src/projection/generator.rs (see projection.cu's file comment).
//
// kp_project_tile<Elem>(X, width, ones, t0, keep, P, key, scale, flags, r0, k, Xs, Ps, Y):
//   Y[t][j] = Σ_c x_{t0+t}[c] P[r0+j][c] for the 32 tokens t of the tile and the 64 rows j of P
//   starting at r0 (rows >= k contribute 0); x is row t0+t of X (width `width`, plus a trailing
//   1 when `ones`), zero for tokens with keep[t] == 0 (never read). Features are streamed in
//   chunks of 32 through Xs[32][33] and Ps[64][33]; thread (tq = tid/64, j = tid%64) owns tokens
//   tq + 4m (m < 8) of column j and sums c in ascending order with fmaf. Contains barriers: the
//   whole block calls it.
//
// kp_load_tokens<AIn>(X, mask, t0, t_end, flags, keep, tok): the 32-token tile's bookkeeping:
//   keep[t] = token t0+t exists (< t_end) and is kept by the mask; for the id instantiations
//   (AIn = int) also tok[t] = its id (X[t0+t] read by gg_load_id: int32 ids, or int64 under
//   KP_FLAG_IDS64, where X is then the int64 buffer; t0+t itself under KP_FLAG_IOTA; 0 for
//   tokens not kept, whose ids are never read). Threads < 32 write; the caller barriers around it.
//
// kp_gather_tile(tok, keep, V, P, key, scale, flags, r0, k, Y): the same Y for one-hot rows
//   x_t = e_{tok[t]} (an embedding layer): Y[t][j] = P[r0+j][tok[t]] (0 for rows >= k and for
//   tokens with keep[t] == 0). This is bit for bit what kp_project_tile returns for the one-hot
//   row (fmaf(0, p, y) = y and fmaf(1, p, 0) = p exactly, for finite p). An id outside [0, V)
//   of a kept token gives NaN in every column (never an out-of-bounds read), so the sample's
//   result is NaN. No barrier inside; Y must not be read by other threads before one.

#pragma once

#include "common.cuh"

// kp_is_int<T>::value: true for the token-id instantiations (T = int).
template <typename T> struct kp_is_int { static constexpr bool value = false; };
template <> struct kp_is_int<int> { static constexpr bool value = true; };

#define KP_TT 32
#define KP_KT 64
#define KP_DC 32
#define KP_FLAG_RANDOM 2u
#define KP_FLAG_RADEMACHER 4u
#define KP_FLAG_TRANSPOSE 8u
#define KP_FLAG_IOTA 16u
#define KP_FLAG_IDS64 32u
#define GG_GOLDEN 0x9E3779B97F4A7C15ull

__device__ __forceinline__ unsigned long long gg_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float gg_proj_random(unsigned long long key, unsigned int row,
                                                unsigned int col, unsigned int flags,
                                                float scale) {
    const unsigned long long ctr = ((((unsigned long long)row) << 32) | col) + 1ull;
    const unsigned long long bits = gg_mix64(key + ctr * GG_GOLDEN);
    if (flags & KP_FLAG_RADEMACHER) return (bits >> 63) ? -scale : scale;
    const int s = (int)(bits & 0xFFFFull) + (int)((bits >> 16) & 0xFFFFull) +
                  (int)((bits >> 32) & 0xFFFFull) + (int)(bits >> 48);
    return __fmul_rn((float)(s - 131070), scale);
}

// Y[t][j] = Σ_c X[t][c] P[r0+j][c] for the 32 tokens of the tile (see the file comment).
template <typename Elem>
__device__ __forceinline__ void kp_project_tile(const Elem* __restrict__ X, unsigned int width,
                                                bool ones, unsigned int t0,
                                                const unsigned char* keep,
                                                const float* __restrict__ P,
                                                unsigned long long key, float scale,
                                                unsigned int flags, unsigned int r0,
                                                unsigned int k, float (*Xs)[KP_DC + 1],
                                                float (*Ps)[KP_DC + 1], float (*Y)[KP_KT]) {
    const unsigned int ncols = width + (ones ? 1u : 0u);
    const unsigned int j = threadIdx.x & 63u;
    const unsigned int tq = threadIdx.x >> 6;
    float y[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) y[m] = 0.0f;
    for (unsigned int c0 = 0; c0 < ncols; c0 += KP_DC) {
#pragma unroll
        for (int p = 0; p < (KP_TT * KP_DC) / GG_BLOCK; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int t = idx >> 5, c = idx & 31u;
            const unsigned int col = c0 + c;
            float x = 0.0f;
            if (keep[t]) {
                if (col < width)
                    x = to_f32(X[(size_t)(t0 + t) * width + col]);
                else if (col < ncols)
                    x = 1.0f;
            }
            Xs[t][c] = x;
        }
#pragma unroll
        for (int p = 0; p < (KP_KT * KP_DC) / GG_BLOCK; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int jj = idx >> 5, c = idx & 31u;
            const unsigned int row = r0 + jj, col = c0 + c;
            float v = 0.0f;
            if (row < k && col < ncols) {
                v = (flags & KP_FLAG_RANDOM) ? gg_proj_random(key, row, col, flags, scale)
                                             : P[(size_t)row * ncols + col];
            }
            Ps[jj][c] = v;
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < KP_DC; ++c) {
            const float pv = Ps[j][c];
#pragma unroll
            for (int m = 0; m < 8; ++m) y[m] = fmaf(Xs[tq + 4 * m][c], pv, y[m]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < 8; ++m) Y[tq + 4 * m][j] = y[m];
}

template <typename AIn>
__device__ __forceinline__ void kp_load_tokens(const AIn* __restrict__ X,
                                               const unsigned char* __restrict__ mask,
                                               unsigned int t0, unsigned int t_end,
                                               unsigned int flags, unsigned char* keep, int* tok) {
    if (threadIdx.x < KP_TT) {
        const unsigned int t = t0 + threadIdx.x;
        const bool kept = t < t_end && keep_row(mask, t);
        keep[threadIdx.x] = kept ? 1 : 0;
        if constexpr (kp_is_int<AIn>::value)  // masked: never read
            tok[threadIdx.x] = !kept                    ? 0
                               : (flags & KP_FLAG_IOTA) ? (int)t
                                                        : gg_load_id(X, t, (flags & KP_FLAG_IDS64) != 0u);
    }
}

__device__ __forceinline__ void kp_gather_tile(const int* tok, const unsigned char* keep,
                                               unsigned int V, const float* __restrict__ P,
                                               unsigned long long key, float scale,
                                               unsigned int flags, unsigned int r0, unsigned int k,
                                               float (*Y)[KP_KT]) {
    const unsigned int j = threadIdx.x & 63u;
    const unsigned int tq = threadIdx.x >> 6;
    const unsigned int row = r0 + j;
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const unsigned int t = tq + 4u * m;
        float v = 0.0f;
        if (keep[t]) {
            const unsigned int id = (unsigned int)tok[t];  // a negative id wraps to >= V
            if (id >= V)
                v = __int_as_float(0x7fc00000);  // NaN: the sample's result is poisoned
            else if (row < k)
                v = (flags & KP_FLAG_RANDOM) ? gg_proj_random(key, row, id, flags, scale)
                                             : P[(size_t)row * V + id];
        }
        Y[t][j] = v;
    }
}
