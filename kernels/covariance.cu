// Second-moment accumulators of projected gradients (MATH.md §4): the raw projected Fisher, the
// K-FAC factor covariances (fused with the in-kernel projection), and the EK-FAC eigenvalue
// correction. Every kernel writes per-CTA partial sums of its split of the reduction; the host
// then runs finalize_partials_f32 (reduce.cu), which adds the splits in a fixed order and applies
// out = beta·out + scale·Σ. The split count is a function of the shape only, so every device
// returns the same bits. No atomics.
//
// syrk_partial_f32(const float* X, float* partial, unsigned rows, unsigned k,
//                  unsigned long long ld, unsigned long long offset, unsigned rows_per_split)
//   partial[s*k*k + i*k + j] = Σ_{r in split s} x_r[i] x_r[j],   x_r[c] = X[r*ld + offset + c]
//   (rows [s*rps, min(rows,(s+1)*rps)), rps == 0 means all), written for ALL i, j: a CTA owns
//   the 64×64 tile (bi, bj), bi <= bj, and for bi < bj also stores its transpose into (bj, bi),
//   so the result is exactly symmetric. Launch: grid = (ceil(k/64), ceil(k/64), S), blockIdx.x
//   = bj, blockIdx.y = bi; CTAs with bi > bj return at once. Rows stream in chunks of 16
//   through Xi[16][68], Xj[16][68] (rows × columns, float4 reads); thread (ty = tid/16,
//   tx = tid%16) owns (4ty + a, 4tx + b), summing rows in ascending order with fmaf. 8704 bytes
//   of shared memory. Scalar global loads: any ld / offset.
//
// kfac_cov_{f32,bf16,f16}(const Elem* X, const unsigned char* mask, const float* P,
//                         unsigned long long key, float scale, float* partial, unsigned rows,
//                         unsigned width, unsigned k, unsigned tokens_per_split, unsigned flags)
//   partial[s*k*k + i*k + j] = Σ_{r in split s, mask[r]} (P x_r)[i] (P x_r)[j]
//   x_r = row r of X [rows, width] (+ a trailing 1 when flags bit0, the bias column), P
//   [k, width + bias] dense f32 or generated in-kernel (flags bit1 random, bit2 Rademacher; see
//   projection.cu). rows = N·T: the covariance runs over every kept token of every sample.
//   Launch: grid = (ceil(k/64), ceil(k/64), S) as syrk; per 32-token tile the block projects the
//   tile onto P rows [64bi, +64) into PI and, when bi != bj, onto rows [64bj, +64) into PJ
//   (kp_project_tile), then adds PI[t][.]ᵀ PJ[t][.] for every kept t in ascending order. The
//   projected tokens exist only in shared memory: [rows, k] is never materialized.
//   Shared memory: Xs 4224 + Ps 8448 + PI 8192 + PJ 8192 + keep 32 = 29088 bytes.
//
// project_rows_{f32,bf16,f16}(const Elem* X, const unsigned char* mask, const float* P,
//                             unsigned long long key, float scale, float* out, unsigned rows,
//                             unsigned width, unsigned k, unsigned flags)
//   out[r*k + i] = mask[r] ? (P x_r)[i] : 0, x_r and P as for kfac_cov (flags bit0 bias, bit1
//   random, bit2 Rademacher). The first half of the K-FAC factor for k > 64, where kfac_cov
//   would project every token tile once per pair of 64-row tiles of P: here each token is
//   projected once into a workspace scratch [rows, k], then syrk_partial_f32 forms Σ y yᵀ. Same
//   kp_project_tile as kfac_cov (same bits per projected entry). Launch grid =
//   (ceil(rows/32), ceil(k/64), 1); Xs, Ps, Y[32][64], keep: 20 896 bytes of shared memory.
//
// kfac_cov_ids_f32(const int* ids, const unsigned char* mask, const float* P,
//                  unsigned long long key, float scale, float* partial, unsigned rows,
//                  unsigned vocab, unsigned k, unsigned tokens_per_split, unsigned flags)
//   The same for an embedding layer (x_r = e_{ids[r]}, (P x_r)[i] = P[i, ids[r]], gathered by
//   kp_gather_tile; `ids` int32, or int64 under flags bit5 IDS64): ids of masked tokens are never
//   read; a kept id outside [0, vocab) (an int64 one outside the int32 range included) turns
//   every entry of the covariance tiles it meets into NaN, never an out-of-bounds read.
//   Shared memory: PI, PJ, keep and tok[32] ints = 16544 bytes.
//
// ekfac_partial_f32(const float* G, unsigned long long ld, unsigned long long offset,
//                   const float* QB, const float* QA, float* partial, unsigned N, unsigned k_o,
//                   unsigned k_i, unsigned samples_per_split)
//   partial[s*k_o*k_i + o*k_i + i] = Σ_{n in split s} (Q_Bᵀ Ĝ_n Q_A)[o, i]^2
//   Ĝ_n[c, p] = G[n*ld + offset + c*k_i + p] (row-major k_o × k_i), Q_B [k_o, k_o] and Q_A
//   [k_i, k_i] row-major f32 (columns = eigenvectors). Launch: grid = (ceil(k_i/64),
//   ceil(k_o/64), S); the block owns the 64×64 tile (o0 = 64·y, i0 = 64·x). Per sample, per
//   16-row chunk c0 of Ĝ_n: W[cc][i] = Σ_p Ĝ_n[c0+cc, p] Q_A[p, i0+i] (p ascending through
//   Gs[16][17] and Fs[16][68]; thread (cc = tid/16, tx) owns W[cc][4tx..4tx+3]), then
//   R[o][i] += Σ_cc Q_B[c0+cc, o0+o] W[cc][i] (c ascending, Bs[16][68], Ws[16][68]); after all
//   chunks acc += R ⊙ R (fmaf). Shared memory: 1088 + 3·4352 = 14144 bytes.

#include "projection_tile.cuh"

#define CV_T 64
#define CV_RC 16
#define CV_LD (CV_T + 4)

extern "C" __global__ void GG_LAUNCH_BOUNDS
    syrk_partial_f32(const float* __restrict__ X, float* partial, unsigned int rows,
                     unsigned int k, unsigned long long ld, unsigned long long offset,
                     unsigned int rows_per_split) {
    static_assert(CV_T * CV_RC == 4 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float Xi[CV_RC][CV_LD];
    __shared__ __align__(16) float Xj[CV_RC][CV_LD];
    const unsigned int bj = blockIdx.x, bi = blockIdx.y, s = blockIdx.z;
    if (bi > bj) return;  // uniform over the block: the mirror tile is written by (bj, bi)
    const unsigned int i0 = bi * CV_T, j0 = bj * CV_T;
    unsigned long long rb, re;
    split_range(s, rows_per_split, rows, &rb, &re);
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float c[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) c[a][b] = 0.0f;
    for (unsigned long long r0 = rb; r0 < re; r0 += CV_RC) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int rr = idx >> 6, cc = idx & 63u;
            const unsigned long long r = r0 + rr;
            const bool row_ok = r < re;
            const float* xr = X + r * ld + offset;
            Xi[rr][cc] = (row_ok && i0 + cc < k) ? xr[i0 + cc] : 0.0f;
            Xj[rr][cc] = (row_ok && j0 + cc < k) ? xr[j0 + cc] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < CV_RC; ++rr) {
            gg_fma_row_4x4(Xi[rr], Xj[rr], tx, ty, c);
        }
        __syncthreads();
    }
    float* dst = partial + (size_t)s * k * k;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int i = i0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int j = j0 + 4u * tx + b;
            if (i < k && j < k) {
                dst[(size_t)i * k + j] = c[a][b];
                if (bi != bj) dst[(size_t)j * k + i] = c[a][b];
            }
        }
    }
}

// AIn = Elem: dense rows X [rows, width]; AIn = int: token ids [rows] into a vocabulary of
// `width` entries (embedding layer).
template <typename Elem, typename AIn>
__device__ __forceinline__ void kfac_cov_impl(const AIn* __restrict__ X,
                                              const unsigned char* __restrict__ mask,
                                              const float* __restrict__ P, unsigned long long key,
                                              float scale, float* partial, unsigned int rows,
                                              unsigned int width, unsigned int k,
                                              unsigned int tokens_per_split, unsigned int flags) {
    static_assert(KP_TT * KP_DC == 4 * GG_BLOCK && KP_KT * KP_DC == 8 * GG_BLOCK, "loader shape");
    __shared__ float Xs[KP_TT][KP_DC + 1];
    __shared__ float Ps[KP_KT][KP_DC + 1];
    __shared__ __align__(16) float PI[KP_TT][KP_KT];
    __shared__ __align__(16) float PJ[KP_TT][KP_KT];
    __shared__ unsigned char keep[KP_TT];
    __shared__ int tok[KP_TT];
    constexpr bool kIds = kp_is_int<AIn>::value;

    const unsigned int bj = blockIdx.x, bi = blockIdx.y, s = blockIdx.z;
    if (bi > bj) return;  // uniform over the block
    const unsigned int i0 = bi * KP_KT, j0 = bj * KP_KT;
    const bool ones = (flags & GG_FLAG_BIAS) != 0u;
    unsigned long long tb, te;
    split_range(s, tokens_per_split, rows, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float c[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) c[a][b] = 0.0f;

    for (unsigned int t0 = t_begin; t0 < t_end; t0 += KP_TT) {
        __syncthreads();  // the previous tile's outer products have finished reading PI/PJ/keep
        kp_load_tokens(X, mask, t0, t_end, flags, keep, tok);
        __syncthreads();
        if constexpr (kIds) {
            kp_gather_tile(tok, keep, width, P, key, scale, flags, i0, k, PI);
            if (bi != bj) kp_gather_tile(tok, keep, width, P, key, scale, flags, j0, k, PJ);
        } else {
            const Elem* Xe = reinterpret_cast<const Elem*>(X);
            kp_project_tile<Elem>(Xe, width, ones, t0, keep, P, key, scale, flags, i0, k, Xs, Ps,
                                  PI);
            if (bi != bj)  // uniform over the block
                kp_project_tile<Elem>(Xe, width, ones, t0, keep, P, key, scale, flags, j0, k, Xs,
                                      Ps, PJ);
        }
        __syncthreads();
        const float(*Q)[KP_KT] = (bi != bj) ? PJ : PI;
        for (int t = 0; t < KP_TT; ++t) {
            if (!keep[t]) continue;  // uniform: keep is in shared memory
            gg_fma_row_4x4(PI[t], Q[t], tx, ty, c);
        }
    }

    float* dst = partial + (size_t)s * k * k;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int i = i0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int j = j0 + 4u * tx + b;
            if (i < k && j < k) {
                dst[(size_t)i * k + j] = c[a][b];
                if (bi != bj) dst[(size_t)j * k + i] = c[a][b];
            }
        }
    }
}

#define GG_KFAC_INSTANTIATE(SUFFIX, ELEM)                                                          \
    extern "C" __global__ void GG_LAUNCH_BOUNDS kfac_cov_##SUFFIX(                                 \
        const ELEM* __restrict__ X, const unsigned char* __restrict__ mask,                        \
        const float* __restrict__ P, unsigned long long key, float scale, float* partial,          \
        unsigned int rows, unsigned int width, unsigned int k, unsigned int tokens_per_split,      \
        unsigned int flags) {                                                                      \
        kfac_cov_impl<ELEM, ELEM>(X, mask, P, key, scale, partial, rows, width, k,                 \
                                  tokens_per_split, flags);                                        \
    }

GG_KFAC_INSTANTIATE(f32, float)
GG_KFAC_INSTANTIATE(bf16, __nv_bfloat16)
GG_KFAC_INSTANTIATE(f16, __half)

// Y[t][j] of a 32-token tile into out[(t0 + t)*k + r0 + j] (0 for masked tokens).
template <typename Elem>
__device__ __forceinline__ void project_rows_impl(const Elem* __restrict__ X,
                                                  const unsigned char* __restrict__ mask,
                                                  const float* __restrict__ P,
                                                  unsigned long long key, float scale,
                                                  float* __restrict__ out, unsigned int rows,
                                                  unsigned int width, unsigned int k,
                                                  unsigned int flags) {
    static_assert(KP_TT * KP_DC == 4 * GG_BLOCK && KP_KT * KP_DC == 8 * GG_BLOCK, "loader shape");
    __shared__ float Xs[KP_TT][KP_DC + 1];
    __shared__ float Ps[KP_KT][KP_DC + 1];
    __shared__ __align__(16) float Y[KP_TT][KP_KT];
    __shared__ unsigned char keep[KP_TT];
    const unsigned int t0 = blockIdx.x * KP_TT, r0 = blockIdx.y * KP_KT;
    kp_load_tokens(X, mask, t0, rows, flags, keep, nullptr);
    __syncthreads();
    kp_project_tile<Elem>(X, width, (flags & GG_FLAG_BIAS) != 0u, t0, keep, P, key, scale, flags,
                          r0, k, Xs, Ps, Y);
    __syncthreads();
#pragma unroll
    for (int m = 0; m < (KP_TT * KP_KT) / GG_BLOCK; ++m) {
        const unsigned int idx = threadIdx.x + GG_BLOCK * m;
        const unsigned int t = idx >> 6, j = idx & 63u;
        if (t0 + t < rows && r0 + j < k)
            out[(size_t)(t0 + t) * k + r0 + j] = keep[t] ? Y[t][j] : 0.0f;
    }
}

#define GG_PROJECT_ROWS_INSTANTIATE(SUFFIX, ELEM)                                                  \
    extern "C" __global__ void GG_LAUNCH_BOUNDS project_rows_##SUFFIX(                             \
        const ELEM* __restrict__ X, const unsigned char* __restrict__ mask,                        \
        const float* __restrict__ P, unsigned long long key, float scale, float* out,              \
        unsigned int rows, unsigned int width, unsigned int k, unsigned int flags) {               \
        project_rows_impl<ELEM>(X, mask, P, key, scale, out, rows, width, k, flags);               \
    }

GG_PROJECT_ROWS_INSTANTIATE(f32, float)
GG_PROJECT_ROWS_INSTANTIATE(bf16, __nv_bfloat16)
GG_PROJECT_ROWS_INSTANTIATE(f16, __half)

extern "C" __global__ void GG_LAUNCH_BOUNDS
    kfac_cov_ids_f32(const int* __restrict__ ids, const unsigned char* __restrict__ mask,
                     const float* __restrict__ P, unsigned long long key, float scale,
                     float* partial, unsigned int rows, unsigned int vocab, unsigned int k,
                     unsigned int tokens_per_split, unsigned int flags) {
    kfac_cov_impl<float, int>(ids, mask, P, key, scale, partial, rows, vocab, k, tokens_per_split,
                              flags);
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    ekfac_partial_f32(const float* __restrict__ G, unsigned long long ld,
                      unsigned long long offset, const float* __restrict__ QB,
                      const float* __restrict__ QA, float* partial, unsigned int N,
                      unsigned int k_o, unsigned int k_i, unsigned int samples_per_split) {
    static_assert(CV_T * CV_RC == 4 * GG_BLOCK && CV_RC * CV_RC == GG_BLOCK, "loader shape");
    __shared__ float Gs[CV_RC][CV_RC + 1];
    __shared__ __align__(16) float Fs[CV_RC][CV_LD];
    __shared__ __align__(16) float Ws[CV_RC][CV_LD];
    __shared__ __align__(16) float Bs[CV_RC][CV_LD];
    const unsigned int i0 = blockIdx.x * CV_T, o0 = blockIdx.y * CV_T, s = blockIdx.z;
    unsigned long long nb, ne;
    split_range(s, samples_per_split, N, &nb, &ne);
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;

    for (unsigned long long n = nb; n < ne; ++n) {
        const float* Gn = G + n * ld + offset;
        float r[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) r[a][b] = 0.0f;
        for (unsigned int c0 = 0; c0 < k_o; c0 += CV_RC) {
            // W[ty][4tx + b] = Σ_p Ĝ_n[c0 + ty, p] Q_A[p, i0 + 4tx + b]   (thread row cc = ty)
            float w[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (unsigned int p0 = 0; p0 < k_i; p0 += CV_RC) {
                {
                    const unsigned int cc = threadIdx.x >> 4, pp = threadIdx.x & 15u;
                    Gs[cc][pp] = (c0 + cc < k_o && p0 + pp < k_i)
                                     ? Gn[(size_t)(c0 + cc) * k_i + p0 + pp]
                                     : 0.0f;
                }
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const unsigned int idx = threadIdx.x + GG_BLOCK * q;
                    const unsigned int pp = idx >> 6, i = idx & 63u;
                    Fs[pp][i] = (p0 + pp < k_i && i0 + i < k_i)
                                    ? QA[(size_t)(p0 + pp) * k_i + i0 + i]
                                    : 0.0f;
                }
                __syncthreads();
#pragma unroll
                for (int pp = 0; pp < CV_RC; ++pp) {
                    const float g = Gs[ty][pp];
                    const float4 f4 = *reinterpret_cast<const float4*>(&Fs[pp][4 * tx]);
                    w[0] = fmaf(g, f4.x, w[0]);
                    w[1] = fmaf(g, f4.y, w[1]);
                    w[2] = fmaf(g, f4.z, w[2]);
                    w[3] = fmaf(g, f4.w, w[3]);
                }
                __syncthreads();
            }
            *reinterpret_cast<float4*>(&Ws[ty][4 * tx]) = make_float4(w[0], w[1], w[2], w[3]);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const unsigned int idx = threadIdx.x + GG_BLOCK * q;
                const unsigned int cc = idx >> 6, o = idx & 63u;
                Bs[cc][o] = (c0 + cc < k_o && o0 + o < k_o) ? QB[(size_t)(c0 + cc) * k_o + o0 + o]
                                                              : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int cc = 0; cc < CV_RC; ++cc) {
                gg_fma_row_4x4(Bs[cc], Ws[cc], tx, ty, r);
            }
            __syncthreads();
        }
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(r[a][b], r[a][b], acc[a][b]);
    }

    float* dst = partial + (size_t)s * k_o * k_i;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int o = o0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int i = i0 + 4u * tx + b;
            if (o < k_o && i < k_i) dst[(size_t)o * k_i + i] = acc[a][b];
        }
    }
}
