// ghost_dot_gram_{f32,bf16,f16}: fused Gram-form ghost dot products (MATH.md §1, K-A1; the
// SELF mode gives the per-sample squared norm of K-A4).
// ghost_dot_gram_qf32_{bf16,f16}: the same with f32 query factors Aq, Bq beside bf16 / f16
// training factors A, B (the combined query of In-Run ghg, see inrun.cu); every other argument,
// the tiling and the summation order are those of ghost_dot_gram_*, so the result equals
// ghost_dot_gram_f32 on the exactly widened training factors, bit for bit.
//
//   partial[s*N*V + n*V + v] = Σ_{t in split s, mask[n*T+t]} Σ_{u in segment v, qmask[u]}
//                                (a_{n,t}·aq_u [+1 if bias]) * (b_{n,t}·bq_u)
//
// Signature (element type Elem = float | __nv_bfloat16 | __half, suffix _f32 | _bf16 | _f16):
//   (const Elem* A, const Elem* B, const QElem* Aq, const QElem* Bq, const int* seg_offsets,
//    unsigned seg_len, const unsigned char* mask, const unsigned char* qmask, float* partial,
//    unsigned N, unsigned T, unsigned d_in, unsigned d_out, unsigned Q, unsigned V,
//    unsigned tokens_per_split, unsigned flags)
//   (QElem = Elem, or float for the _qf32 variants.)
//   A [N,T,d_in], B [N,T,d_out], Aq [Q,d_in], Bq [Q,d_out], row-major. mask [N*T] / qmask [Q]
//   may be null (keep all). flags bit0 = has_bias, bit1 = SELF.
//   Split s holds train tokens [s*tps, min(T,(s+1)*tps)); tokens_per_split == 0 means T.
//   Segment v: seg_offsets ? [seg_offsets[v], seg_offsets[v+1]) clamped to [0,Q] (end < start:
//   empty; seg_offsets has V+1 entries) : V == 1 ? [0,Q) : [v*seg_len, min(Q,(v+1)*seg_len)).
//   SELF (bit1): Aq/Bq/qmask/seg_offsets/seg_len/Q/V are ignored; block n's query is sample n's
//   own T rows (Aq = A + n*T*d_in, Bq = B + n*T*d_out, qmask = mask + n*T), V is taken as 1.
//   The _qf32 variants have no SELF mode (their query type is not the training type): with
//   bit1 set they write NaN to their partial slots.
//
// Launch: grid = (N*V, S, 1), S = ceil(T / tokens_per_split), blockIdx.x = n*V + v,
//         blockIdx.y = s; block = (256,1,1); no dynamic shared memory. (SELF: grid = (N, S, 1).)
//         Blocks with blockIdx.x >= N*V exit without writing.
//
// Tiling: a 64-train-token × 64-query-row score tile per step (GR_TT × GR_TU). Thread
// (ty = tid/16, tx = tid%16) owns the 4×4 pairs t = 4ty+i, u = 4tx+j (i,j in 0..3) in
// registers. The feature dimension is streamed in chunks of GR_KC = 32 through two transposed,
// padded shared tiles Xs[32][68] (train rows) and Qs[32][68] (query rows), indexed [k][row]:
// first over d_in (a-dots), then over d_out (b-dots); then each thread adds
// (adot [+1]) * bdot for its kept pairs. The score tile never leaves registers.
// Global loads: a warp reads 4 rows × 8 consecutive features (32-byte segments for f32).
// Shared stores: bank (4k + row) % 32, conflict-free. Inner loop: per k, one 16-byte read of
// Xs (2 addresses per warp, broadcast) and one of Qs (16 consecutive float4 = 2 wavefronts)
// feed 16 FMAs. Feature tails are zero-padded in shared memory (exact: +0 products);
// token/row tails and masked rows are zero-filled AND skipped in the epilogue, so NaN/Inf in a
// masked row never reaches the result, while NaN/Inf in kept rows propagates.
// Order: each thread sums its pairs in (train tile, query tile, i, j) order, then the block
// sum is a fixed shuffle tree (common.cuh): the result depends only on tokens_per_split.
// Assumes only element alignment (pointers may be offset views); d_in, d_out >= 1.
// Static shared memory: 2*32*68*4 + 128 + 32 = 17568 bytes (shared arrays 16-byte aligned).

#include "common.cuh"
#include "gram_tile.cuh"
#include "gram_mma.cuh"

template <typename Elem, typename QElem>
__device__ __forceinline__ void ghost_dot_gram_impl(
    const Elem* A, const Elem* B, const QElem* Aq, const QElem* Bq, const int* seg_offsets,
    unsigned int seg_len, const unsigned char* mask, const unsigned char* qmask, float* partial,
    unsigned int N, unsigned int T, unsigned int d_in, unsigned int d_out, unsigned int Q,
    unsigned int V, unsigned int tokens_per_split, unsigned int flags) {
    static_assert(GR_TT == GR_TU && GR_KC * GR_TT == 8 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float Xs[GR_KC][GR_LD];
    __shared__ __align__(16) float Qs[GR_KC][GR_LD];
    __shared__ unsigned char keepT[GR_TT];
    __shared__ unsigned char keepU[GR_TU];

    const bool self_mode = (flags & GG_FLAG_SELF) != 0u;
    const float bias = (flags & GG_FLAG_BIAS) ? 1.0f : 0.0f;
    const unsigned int Veff = self_mode ? 1u : V;
    if (Veff == 0u || blockIdx.x >= N * Veff) return;  // uniform over the block
    const unsigned int n = blockIdx.x / Veff;
    const unsigned int v = blockIdx.x - n * Veff;
    const unsigned int s = blockIdx.y;

    const Elem* An = A + (size_t)n * T * d_in;
    const Elem* Bn = B + (size_t)n * T * d_out;
    const unsigned char* maskn = mask ? mask + (size_t)n * T : nullptr;

    unsigned int u_begin = 0, u_end = 0;
    const QElem* Aqv = Aq;
    const QElem* Bqv = Bq;
    const unsigned char* qm = qmask;
    if (self_mode) {
        if constexpr (gg_same_type<Elem, QElem>::value) {
            Aqv = An;
            Bqv = Bn;
            qm = maskn;
            u_end = T;
        } else {
            // SELF needs the query in the training type: the _qf32 variants write NaN instead
            // (loud, never a plausible number); the host never asks for it. Uniform over the block.
            if (threadIdx.x == 0) partial[(size_t)s * N + blockIdx.x] = __int_as_float(0x7fc00000);
            return;
        }
    } else {
        segment_rows(seg_offsets, seg_len, v, V, Q, &u_begin, &u_end);
    }

    unsigned long long tb, te;
    split_range(s, tokens_per_split, T, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;

    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    float acc = 0.0f;

    for (unsigned int t0 = t_begin; t0 < t_end; t0 += GR_TT) {
        for (unsigned int u0 = u_begin; u0 < u_end; u0 += GR_TU) {
            __syncthreads();  // previous tile's epilogue has finished reading keepT/keepU
            if (threadIdx.x < GR_TT) {
                const unsigned int t = t0 + threadIdx.x;
                keepT[threadIdx.x] = (t < t_end && keep_row(maskn, t)) ? 1 : 0;
            } else if (threadIdx.x < GR_TT + GR_TU) {
                const unsigned int u = u0 + (threadIdx.x - GR_TT);
                keepU[threadIdx.x - GR_TT] = (u < u_end && keep_row(qm, u)) ? 1 : 0;
            }
            __syncthreads();

            float da[4][4], db[4][4];
            gram_tile_dots<Elem, QElem>(An, Aqv, d_in, t0, u0, keepT, keepU, Xs, Qs, da);
            gram_tile_dots<Elem, QElem>(Bn, Bqv, d_out, t0, u0, keepT, keepU, Xs, Qs, db);

#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool t_ok = keepT[4 * ty + i] != 0;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (t_ok && keepU[4 * tx + j] != 0)
                        acc = fmaf(da[i][j] + bias, db[i][j], acc);
                }
            }
        }
    }

    const float total = block_sum_256(acc);
    if (threadIdx.x == 0) partial[(size_t)s * N * Veff + blockIdx.x] = total;
}

#define GG_GRAM_INSTANTIATE(NAME, ELEM, QELEM)                                                     \
    extern "C" __global__ void GG_LAUNCH_BOUNDS NAME(                                              \
        const ELEM* __restrict__ A, const ELEM* __restrict__ B, const QELEM* __restrict__ Aq,      \
        const QELEM* __restrict__ Bq, const int* __restrict__ seg_offsets, unsigned int seg_len,   \
        const unsigned char* __restrict__ mask, const unsigned char* __restrict__ qmask,           \
        float* partial, unsigned int N, unsigned int T, unsigned int d_in, unsigned int d_out,     \
        unsigned int Q, unsigned int V, unsigned int tokens_per_split, unsigned int flags) {       \
        ghost_dot_gram_impl<ELEM, QELEM>(A, B, Aq, Bq, seg_offsets, seg_len, mask, qmask,          \
                                         partial, N, T, d_in, d_out, Q, V, tokens_per_split,       \
                                         flags);                                                   \
    }

GG_GRAM_INSTANTIATE(ghost_dot_gram_f32, float, float)
GG_GRAM_INSTANTIATE(ghost_dot_gram_bf16, __nv_bfloat16, __nv_bfloat16)
GG_GRAM_INSTANTIATE(ghost_dot_gram_f16, __half, __half)
GG_GRAM_INSTANTIATE(ghost_dot_gram_qf32_bf16, __nv_bfloat16, float)
GG_GRAM_INSTANTIATE(ghost_dot_gram_qf32_f16, __half, float)

// Tensor-core variants (gram_mma.cuh): bf16 / f16 factors on sm_80+.
GG_GRAM_MMA_INSTANTIATE(ghost_dot_gram_mma_bf16, __nv_bfloat16)
GG_GRAM_MMA_INSTANTIATE(ghost_dot_gram_mma_f16, __half)
