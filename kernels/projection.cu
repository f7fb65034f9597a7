// Low-rank projections of per-sample gradients (MATH.md §3) and influence scores (§4).
//
// kron_project_{f32,bf16,f16}: fused Kronecker projection of factored per-sample gradients
//
//   partial[(s*N + n)*K + o*k_i + i] = Σ_{t in split s, mask[n*T+t]} (P_o b_{n,t})[o] (P_i a_{n,t})[i]
//   K = k_o*k_i; a_{n,t} is augmented with a trailing 1 when flags bit0 (bias): P_i then has
//   d_in + 1 columns and its last column projects the bias gradient.
//
// Signature (Elem = float | __nv_bfloat16 | __half):
//   (const Elem* A, const Elem* B, const unsigned char* mask, const float* P_in,
//    const float* P_out, unsigned long long key_in, unsigned long long key_out,
//    float scale_in, float scale_out, float* partial, unsigned N, unsigned T, unsigned d_in,
//    unsigned d_out, unsigned k_i, unsigned k_o, unsigned tokens_per_split, unsigned flags)
//   flags: bit0 bias; bit1 random (P entries generated in-kernel from key_*/scale_*, P_in and
//   P_out unused, may be null); else dense P_in f32 [k_i, d_in+bias], P_out f32 [k_o, d_out];
//   bit2 Rademacher (else the Irwin–Hall Gaussian), see gg_proj_random below;
//   bit3 TRANSPOSE: store Ĝ_nᵀ, partial[(s*N + n)*K + i*k_o + o] (a use whose parameter is stored
//   [d_in, d_out], or an embedding [V, d]: src/projection/model.rs sums such uses with the
//   untransposed ones of the same parameter);
//   bit4 IOTA (ids kernels only): token t of every sample has id t (`ids` is not read, may be
//   null): projects per-sample columns stored as B [N, T, d] (a norm parameter [d, T]);
//   bit5 IDS64 (ids kernels only): `ids` holds int64 elements (torch's default) instead of int32.
//
// Launch: grid = (N, S, ceil(k_o/64)*ceil(k_i/64)), blockIdx.z = to*ceil(k_i/64) + ti; block
//   (256,1,1). The block owns a 64×64 tile (o0 = 64*to, i0 = 64*ti) of Ĝ_n for tokens of
//   split s (tokens [s*tps, min(T,(s+1)*tps)), tps == 0 means T).
//
// Tiling, per 32-token tile (kp_project_tile / kp_gather_tile of projection_tile.cuh):
//   1. projection: PA[t][j] = Σ_c a[t][c] P_i[i0+j][c] and PB[t][j] = Σ_c b[t][c] P_o[o0+j][c],
//      streaming features in chunks of 32 through Xs[32][33] (tokens × features, masked and
//      tail tokens zero-filled, never read) and Ps[64][33] (P rows × features, generated or
//      read); thread (tq = tid/64, j = tid%64) owns tokens tq + 4m (m < 8) of column j, summing
//      c in ascending order with fmaf;
//   2. outer products: thread (ty = tid/16, tx = tid%16) owns G[4ty+ii][4tx+jj] in registers
//      and adds PB[t][.] PA[t][.] for every kept token t in ascending order.
//   Shared memory (static): Xs 4224 + Ps 8448 + PA 8192 + PB 8192 + keep 32 = 29088 bytes.
//   The result depends only on (tokens_per_split, shapes): never on the device or schedule.
//
// kron_project_ids_{f32,bf16,f16}: the same for an embedding layer, whose activations are the
//   one-hot rows e_{x_{n,t}} of token ids: (P_i a_{n,t})[i] = P_i[i, x_{n,t}], a column gather.
//   Signature as kron_project_<dt> with A replaced by `const int* ids` [N, T] (int64 elements
//   under flag IDS64; an int64 id outside the int32 range is out of range) and d_in by the
//   vocabulary size V (P_in f32 [k_i, V] when dense; never a bias). Same grid, same token split,
//   same outer-product order: the result is bit for bit the dense kernel's on one-hot A (finite P).
//   Ids of masked tokens are never read. A kept id outside [0, V) (negative included) makes the
//   A-side projection of that token NaN, so every entry of that sample's Ĝ_n is NaN; P_in is
//   never read out of bounds. Extra shared memory: tok[32] ints.
//
// kron_finalize_f32(const float* partial, float* out, unsigned N, unsigned K, unsigned splits,
//                   unsigned long long ld, unsigned long long offset, float scale, float beta)
//   sum = ((0 + partial[0*N*K+i]) + partial[1*N*K+i]) + ...;  i = n*K + j
//   out[n*ld + offset + j] = beta != 0 ? fmaf(beta, old, scale*sum) : scale*sum
//   (beta == 0 never reads out). Launch grid = (ceil(N*K/256), 1, 1).
//
// projection_materialize_f32(float* out, unsigned long long key, float scale, unsigned flags,
//                            unsigned rows, unsigned cols)
//   out[r*cols + c] = gg_proj_random(key, r, c, flags, scale): the generated matrix, for
//   inspection and the cross-backend bitwise tests. Launch grid = (ceil(rows*cols/256), 1, 1).
//
// gemm_nt_f32(const float* A, const float* Bm, const float* self_norm, float* C, unsigned M,
//             unsigned N, unsigned K, unsigned lda, unsigned ldb, unsigned mode, float alpha,
//             float beta)
//   r = Σ_k A[m*lda+k] Bm[n*ldb+k]   (k ascending, fmaf, no split-K; lda = ldb = K for dense
//   rows, larger for one column group of wider rows, A and Bm then point at the group's column)
//   mode 1 (cosine): r = r / sqrtf(self_norm[n]);  mode 2 (l2): r = r - 0.5f*self_norm[n]
//   C[m*N+n] = beta != 0 ? fmaf(beta, C, alpha*r) : alpha*r
//   Launch grid = (ceil(N/64), ceil(M/64), 1); 64×64 tile per block, 4×4 per thread, k in
//   chunks of 16 through As[16][68], Bs[16][68] (k-major, float4 reads). 8704 bytes of smem.
//
// Random entries (identical bit for bit to src/projection/generator.rs):
//   bits = mix64(key + ((row << 32 | col) + 1) * 0x9E3779B97F4A7C15)   (SplitMix64 finalizer)
//   Rademacher: bit 63 ? -scale : scale
//   Gaussian:   (float)(Σ_{j<4} (bits >> 16j & 0xFFFF) - 131070) * scale   (one IEEE multiply)
// Only integer ops and one round-to-nearest multiply: no transcendental approximations.

#include "projection_tile.cuh"

// AIn = Elem: dense activations A [N, T, d_in]; AIn = int: token ids [N, T] into a vocabulary of
// d_in entries (embedding layer, no bias), whose A-side projection is a column gather of P_in.
template <typename Elem, typename AIn>
__device__ __forceinline__ void kron_project_impl(
    const AIn* __restrict__ A, const Elem* __restrict__ B, const unsigned char* __restrict__ mask,
    const float* __restrict__ P_in, const float* __restrict__ P_out, unsigned long long key_in,
    unsigned long long key_out, float scale_in, float scale_out, float* partial, unsigned int N,
    unsigned int T, unsigned int d_in, unsigned int d_out, unsigned int k_i, unsigned int k_o,
    unsigned int tokens_per_split, unsigned int flags) {
    static_assert(KP_TT * KP_DC == 4 * GG_BLOCK && KP_KT * KP_DC == 8 * GG_BLOCK, "loader shape");
    __shared__ float Xs[KP_TT][KP_DC + 1];
    __shared__ float Ps[KP_KT][KP_DC + 1];
    __shared__ __align__(16) float PA[KP_TT][KP_KT];
    __shared__ __align__(16) float PB[KP_TT][KP_KT];
    __shared__ unsigned char keep[KP_TT];
    __shared__ int tok[KP_TT];
    constexpr bool kIds = kp_is_int<AIn>::value;

    if (blockIdx.x >= N) return;  // uniform over the block
    const unsigned int n = blockIdx.x;
    const unsigned int s = blockIdx.y;
    const unsigned int tiles_i = (k_i + KP_KT - 1) / KP_KT;
    const unsigned int i0 = (blockIdx.z % tiles_i) * KP_KT;
    const unsigned int o0 = (blockIdx.z / tiles_i) * KP_KT;
    const bool has_bias = (flags & GG_FLAG_BIAS) != 0u;

    // Row n of A; for int64 ids (IDS64) the row starts 2·T int32 slots further per sample.
    const size_t a_stride = kIds ? ((flags & KP_FLAG_IDS64) ? 2u : 1u) : d_in;
    const AIn* An = A ? A + (size_t)n * T * a_stride : A;  // null only with IOTA
    const Elem* Bn = B + (size_t)n * T * d_out;
    const unsigned char* maskn = mask ? mask + (size_t)n * T : nullptr;

    unsigned long long tb, te;
    split_range(s, tokens_per_split, T, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;

    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    float g[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) g[a][b] = 0.0f;

    for (unsigned int t0 = t_begin; t0 < t_end; t0 += KP_TT) {
        __syncthreads();  // the previous tile's outer products have finished reading PA/PB/keep
        kp_load_tokens(An, maskn, t0, t_end, flags, keep, tok);
        __syncthreads();
        if constexpr (kIds)
            kp_gather_tile(tok, keep, d_in, P_in, key_in, scale_in, flags, i0, k_i, PA);
        else
            kp_project_tile<Elem>(reinterpret_cast<const Elem*>(An), d_in, has_bias, t0, keep,
                                  P_in, key_in, scale_in, flags, i0, k_i, Xs, Ps, PA);
        kp_project_tile<Elem>(Bn, d_out, false, t0, keep, P_out, key_out, scale_out, flags, o0,
                              k_o, Xs, Ps, PB);
        __syncthreads();
        for (int t = 0; t < KP_TT; ++t) {
            if (!keep[t]) continue;  // uniform: keep is in shared memory
            gg_fma_row_4x4(PB[t], PA[t], tx, ty, g);
        }
    }

    const size_t K = (size_t)k_o * k_i;
    const bool transpose = (flags & KP_FLAG_TRANSPOSE) != 0u;
    float* dst = partial + ((size_t)s * N + n) * K;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int o = o0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int i = i0 + 4u * tx + b;
            if (o < k_o && i < k_i)
                dst[transpose ? (size_t)i * k_o + o : (size_t)o * k_i + i] = g[a][b];
        }
    }
}

#define GG_KRON_INSTANTIATE(SUFFIX, ELEM)                                                          \
    extern "C" __global__ void GG_LAUNCH_BOUNDS kron_project_##SUFFIX(                             \
        const ELEM* __restrict__ A, const ELEM* __restrict__ B,                                    \
        const unsigned char* __restrict__ mask, const float* __restrict__ P_in,                    \
        const float* __restrict__ P_out, unsigned long long key_in, unsigned long long key_out,    \
        float scale_in, float scale_out, float* partial, unsigned int N, unsigned int T,           \
        unsigned int d_in, unsigned int d_out, unsigned int k_i, unsigned int k_o,                 \
        unsigned int tokens_per_split, unsigned int flags) {                                       \
        kron_project_impl<ELEM, ELEM>(A, B, mask, P_in, P_out, key_in, key_out, scale_in,          \
                                      scale_out, partial, N, T, d_in, d_out, k_i, k_o,             \
                                      tokens_per_split, flags);                                    \
    }                                                                                              \
    extern "C" __global__ void GG_LAUNCH_BOUNDS kron_project_ids_##SUFFIX(                         \
        const int* __restrict__ ids, const ELEM* __restrict__ B,                                   \
        const unsigned char* __restrict__ mask, const float* __restrict__ P_in,                    \
        const float* __restrict__ P_out, unsigned long long key_in, unsigned long long key_out,    \
        float scale_in, float scale_out, float* partial, unsigned int N, unsigned int T,           \
        unsigned int vocab, unsigned int d_out, unsigned int k_i, unsigned int k_o,                \
        unsigned int tokens_per_split, unsigned int flags) {                                       \
        kron_project_impl<ELEM, int>(ids, B, mask, P_in, P_out, key_in, key_out, scale_in,         \
                                     scale_out, partial, N, T, vocab, d_out, k_i, k_o,             \
                                     tokens_per_split, flags);                                     \
    }

GG_KRON_INSTANTIATE(f32, float)
GG_KRON_INSTANTIATE(bf16, __nv_bfloat16)
GG_KRON_INSTANTIATE(f16, __half)

extern "C" __global__ void GG_LAUNCH_BOUNDS
    kron_finalize_f32(const float* __restrict__ partial, float* out, unsigned int N,
                      unsigned int K, unsigned int splits, unsigned long long ld,
                      unsigned long long offset, float scale, float beta) {
    const unsigned long long i = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    const unsigned long long count = (unsigned long long)N * K;
    if (i >= count) return;
    float sum = 0.0f;
    for (unsigned int s = 0; s < splits; ++s) sum += partial[(size_t)s * count + i];
    const unsigned long long n = i / K, j = i - n * K;
    float* o = out + n * ld + offset + j;
    float r = scale * sum;
    if (beta != 0.0f) r = fmaf(beta, *o, r);
    *o = r;
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    projection_materialize_f32(float* out, unsigned long long key, float scale, unsigned int flags,
                               unsigned int rows, unsigned int cols) {
    const unsigned long long i = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    if (i >= (unsigned long long)rows * cols) return;
    const unsigned int r = (unsigned int)(i / cols), c = (unsigned int)(i % cols);
    out[i] = gg_proj_random(key, r, c, flags | KP_FLAG_RANDOM, scale);
}

#define GM_T 64
#define GM_KC 16
#define GM_LD (GM_T + 4)

extern "C" __global__ void GG_LAUNCH_BOUNDS
    gemm_nt_f32(const float* __restrict__ A, const float* __restrict__ Bm,
                const float* __restrict__ self_norm, float* C, unsigned int M, unsigned int N,
                unsigned int K, unsigned int lda, unsigned int ldb, unsigned int mode, float alpha,
                float beta) {
    static_assert(GM_T * GM_KC == 4 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float As[GM_KC][GM_LD];
    __shared__ __align__(16) float Bs[GM_KC][GM_LD];
    const unsigned int m0 = blockIdx.y * GM_T, n0 = blockIdx.x * GM_T;
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float c[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) c[a][b] = 0.0f;
    for (unsigned int k0 = 0; k0 < K; k0 += GM_KC) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int r = idx >> 4, kk = idx & 15u;
            const unsigned int k = k0 + kk;
            const unsigned int m = m0 + r, nn = n0 + r;
            As[kk][r] = (m < M && k < K) ? A[(size_t)m * lda + k] : 0.0f;
            Bs[kk][r] = (nn < N && k < K) ? Bm[(size_t)nn * ldb + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GM_KC; ++kk) {
            gg_fma_row_4x4(As[kk], Bs[kk], tx, ty, c);
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int m = m0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int nn = n0 + 4u * tx + b;
            if (m < M && nn < N) {
                float r = c[a][b];
                if (mode == 1u)
                    r = r / sqrtf(self_norm[nn]);
                else if (mode == 2u)
                    r = r - 0.5f * self_norm[nn];
                float* o = C + (size_t)m * N + nn;
                float v = alpha * r;
                if (beta != 0.0f) v = fmaf(beta, *o, v);
                *o = v;
            }
        }
    }
}
