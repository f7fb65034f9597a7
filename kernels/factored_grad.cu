// factored_grad_{f32,bf16,f16}: factored (optionally row-weighted) weight gradient per batch
// item (MATH.md §1, K-A3), a plain GEMM M_g = Bq_gᵀ diag(w) Aq_g:
//
//   out[g][o][i]   = beta*out[g][o][i]   + scale * Σ_{u in rows(g), kept} w_u * bq_u[o] * aq_u[i]
//   out_bias[g][o] = beta*out_bias[g][o] + scale * Σ_{u in rows(g), kept} w_u * bq_u[o]  (bias)
//
// Signature (Elem = float | __nv_bfloat16 | __half, suffix _f32 | _bf16 | _f16):
//   (const Elem* Aq, const Elem* Bq, const float* row_weight, const unsigned char* mask,
//    const int* seg_offsets, unsigned seg_len, float* out, float* out_bias, unsigned Q,
//    unsigned d_in, unsigned d_out, unsigned batch, unsigned flags, float scale, float beta)
//   Aq [Q,d_in], Bq [Q,d_out] row-major; row_weight f32 [Q] or null (w = 1); mask [Q] or null;
//   out f32 [batch,d_out,d_in]; out_bias f32 [batch,d_out] (written iff flags bit0; non-null
//   then). rows(g) as the gram's segments: seg_offsets ? [seg_offsets[g], seg_offsets[g+1])
//   clamped to [0,Q] (end < start: empty; batch+1 entries) : batch == 1 ? [0,Q) : [g*seg_len,
//   min(Q,(g+1)*seg_len)).
//   Final value, exactly: r = scale * sum; if (beta != 0) r = fmaf(beta, old, r). When
//   beta == 0 the old value is not read (it may be NaN). The weight is applied to the bq
//   element first: term = (w_u * bq_u[o]) * aq_u[i].
//
// Launch: grid = (ceil(d_in/64), ceil(d_out/64), batch); block = (256,1,1); no dynamic
//         shared memory. Block (x, y, g) owns out[g][64y .. 64y+63][64x .. 64x+63]; the blocks
//         with blockIdx.x == 0 also write out_bias[g][64y .. 64y+63].
//
// Tiling: 64 (d_out) × 64 (d_in) output tile, the rows u streamed in chunks of FG_KC = 32
// through Bs[32][64] (w_u * bq_u, d_out slice) and As[32][64] (aq_u, d_in slice); loads are
// coalesced along the feature dimension, and consecutive threads touch consecutive shared
// words, so no padding is needed (the inner loop reads the float4 Bs[k][4ty..4ty+3] as a
// broadcast and the float4 As[k][4tx..4tx+3], 16 consecutive float4 per warp, for 16 FMAs).
// Thread (ty = tid/16, tx = tid%16) owns out[o = 4ty+i][i = 4tx+j], i,j in 0..3.
// Masked and tail rows are zero-filled in BOTH tiles (their data is never read), so they
// contribute exactly +0 even if they hold NaN/Inf.
// Order: the rows are summed in increasing u by every thread (no split-K): deterministic.
// Assumes only element alignment (pointers may be offset views); d_in, d_out >= 1.
// Static shared memory: 2*32*64*4 = 16384 bytes.

#include "common.cuh"

#define FG_TO 64
#define FG_TI 64
#define FG_KC 32

template <typename Elem>
__device__ __forceinline__ void factored_grad_impl(
    const Elem* __restrict__ Aq, const Elem* __restrict__ Bq,
    const float* __restrict__ row_weight, const unsigned char* __restrict__ mask,
    const int* __restrict__ seg_offsets, unsigned int seg_len, float* out, float* out_bias,
    unsigned int Q, unsigned int d_in, unsigned int d_out, unsigned int batch,
    unsigned int flags, float scale, float beta) {
    static_assert(FG_KC * FG_TO == 8 * GG_BLOCK && FG_KC * FG_TI == 8 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float Bs[FG_KC][FG_TO];
    __shared__ __align__(16) float As[FG_KC][FG_TI];

    const unsigned int g = blockIdx.z;
    if (g >= batch) return;  // uniform over the block
    const unsigned int i0 = blockIdx.x * FG_TI;
    const unsigned int o0 = blockIdx.y * FG_TO;
    const bool do_bias = (flags & GG_FLAG_BIAS) != 0u && blockIdx.x == 0u && out_bias != nullptr;

    unsigned int u_begin, u_end;
    segment_rows(seg_offsets, seg_len, g, batch, Q, &u_begin, &u_end);

    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    const unsigned int l_col = threadIdx.x & 63u;  // loader: column within the tile
    const unsigned int l_row = threadIdx.x >> 6;   // loader: first row within the chunk

    float c[4][4];
    float cb[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        cb[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) c[i][j] = 0.0f;
    }

    for (unsigned int u0 = u_begin; u0 < u_end; u0 += FG_KC) {
        const unsigned int o = o0 + l_col;
        const unsigned int ia = i0 + l_col;
#pragma unroll
        for (int p = 0; p < FG_KC / 4; ++p) {
            const unsigned int r = l_row + 4u * p;
            const unsigned int u = u0 + r;
            const bool keep = u < u_end && keep_row(mask, u);
            float b = 0.0f, a = 0.0f;
            if (keep) {
                const float w = row_weight ? row_weight[u] : 1.0f;
                if (o < d_out) b = w * to_f32(Bq[(size_t)u * d_out + o]);
                if (ia < d_in) a = to_f32(Aq[(size_t)u * d_in + ia]);
            }
            Bs[r][l_col] = b;
            As[r][l_col] = a;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < FG_KC; ++k) {
            gg_fma_row_4x4(Bs[k], As[k], tx, ty, c);
            if (do_bias) {
#pragma unroll
                for (int i = 0; i < 4; ++i) cb[i] += Bs[k][4 * ty + i];
            }
        }
        __syncthreads();
    }

    float* outg = out + (size_t)g * d_out * d_in;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned int o = o0 + 4u * ty + i;
        if (o < d_out) {
            float* orow = outg + (size_t)o * d_in;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const unsigned int col = i0 + 4u * tx + j;
                if (col < d_in) {
                    float r = scale * c[i][j];
                    if (beta != 0.0f) r = fmaf(beta, orow[col], r);
                    orow[col] = r;
                }
            }
            if (do_bias && tx == 0u) {
                float* ob = out_bias + (size_t)g * d_out + o;
                float r = scale * cb[i];
                if (beta != 0.0f) r = fmaf(beta, *ob, r);
                *ob = r;
            }
        }
    }
}

#define GG_FG_INSTANTIATE(SUFFIX, ELEM)                                                            \
    extern "C" __global__ void GG_LAUNCH_BOUNDS factored_grad_##SUFFIX(                            \
        const ELEM* __restrict__ Aq, const ELEM* __restrict__ Bq,                                  \
        const float* __restrict__ row_weight, const unsigned char* __restrict__ mask,              \
        const int* __restrict__ seg_offsets, unsigned int seg_len, float* out,                     \
        float* out_bias, unsigned int Q, unsigned int d_in, unsigned int d_out,                    \
        unsigned int batch, unsigned int flags, float scale, float beta) {                         \
        factored_grad_impl<ELEM>(Aq, Bq, row_weight, mask, seg_offsets, seg_len, out,              \
                                 out_bias, Q, d_in, d_out, batch, flags, scale, beta);             \
    }

GG_FG_INSTANTIATE(f32, float)
GG_FG_INSTANTIATE(bf16, __nv_bfloat16)
GG_FG_INSTANTIATE(f16, __half)
