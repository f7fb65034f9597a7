// Data value embedding (MATH.md §5): the reverse sweep of one layer over a block of SGD steps.
//
// Layout: G and E are f32 [R, ld] row-major (rows of the block's steps in forward order; the
// host passes pointers already offset to the block's first row), the layer at columns
// [off, off + k); M is f32 [k, k] row-major; K (workspace) f32 [R, R]. Sizes u32, offsets 64-bit.
// Every reduction runs in a fixed order with fmaf (no split-K, no atomics): results depend only on
// the shapes, never on the schedule or the device.
//
// dvemb_residual_f32(const float* G, const float* M, float* E, unsigned R, unsigned k,
//                    unsigned long long ld, unsigned long long off, float eta)
//   x = Σ_i G[r, i] M[j, i]   (i ascending);   E[r, j] = eta * (G[r, j] - x)
//   Per-step recursion: eta = η_t gives E_t; blocked form: eta = 1 gives Y = G − G Mᵀ.
//   Grid (ceil(k/64), ceil(R/64)); 64×64 tile of (r, j) per block, 4×4 per thread, i in chunks of
//   16 through As[16][68] (G rows) and Bs[16][68] (M rows), k-major, float4 reads. 8704 B smem.
//
// dvemb_gram_f32(const float* G, const float* crow, float* K, unsigned R, unsigned k,
//                unsigned long long ld, unsigned long long off)
//   K[r, r'] = crow[r'] * Σ_i G[r, i] G[r', i]   for every tile holding some r' > r (the only
//   entries the sweep reads: r' in a later step than r); tiles with every r' ≤ r exit at once
//   (the whole block, before any barrier). Grid (ceil(R/64) over r', ceil(R/64) over r); same
//   tiling and shared memory as the residual.
//
// dvemb_sweep_f32(const float* K, const unsigned* begin, const float* eta, float* E, unsigned S,
//                 unsigned R, unsigned k, unsigned long long ld, unsigned long long off)
//   On entry E holds Y. For t = S-1 down to 0, rows r in [begin[t], begin[t+1]):
//     E[r, j] = eta[t] * (Y[r, j] - Σ_{r' = begin[t+1]}^{R-1} K[r, r'] E[r', j])   (r' ascending)
//   (K already carries c_{t'} of the later step). Columns never interact, so block b owns columns
//   [32b, 32b + 32) for the whole recurrence: one launch per block of steps; a __syncthreads
//   between steps publishes the finished rows (global memory) to the block. Thread: lane = column,
//   warp = row phase (rows r = begin[t] + warp + 8m). Grid (ceil(k/32), 1, 1); no shared memory.
//
// dvemb_update_f32(const float* E, const float* G, const float* crow, float c, float* M,
//                  unsigned R, unsigned k, unsigned long long ld, unsigned long long off)
//   M[i, j] = M[i, j] + Σ_r (c_r E[r, i]) G[r, j]   (r ascending; c_r = crow ? crow[r] : c)
//   Grid (ceil(k/64) over j, ceil(k/64) over i); 64×64 tile, 4×4 per thread, r in chunks of 16
//   through As[16][68] (c·E) and Bs[16][68] (G), loaded along the contiguous i / j. 8704 B smem.
//
// dvemb_table_f32(unsigned* begin, float* eta, float* crow, unsigned first, unsigned count,
//                 unsigned b0..b8, float e0..e7, float c0..c7)
//   Steps first .. first+count-1 (count ≤ 8) of the block: begin[first+s] = b_s (block-relative
//   row starts, b_count = end of the last one and b_s = b_count for s > count), eta[first+s] = e_s,
//   begin[first+count] = b_count, crow[r] = c_s for r in [b_s, b_{s+1}). Grid (ceil((b_count -
//   b0)/256), 1, 1). The step table of a block is written by ceil(S/8) launches (the runtime has
//   no host-to-device copy; scalars travel as kernel parameters).

#include "common.cuh"

#define DV_T 64
#define DV_KC 16
#define DV_LD (DV_T + 4)
#define DV_SWEEP_COLS 32

// c[a][b] += As[kk][4ty+a] * Bs[kk][4tx+b] over one 16-deep chunk.
__device__ __forceinline__ void dv_tile_fma(const float (*As)[DV_LD], const float (*Bs)[DV_LD],
                                            unsigned int tx, unsigned int ty, float (&c)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < DV_KC; ++kk) {
        gg_fma_row_4x4(As[kk], Bs[kk], tx, ty, c);
    }
}

// Σ_i A[m, i] B[n, i] for the 64×64 tile (m0, n0): rows of A at stride lda from column a_off,
// rows of B at stride ldb from column b_off, i < K. Every thread of the block must call it.
__device__ __forceinline__ void dv_tile_nt(const float* __restrict__ A, unsigned long long lda,
                                           unsigned long long a_off, unsigned int M,
                                           const float* __restrict__ B, unsigned long long ldb,
                                           unsigned long long b_off, unsigned int N, unsigned int K,
                                           unsigned int m0, unsigned int n0,
                                           float (*As)[DV_LD], float (*Bs)[DV_LD],
                                           float (&c)[4][4]) {
    static_assert(DV_T * DV_KC == 4 * GG_BLOCK, "loader shape");
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) c[a][b] = 0.0f;
    for (unsigned int i0 = 0; i0 < K; i0 += DV_KC) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int r = idx >> 4, kk = idx & 15u;
            const unsigned int i = i0 + kk;
            const unsigned int m = m0 + r, n = n0 + r;
            As[kk][r] = (m < M && i < K) ? A[(size_t)m * lda + a_off + i] : 0.0f;
            Bs[kk][r] = (n < N && i < K) ? B[(size_t)n * ldb + b_off + i] : 0.0f;
        }
        __syncthreads();
        dv_tile_fma(As, Bs, tx, ty, c);
        __syncthreads();
    }
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    dvemb_residual_f32(const float* __restrict__ G, const float* __restrict__ M,
                       float* __restrict__ E, unsigned int R, unsigned int k,
                       unsigned long long ld, unsigned long long off, float eta) {
    __shared__ __align__(16) float As[DV_KC][DV_LD];
    __shared__ __align__(16) float Bs[DV_KC][DV_LD];
    const unsigned int m0 = blockIdx.y * DV_T, n0 = blockIdx.x * DV_T;
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float c[4][4];
    dv_tile_nt(G, ld, off, R, M, k, 0, k, k, m0, n0, As, Bs, c);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int r = m0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int j = n0 + 4u * tx + b;
            if (r < R && j < k) {
                const size_t at = (size_t)r * ld + off + j;
                E[at] = eta * (G[at] - c[a][b]);
            }
        }
    }
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    dvemb_gram_f32(const float* __restrict__ G, const float* __restrict__ crow,
                   float* __restrict__ K, unsigned int R, unsigned int k, unsigned long long ld,
                   unsigned long long off) {
    __shared__ __align__(16) float As[DV_KC][DV_LD];
    __shared__ __align__(16) float Bs[DV_KC][DV_LD];
    const unsigned int m0 = blockIdx.y * DV_T, n0 = blockIdx.x * DV_T;
    const unsigned int n_last = (n0 + DV_T - 1u < R - 1u) ? n0 + DV_T - 1u : R - 1u;
    if (n_last <= m0) return;  // every r' ≤ r in this tile: never read (uniform over the block)
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float c[4][4];
    dv_tile_nt(G, ld, off, R, G, ld, off, R, k, m0, n0, As, Bs, c);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int r = m0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int rp = n0 + 4u * tx + b;
            if (r < R && rp < R) K[(size_t)r * R + rp] = crow[rp] * c[a][b];
        }
    }
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    dvemb_sweep_f32(const float* __restrict__ K, const unsigned int* __restrict__ begin,
                    const float* __restrict__ eta, float* E, unsigned int S, unsigned int R,
                    unsigned int k, unsigned long long ld, unsigned long long off) {
    const unsigned int j = blockIdx.x * DV_SWEEP_COLS + (threadIdx.x & (DV_SWEEP_COLS - 1u));
    const unsigned int phase = threadIdx.x / DV_SWEEP_COLS;
    const unsigned int phases = GG_BLOCK / DV_SWEEP_COLS;
    float* Ej = E + off + j;
    for (unsigned int s = S; s-- > 0;) {
        const unsigned int rb = begin[s], re = begin[s + 1];
        const float et = eta[s];
        if (j < k) {
            for (unsigned int r = rb + phase; r < re; r += phases) {
                const float* Kr = K + (size_t)r * R;
                float acc = 0.0f;
                for (unsigned int rp = re; rp < R; ++rp) acc = fmaf(Kr[rp], Ej[(size_t)rp * ld], acc);
                float* e = Ej + (size_t)r * ld;
                *e = et * (*e - acc);
            }
        }
        __syncthreads();  // rows of step s are final before step s-1 reads them
    }
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    dvemb_update_f32(const float* __restrict__ E, const float* __restrict__ G,
                     const float* __restrict__ crow, float c, float* __restrict__ M,
                     unsigned int R, unsigned int k, unsigned long long ld,
                     unsigned long long off) {
    static_assert(DV_T * DV_KC == 4 * GG_BLOCK, "loader shape");
    __shared__ __align__(16) float As[DV_KC][DV_LD];
    __shared__ __align__(16) float Bs[DV_KC][DV_LD];
    const unsigned int i0 = blockIdx.y * DV_T, j0 = blockIdx.x * DV_T;
    const unsigned int tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (unsigned int r0 = 0; r0 < R; r0 += DV_KC) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const unsigned int idx = threadIdx.x + GG_BLOCK * p;
            const unsigned int rr = idx >> 6, cc = idx & 63u;
            const unsigned int r = r0 + rr;
            const size_t row = (size_t)r * ld + off;
            float ev = 0.0f, gv = 0.0f;
            if (r < R && i0 + cc < k) ev = (crow ? crow[r] : c) * E[row + i0 + cc];
            if (r < R && j0 + cc < k) gv = G[row + j0 + cc];
            As[rr][cc] = ev;
            Bs[rr][cc] = gv;
        }
        __syncthreads();
        dv_tile_fma(As, Bs, tx, ty, acc);
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const unsigned int i = i0 + 4u * ty + a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const unsigned int j = j0 + 4u * tx + b;
            if (i < k && j < k) {
                float* m = M + (size_t)i * k + j;
                *m = *m + acc[a][b];
            }
        }
    }
}

#define DV_TABLE_STEPS 8

extern "C" __global__ void GG_LAUNCH_BOUNDS dvemb_table_f32(
    unsigned int* begin, float* eta, float* crow, unsigned int first, unsigned int count,
    unsigned int b0, unsigned int b1, unsigned int b2, unsigned int b3, unsigned int b4,
    unsigned int b5, unsigned int b6, unsigned int b7, unsigned int b8, float e0, float e1,
    float e2, float e3, float e4, float e5, float e6, float e7, float c0, float c1, float c2,
    float c3, float c4, float c5, float c6, float c7) {
    // Constant indices only (after unrolling): the arrays stay in registers.
    const unsigned int bs[DV_TABLE_STEPS + 1] = {b0, b1, b2, b3, b4, b5, b6, b7, b8};
    const float es[DV_TABLE_STEPS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const float cs[DV_TABLE_STEPS] = {c0, c1, c2, c3, c4, c5, c6, c7};
    const unsigned int end = bs[DV_TABLE_STEPS];
    const unsigned long long row = (unsigned long long)b0 + (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    if (row < end) {
        float cv = 0.0f;
#pragma unroll
        for (int s = 0; s < DV_TABLE_STEPS; ++s)
            if (row >= bs[s] && row < bs[s + 1]) cv = cs[s];
        crow[row] = cv;
    }
    if (blockIdx.x == 0 && threadIdx.x <= count) {
        const unsigned int s = threadIdx.x;
        unsigned int bv = end;
        float ev = 0.0f;
#pragma unroll
        for (int q = 0; q < DV_TABLE_STEPS; ++q)
            if (s == (unsigned int)q) {
                bv = bs[q];
                ev = es[q];
            }
        begin[first + s] = bv;
        if (s < count) eta[first + s] = ev;
    }
}
