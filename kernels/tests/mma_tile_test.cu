// Test kernels for the tile primitives of mma_tile.cuh (not part of the shipped images: build.rs
// compiles only kernels/*.cu; tests/mma_tile.rs compiles this file to PTX and runs it in the
// interpreter against host computations with a distinct value in every element).
//
// tile_gemm_nt_{bf16,f16}: out[M, N] = X[M, K] · Y[N, K]ᵀ for M, N ≤ 64 and any K, one CTA:
//   the 3-stage cp.async pipeline (or plain loads, async = 0) of mt_stage_rows, mt_ldsm_a,
//   mt_ldsm_b (n-major B), mt_mma; rows r with keep_x[r] == 0 / keep_y[r] == 0 are zero-filled
//   (never read). Warp w owns rows 16(w % 4), columns 32(w / 4) (mt_acc<4>).
// tile_gemm_nn_bf16: out[64, 32] = X[64, 64] · Y[64, 32] with Y staged k-major (rows = k) and
//   read with mt_ldsm_b_trans. Warp w owns rows 16(w % 4), columns 16(w / 4) (mt_acc<2>).
// tile_reduce_f32: one warp; x, y [16, 32] f32 loaded into accumulator tiles through
//   mt_acc_row / mt_acc_col; writes had = x ⊙ y (mt_map2), rows[16] = Σ_col had (mt_row_sums),
//   cols[32] = Σ_row had (mt_col_sums).
#include "mma_tile.cuh"

template <typename Elem>
__device__ void tile_gemm_nt(const Elem* X, const Elem* Y, const unsigned char* keep_x,
                             const unsigned char* keep_y, float* out, unsigned int M, unsigned int N,
                             unsigned int K, unsigned int async) {
    __shared__ __align__(128) mt_stile<64> Xs[3];
    __shared__ __align__(128) mt_stile<64> Ys[3];
    const unsigned int chunks = (K + MT_KC - 1) / MT_KC;
    auto stage = [&](unsigned int c) {
        mt_stage_rows(Xs[c % 3], X, K, K, MT_KC * c, async != 0, [&](unsigned int r) { return r < M && keep_x[r]; });
        mt_stage_rows(Ys[c % 3], Y, K, K, MT_KC * c, async != 0, [&](unsigned int r) { return r < N && keep_y[r]; });
        mt_cp_commit();
    };
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int wrow = 16u * (warp & 3u), wcol = 32u * (warp >> 2);
    mt_acc<4> acc;
    mt_zero(acc);
    for (unsigned int c = 0; c < 2; ++c) {
        if (c < chunks) stage(c);
        else mt_cp_commit();
    }
    for (unsigned int c = 0; c < chunks; ++c) {
        mt_cp_wait<1>();
        __syncthreads();
        if (c + 2 < chunks) stage(c + 2);
        else mt_cp_commit();
#pragma unroll
        for (unsigned int kk = 0; kk < MT_KC; kk += 16) {
            mt_a_frag a;
            mt_b_tile<4> b;
            mt_ldsm_a(a, Xs[c % 3], wrow, kk);
            mt_ldsm_b(b, Ys[c % 3], wcol, kk);
            mt_mma<Elem>(acc, a, b);
        }
    }
    mt_cp_wait<0>();
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const unsigned int r = wrow + mt_acc_row(e), n = wcol + 8u * j + mt_acc_col(e);
            if (r < M && n < N) out[(size_t)r * N + n] = acc.f[j].x[e];
        }
}

extern "C" __global__ void __launch_bounds__(256) tile_gemm_nt_bf16(const __nv_bfloat16* X, const __nv_bfloat16* Y,
                                                                     const unsigned char* keep_x,
                                                                     const unsigned char* keep_y, float* out,
                                                                     unsigned int M, unsigned int N, unsigned int K,
                                                                     unsigned int async) {
    tile_gemm_nt(X, Y, keep_x, keep_y, out, M, N, K, async);
}
extern "C" __global__ void __launch_bounds__(256) tile_gemm_nt_f16(const __half* X, const __half* Y,
                                                                    const unsigned char* keep_x,
                                                                    const unsigned char* keep_y, float* out,
                                                                    unsigned int M, unsigned int N, unsigned int K,
                                                                    unsigned int async) {
    tile_gemm_nt(X, Y, keep_x, keep_y, out, M, N, K, async);
}

extern "C" __global__ void __launch_bounds__(256) tile_gemm_nn_bf16(const __nv_bfloat16* X, const __nv_bfloat16* Y,
                                                                     float* out) {
    __shared__ __align__(128) mt_stile<64> Xs[2];  // k 0..31, k 32..63 of X's 64 rows
    __shared__ __align__(128) mt_stile<64> Ys;     // rows = k (64), 32 columns n
    auto all = [](unsigned int) { return true; };
    mt_stage_rows(Xs[0], X, 64, 64, 0, true, all);
    mt_stage_rows(Xs[1], X, 64, 64, 32, true, all);
    mt_stage_rows(Ys, Y, 32, 32, 0, true, all);
    mt_cp_commit();
    mt_cp_wait<0>();
    __syncthreads();
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int wrow = 16u * (warp & 3u), wcol = 16u * (warp >> 2);
    mt_acc<2> acc;
    mt_zero(acc);
#pragma unroll
    for (unsigned int ks = 0; ks < 4; ++ks) {
        mt_a_frag a;
        mt_b_tile<2> b;
        mt_ldsm_a(a, Xs[ks / 2], wrow, 16u * (ks % 2));
        mt_ldsm_b_trans(b, Ys, 16u * ks, wcol);
        mt_mma<__nv_bfloat16>(acc, a, b);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            out[(size_t)(wrow + mt_acc_row(e)) * 32 + wcol + 8u * j + mt_acc_col(e)] = acc.f[j].x[e];
}

extern "C" __global__ void __launch_bounds__(32) tile_reduce_f32(const float* x, const float* y, float* had,
                                                                  float* rows, float* cols) {
    mt_acc<4> ax, ay, h;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const unsigned int i = mt_acc_row(e) * 32 + 8u * j + mt_acc_col(e);
            ax.f[j].x[e] = x[i];
            ay.f[j].x[e] = y[i];
        }
    mt_map2(h, ax, ay, [](float p, float q, unsigned int, unsigned int) { return p * q; });
    float rs[2], cs[4][2];
    mt_row_sums(h, rs);
    mt_col_sums(h, cs);
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) had[mt_acc_row(e) * 32 + 8u * j + mt_acc_col(e)] = h.f[j].x[e];
    if ((mt_lane() & 3u) == 0) {
        rows[mt_acc_row(0)] = rs[0];
        rows[mt_acc_row(2)] = rs[1];
    }
    if (mt_lane() < 4) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 2; ++i) cols[8u * j + mt_acc_col(i)] = cs[j][i];
    }
}
