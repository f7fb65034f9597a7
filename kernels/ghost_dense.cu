// ghost_dot_dense_{f32,bf16,f16}: fused dense-query ghost dot products (MATH.md §1, K-A2).
//
//   partial[s*N*V + n*V + v] = Σ_{t in split s, mask[n*T+t]} (b_{n,t}ᵀ M_v a_{n,t} + [bias] b_{n,t}·m_bias_v)
//
// Signature (Elem = float | __nv_bfloat16 | __half, suffix _f32 | _bf16 | _f16):
//   (const Elem* A, const Elem* B, const float* M, const float* m_bias,
//    const unsigned char* mask, float* partial, unsigned N, unsigned T, unsigned d_in,
//    unsigned d_out, unsigned V, unsigned tokens_per_split, unsigned flags)
//   A [N,T,d_in], B [N,T,d_out] row-major; M f32 [V,d_out,d_in] row-major (one dense query
//   matrix per query segment v); m_bias f32 [V,d_out], read iff flags bit0 (has_bias). mask [N*T] or null. Split s holds tokens
//   [s*tps, min(T,(s+1)*tps)); tokens_per_split == 0 means T.
//
// Launch: grid = (N*V, S, 1), S = ceil(T / tokens_per_split), blockIdx.x = n*V + v,
//         blockIdx.y = s; block = (256,1,1); no dynamic shared memory. Blocks with
//         blockIdx.x >= N*V exit.
//
// Tiling: the bias is folded in as an extra column of M (column d_in := m_bias) with a ≡ 1,
// so the block computes C = B_tile · M[:, i0:i0+64] for a 64-token tile and 64 columns of the
// augmented M (d_in + has_bias columns), streaming d_out in chunks of DN_KC = 32:
//   Bs[32][68]  (d_out chunk × tokens: B tile stored transposed; a warp reads 4 tokens × 8
//               consecutive d_out from global and stores with bank (4k + t) % 32, conflict-free)
//   Ms[32][64]  (d_out chunk × columns: a warp reads/writes 32 consecutive columns)
// Thread (ty = tid/16, tx = tid%16) owns C[t = 4ty+i][col = 4tx+j], i,j in 0..3, in
// registers; per k it reads one float4 of Bs (broadcast) and one of Ms for 16 FMAs. The
// epilogue is the row-dot: acc += C[t][col] * a_{n,t}[col] (a read straight from global,
// coalesced along col) for kept tokens; B·M never reaches memory. Tails in
// tokens/columns/d_out are zero-filled in shared memory; masked tokens are zero-filled in Bs
// and skipped in the epilogue (their A row is never read), so NaN/Inf in a masked row does not
// reach the result; NaN/Inf in kept rows or in M propagates.
// Order: per thread (token tile, column chunk, i, j), then the fixed block tree (common.cuh):
// the result depends only on tokens_per_split.
// Assumes only element alignment (pointers may be offset views); d_in, d_out >= 1.
// Static shared memory: 32*68*4 + 32*64*4 + 64 + 32 = 16992 bytes (16-byte aligned arrays).

#include "common.cuh"

#define DN_TT 64
#define DN_TI 64
#define DN_KC 32
#define DN_LDB (DN_TT + 4)

template <typename Elem>
__device__ __forceinline__ void ghost_dot_dense_impl(const Elem* __restrict__ A,
                                                     const Elem* __restrict__ B,
                                                     const float* __restrict__ M,
                                                     const float* __restrict__ m_bias,
                                                     const unsigned char* __restrict__ mask,
                                                     float* partial, unsigned int N,
                                                     unsigned int T, unsigned int d_in,
                                                     unsigned int d_out, unsigned int V,
                                                     unsigned int tokens_per_split,
                                                     unsigned int flags) {
    static_assert(DN_KC * DN_TT == 8 * GG_BLOCK && DN_KC * DN_TI == 8 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float Bs[DN_KC][DN_LDB];
    __shared__ __align__(16) float Ms[DN_KC][DN_TI];
    __shared__ unsigned char keepT[DN_TT];

    if (V == 0u || blockIdx.x >= N * V) return;  // uniform over the block (host: N*V < 2^31)
    const unsigned int n = blockIdx.x / V;
    const unsigned int v = blockIdx.x % V;
    M += (size_t)v * d_out * d_in;
    if (m_bias) m_bias += (size_t)v * d_out;
    const unsigned int s = blockIdx.y;
    const bool has_bias = (flags & GG_FLAG_BIAS) != 0u;
    const unsigned int n_cols = d_in + (has_bias ? 1u : 0u);

    const Elem* An = A + (size_t)n * T * d_in;
    const Elem* Bn = B + (size_t)n * T * d_out;
    const unsigned char* maskn = mask ? mask + (size_t)n * T : nullptr;

    unsigned long long tb, te;
    split_range(s, tokens_per_split, T, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;

    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    const unsigned int b_k = threadIdx.x & 7u;     // Bs loader: d_out within an 8-group
    const unsigned int b_row = threadIdx.x >> 3;   // Bs loader: first token row
    const unsigned int m_col = threadIdx.x & 63u;  // Ms loader: column
    const unsigned int m_row = threadIdx.x >> 6;   // Ms loader: first d_out row
    float acc = 0.0f;

    for (unsigned int t0 = t_begin; t0 < t_end; t0 += DN_TT) {
        __syncthreads();  // previous epilogue has finished reading keepT
        if (threadIdx.x < DN_TT) {
            const unsigned int t = t0 + threadIdx.x;
            keepT[threadIdx.x] = (t < t_end && keep_row(maskn, t)) ? 1 : 0;
        }
        __syncthreads();

        for (unsigned int i0 = 0; i0 < n_cols; i0 += DN_TI) {
            float c[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) c[i][j] = 0.0f;

            for (unsigned int o0 = 0; o0 < d_out; o0 += DN_KC) {
#pragma unroll
                for (int p = 0; p < (DN_KC * DN_TT) / GG_BLOCK; ++p) {
                    const unsigned int kc = (p & 3) * 8u + b_k;
                    const unsigned int r = b_row + 32u * (p >> 2);
                    const unsigned int o = o0 + kc;
                    float x = 0.0f;
                    if (o < d_out && keepT[r]) x = to_f32(Bn[(size_t)(t0 + r) * d_out + o]);
                    Bs[kc][r] = x;
                }
                {
                    const unsigned int col = i0 + m_col;
#pragma unroll
                    for (int p = 0; p < DN_KC / 4; ++p) {
                        const unsigned int r = m_row + 4u * p;
                        const unsigned int o = o0 + r;
                        float x = 0.0f;
                        if (o < d_out) {
                            if (col < d_in)
                                x = M[(size_t)o * d_in + col];
                            else if (has_bias && col == d_in)
                                x = m_bias[o];
                        }
                        Ms[r][m_col] = x;
                    }
                }
                __syncthreads();
#pragma unroll 8
                for (int kk = 0; kk < DN_KC; ++kk) {
                    gg_fma_row_4x4(Bs[kk], Ms[kk], tx, ty, c);
                }
                __syncthreads();
            }

            // Row-dot epilogue against the matching A tile (bias column: a ≡ 1).
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const unsigned int r = 4u * ty + i;
                if (keepT[r]) {
                    const Elem* arow = An + (size_t)(t0 + r) * d_in;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const unsigned int col = i0 + 4u * tx + j;
                        if (col < d_in)
                            acc = fmaf(c[i][j], to_f32(arow[col]), acc);
                        else if (col < n_cols)
                            acc = fmaf(c[i][j], 1.0f, acc);
                    }
                }
            }
        }
    }

    const float total = block_sum_256(acc);
    if (threadIdx.x == 0) partial[(size_t)s * N * V + blockIdx.x] = total;
}

#define GG_DENSE_INSTANTIATE(SUFFIX, ELEM)                                                         \
    extern "C" __global__ void GG_LAUNCH_BOUNDS ghost_dot_dense_##SUFFIX(                          \
        const ELEM* __restrict__ A, const ELEM* __restrict__ B, const float* __restrict__ M,       \
        const float* __restrict__ m_bias, const unsigned char* __restrict__ mask,                  \
        float* partial, unsigned int N, unsigned int T, unsigned int d_in, unsigned int d_out,     \
        unsigned int V, unsigned int tokens_per_split, unsigned int flags) {                       \
        ghost_dot_dense_impl<ELEM>(A, B, M, m_bias, mask, partial, N, T, d_in, d_out, V,           \
                                   tokens_per_split, flags);                                       \
    }

GG_DENSE_INSTANTIATE(f32, float)
GG_DENSE_INSTANTIATE(bf16, __nv_bfloat16)
GG_DENSE_INSTANTIATE(f16, __half)
