// ghost_dot_gram_mma_{bf16,f16}: the Gram-form ghost dot products of ghost_dot_gram_* on tensor
// cores (mma.sync.m16n8k16, f32 accumulation). Same signature, grid, partial layout, masks,
// segments, SELF mode and split semantics as ghost_dot_gram_* (see ghost_gram.cu), so a launch
// plan swaps one name for the other; the host picks this kernel on sm_80+.
//
//   partial[s*N*V + n*V + v] = Σ_{t in split s, kept} Σ_{u in segment v, kept}
//                                (a_{n,t}·aq_u [+1 if bias]) * (b_{n,t}·bq_u)
//
// Tiling: per (train tile of 64 tokens, query tile of 64 rows) two MMA chains, S_a = A_t Aq_uᵀ
// over d_in and S_b = B_t Bq_uᵀ over d_out, each a 64 × 64 f32 score tile; warp w owns rows
// 16·(w % 4) .. +16 and columns 32·(w / 4) .. +32 of both (mt_acc<4>, 4 m16n8 fragments each);
// then the epilogue adds (S_a + bias) ⊙ S_b over the kept (t, u) pairs in registers: the score
// tiles never leave registers (FlashAttention-style).
// Pipeline: the features of every (train tile, query tile, chain) are one sequence of 32-wide
// chunks, staged through a 3-stage ring of shared tiles (train 64×32 + query 64×32, bf16/f16,
// swizzled, mma_tile.cuh) with cp.async (commit per chunk, wait_group 1: two chunks in flight
// while one is multiplied), continuing across tile boundaries so the pipeline never drains.
// Loop order: train tile outer, query tile inner, the CTA's whole query segment per train tile:
// the train tile is read once per query tile of the segment and each query tile once per train
// tile of the split (ceil(T_split/64) times per CTA, from L2 after the first CTA). Per chunk a
// warp issues 2 × (1 A + 2 B) ldmatrix.x4 and 8 MMAs.
// Shared memory: 3 × 2 × 64 × 32 × 2 B = 24 KiB (+ block_sum's 32 B); 256 threads.
// Masks: masked and out-of-range rows are zero-filled in shared memory (never read: cp.async
// with src-size 0), and skipped in the epilogue; NaN/Inf in kept rows propagates.
// cp.async needs 16-byte-aligned bases and feature counts that are multiples of 8 (checked per
// matrix, uniformly); otherwise the same tiles are filled by plain loads (same arithmetic).
// Order: MMAs over k ascending within a chunk; each thread sums its pairs in (train tile, query
// tile, fragment, element) order; block_sum_256 adds the threads in a fixed tree: the result
// depends only on tokens_per_split. Precision: exact bf16/f16 products, f32 accumulation (MATH
// §8); differs from the FMA kernel by a few ulp of the partial sums.
// sm_75 (no mma.sync m16n8k16 bf16 / cp.async): the body is the FMA kernel's (same result
// contract), so the name exists in every image and JIT-compiled PTX stays correct.
#pragma once

#include "common.cuh"
#include "mma_tile.cuh"

#define GM_TT 64
#define GM_TU 64
#define GM_STAGES 3

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

template <typename Elem>
__device__ __forceinline__ void ghost_dot_gram_mma_impl(
    const Elem* A, const Elem* B, const Elem* Aq, const Elem* Bq, const int* seg_offsets, unsigned int seg_len,
    const unsigned char* mask, const unsigned char* qmask, float* partial, unsigned int N, unsigned int T,
    unsigned int d_in, unsigned int d_out, unsigned int Q, unsigned int V, unsigned int tokens_per_split,
    unsigned int flags) {
    __shared__ __align__(128) mt_stile<GM_TT> Xs[GM_STAGES];
    __shared__ __align__(128) mt_stile<GM_TU> Qs[GM_STAGES];

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
    const Elem* Aqv = Aq;
    const Elem* Bqv = Bq;
    const unsigned char* qm = qmask;
    unsigned int u_begin = 0, u_end = 0;
    if (self_mode) {
        Aqv = An;
        Bqv = Bn;
        qm = maskn;
        u_end = T;
    } else {
        segment_rows(seg_offsets, seg_len, v, V, Q, &u_begin, &u_end);
    }
    unsigned long long tb, te;
    split_range(s, tokens_per_split, T, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;

    const bool async_a = mt_async_ok(An, d_in) && mt_async_ok(Aqv, d_in);
    const bool async_b = mt_async_ok(Bn, d_out) && mt_async_ok(Bqv, d_out);
    const unsigned int chunks_a = (d_in + MT_KC - 1) / MT_KC;
    const unsigned int chunks_b = (d_out + MT_KC - 1) / MT_KC;
    const unsigned int per_pair = chunks_a + chunks_b;
    const unsigned int u_tiles = (u_end - u_begin + GM_TU - 1) / GM_TU;
    const unsigned int t_tiles = (t_end - t_begin + GM_TT - 1) / GM_TT;
    const unsigned long long total = (unsigned long long)t_tiles * u_tiles * per_pair;

    // Chunk c of the sequence: (train tile, query tile, chain, feature chunk).
    auto stage = [&](unsigned long long c) {
        const unsigned long long pair = c / per_pair;
        const unsigned int kc = (unsigned int)(c - pair * per_pair);
        const unsigned int t0 = t_begin + GM_TT * (unsigned int)(pair / u_tiles);
        const unsigned int u0 = u_begin + GM_TU * (unsigned int)(pair % u_tiles);
        const unsigned int st = (unsigned int)(c % GM_STAGES);
        auto keep_t = [&](unsigned int r) { return t0 + r < t_end && keep_row(maskn, t0 + r); };
        auto keep_u = [&](unsigned int r) { return u0 + r < u_end && keep_row(qm, u0 + r); };
        if (kc < chunks_a) {
            mt_stage_rows(Xs[st], An + (size_t)t0 * d_in, d_in, d_in, MT_KC * kc, async_a, keep_t);
            mt_stage_rows(Qs[st], Aqv + (size_t)u0 * d_in, d_in, d_in, MT_KC * kc, async_a, keep_u);
        } else {
            const unsigned int k0 = MT_KC * (kc - chunks_a);
            mt_stage_rows(Xs[st], Bn + (size_t)t0 * d_out, d_out, d_out, k0, async_b, keep_t);
            mt_stage_rows(Qs[st], Bqv + (size_t)u0 * d_out, d_out, d_out, k0, async_b, keep_u);
        }
        mt_cp_commit();
    };

    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int wrow = 16u * (warp & 3u);
    const unsigned int wcol = 32u * (warp >> 2);
    mt_acc<4> sa, sb;
    mt_zero(sa);
    mt_zero(sb);
    float acc = 0.0f;

    // Prologue: chunks 0 and 1 in flight (an empty group stands for a chunk past the end, so
    // that "at most 1 group pending" always means "chunk c has landed").
    for (unsigned int c = 0; c < 2; ++c) {
        if (c < total) stage(c);
        else mt_cp_commit();
    }
    for (unsigned long long c = 0; c < total; ++c) {
        mt_cp_wait<1>();  // this thread's copies of chunk c have landed (chunk c+1 may be in flight)
        __syncthreads();  // everyone's copies of chunk c are visible; chunk c-1's tiles are free
        if (c + 2 < total) stage(c + 2);
        else mt_cp_commit();  // empty group: keeps "at most 1 pending" meaning "chunk c+1"
        const unsigned int st = (unsigned int)(c % GM_STAGES);
        const unsigned long long pair = c / per_pair;
        const unsigned int kc = (unsigned int)(c - pair * per_pair);
#pragma unroll
        for (unsigned int kk = 0; kk < MT_KC; kk += 16) {
            mt_a_frag a;
            mt_b_tile<4> b;
            mt_ldsm_a(a, Xs[st], wrow, kk);
            mt_ldsm_b(b, Qs[st], wcol, kk);
            if (kc < chunks_a) mt_mma<Elem>(sa, a, b);
            else mt_mma<Elem>(sb, a, b);
        }
        if (kc + 1 == per_pair) {
            // Epilogue of the (train tile, query tile) pair: (S_a + bias) ⊙ S_b over kept pairs.
            const unsigned int t0 = t_begin + GM_TT * (unsigned int)(pair / u_tiles);
            const unsigned int u0 = u_begin + GM_TU * (unsigned int)(pair % u_tiles);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const unsigned int t = t0 + wrow + mt_acc_row(2 * h);
                const bool t_ok = t < t_end && keep_row(maskn, t);
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        const unsigned int u = u0 + wcol + 8u * j + mt_acc_col(i);
                        if (t_ok && u < u_end && keep_row(qm, u))
                            acc = fmaf(sa.f[j].x[2 * h + i] + bias, sb.f[j].x[2 * h + i], acc);
                    }
            }
            mt_zero(sa);
            mt_zero(sb);
        }
    }
    mt_cp_wait<0>();

    const float total_sum = block_sum_256(acc);
    if (threadIdx.x == 0) partial[(size_t)s * N * Veff + blockIdx.x] = total_sum;
}

#endif  // sm_80+

// Instantiates NAME for ELEM; below sm_80 the body is FMA_IMPL (the CUDA-core kernel).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define GG_GRAM_MMA_BODY(ELEM) \
    ghost_dot_gram_impl<ELEM, ELEM>(A, B, Aq, Bq, seg_offsets, seg_len, mask, qmask, partial, N, T, d_in, d_out, Q, V, tokens_per_split, flags)
#else
#define GG_GRAM_MMA_BODY(ELEM) \
    ghost_dot_gram_mma_impl<ELEM>(A, B, Aq, Bq, seg_offsets, seg_len, mask, qmask, partial, N, T, d_in, d_out, Q, V, tokens_per_split, flags)
#endif

#define GG_GRAM_MMA_INSTANTIATE(NAME, ELEM)                                                        \
    extern "C" __global__ void GG_LAUNCH_BOUNDS NAME(                                              \
        const ELEM* __restrict__ A, const ELEM* __restrict__ B, const ELEM* __restrict__ Aq,       \
        const ELEM* __restrict__ Bq, const int* __restrict__ seg_offsets, unsigned int seg_len,    \
        const unsigned char* __restrict__ mask, const unsigned char* __restrict__ qmask,           \
        float* partial, unsigned int N, unsigned int T, unsigned int d_in, unsigned int d_out,     \
        unsigned int Q, unsigned int V, unsigned int tokens_per_split, unsigned int flags) {       \
        GG_GRAM_MMA_BODY(ELEM);                                                                    \
    }
