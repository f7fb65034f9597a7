// Tensor-core tile primitives (sm_80+): warp-owned register tiles of mma.sync.m16n8k16
// fragments, swizzled shared tiles read by ldmatrix, a cp.async global→shared stage, and
// elementwise ops / fixed-order reductions on f32 accumulator tiles. Kernels are written in these
// tiles; only this file knows the fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16").
//
// Element types: Elem = __nv_bfloat16 | __half, stored as raw 16-bit words in shared memory.
//
// Register tiles (per warp; lane = 4·g + q, g = lane / 4 in 0..7, q = lane % 4 in 0..3):
//   mt_a_frag   A operand, 16 rows (m) × 16 k, "row": x[0] = (row g, k 2q, 2q+1),
//               x[1] = (row g+8, k 2q..), x[2] = (row g, k 2q+8..), x[3] = (row g+8, k 2q+8..).
//   mt_b_frag   B operand, 16 k × 8 cols (n), "col": x[0] = (k 2q, 2q+1; col g), x[1] = (k 2q+8..).
//   mt_c_frag   f32 accumulator 16 × 8: x[e] = (row g + 8·(e/2), col 2q + e%2).
//   mt_acc<NB>  16 × 8·NB accumulator (NB fragments side by side); mt_b_tile<NB> the matching B.
//   The C/D layouts of two MMAs over the same (row, col) tile coincide, so elementwise ops of
//   two accumulator tiles (the Hadamard product of two score tiles) never leave registers.
//
// Shared tiles (mt_stile<ROWS>): ROWS rows × MT_KC = 32 16-bit elements, 64-byte rows made of
// four 16-byte chunks; chunk c of row r is stored at chunk position c ^ ((r >> 1) & 3). An
// ldmatrix 8×8 matrix reads one logical chunk of 8 consecutive rows: rows r and r+1 sit in the
// two halves of a 128-byte bank line and (r >> 1) & 3 takes four values, so the 8 rows hit 8
// distinct 16-byte bank groups: conflict-free. The stage (one 16-byte chunk per thread, a warp
// covering 8 whole rows) is conflict-free too. A shared tile is either "rows × k" (A rows, or B
// stored n-major: the Gram form's query rows) read with mt_ldsm_a / mt_ldsm_b, or "k × cols"
// (B stored k-major) read with mt_ldsm_b_trans (ldmatrix .trans).
//
// Global → shared: mt_stage_rows copies rows [0, ROWS) × features [k0, k0+32) of a row-major
// matrix into a shared tile, zero-filling rows the caller does not keep (masked or past the end:
// never read, so NaN in them cannot reach an MMA, where NaN·0 = NaN) and features ≥ d. With
// `async` it issues cp.async.cg 16-byte copies (src-size 0 for zero-filled chunks; the caller
// commits and waits: mt_cp_commit / mt_cp_wait<N>), which needs a 16-byte-aligned matrix and
// d % 8 == 0; otherwise it loads the 8 elements of a chunk one by one and stores them.
//
// Reductions: mt_row_sums / mt_col_sums sum an accumulator tile over its columns / rows in a
// fixed order (per-thread sums in fragment order, then a fixed xor-shuffle tree), identical on
// every lane that holds the row / column.
#pragma once

#include "common.cuh"

#define MT_KC 32

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

struct mt_a_frag {
    unsigned int x[4];
};
struct mt_b_frag {
    unsigned int x[2];
};
struct mt_c_frag {
    float x[4];
};
template <int NB>
struct mt_acc {
    mt_c_frag f[NB];
};
template <int NB>
struct mt_b_tile {
    mt_b_frag f[NB];
};
template <int ROWS>
struct mt_stile {
    unsigned short e[ROWS * MT_KC];
};

__device__ __forceinline__ unsigned int mt_lane() { return threadIdx.x & 31u; }
// Row / column (within a 16 × 8 fragment) of accumulator element e of this lane.
__device__ __forceinline__ unsigned int mt_acc_row(int e) { return (mt_lane() >> 2) + 8u * (unsigned)(e >> 1); }
__device__ __forceinline__ unsigned int mt_acc_col(int e) { return 2u * (mt_lane() & 3u) + (unsigned)(e & 1); }

// Element offset of (row r, logical chunk c) in a swizzled tile.
__device__ __forceinline__ unsigned int mt_swizzle(unsigned int r, unsigned int c) {
    return r * MT_KC + ((c ^ ((r >> 1) & 3u)) << 3);
}

__device__ __forceinline__ unsigned int mt_smem_addr(const void* p) {
    return (unsigned int)__cvta_generic_to_shared(p);
}

template <int NB>
__device__ __forceinline__ void mt_zero(mt_acc<NB>& c) {
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) c.f[j].x[e] = 0.0f;
}

// A fragment of rows [row0, row0+16) × k [kk, kk+16) of a rows × k tile (kk = 0 or 16).
template <int ROWS>
__device__ __forceinline__ void mt_ldsm_a(mt_a_frag& a, const mt_stile<ROWS>& t, unsigned int row0,
                                          unsigned int kk) {
    const unsigned int l = mt_lane();
#ifndef MT_PLANTED_LAYOUT_ERROR
    const unsigned int p = mt_smem_addr(&t.e[mt_swizzle(row0 + (l & 15u), (kk >> 3) + (l >> 4))]);
#else
    // tests/mma_tile.rs only: the B-operand lane order (k halves and row halves swapped), to
    // check that the tile tests catch a fragment-layout error.
    const unsigned int p = mt_smem_addr(&t.e[mt_swizzle(row0 + (l & 7u) + ((l >> 4) << 3), (kk >> 3) + ((l >> 3) & 1u))]);
#endif
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a.x[0]), "=r"(a.x[1]), "=r"(a.x[2]), "=r"(a.x[3])
                 : "r"(p));
}

// B fragments for cols [n0, n0+8·NB) × k [kk, kk+16) of a tile stored n-major (rows = n).
// NB even: one ldmatrix.x4 per pair of 8-column blocks.
template <int NB, int ROWS>
__device__ __forceinline__ void mt_ldsm_b(mt_b_tile<NB>& b, const mt_stile<ROWS>& t, unsigned int n0,
                                          unsigned int kk) {
    static_assert(NB % 2 == 0, "pairs of 8-column blocks");
    const unsigned int l = mt_lane();
#pragma unroll
    for (int j = 0; j < NB; j += 2) {
        const unsigned int n = n0 + 8u * (unsigned)j + (l & 7u) + ((l >> 4) << 3);
        const unsigned int p = mt_smem_addr(&t.e[mt_swizzle(n, (kk >> 3) + ((l >> 3) & 1u))]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(b.f[j].x[0]), "=r"(b.f[j].x[1]), "=r"(b.f[j + 1].x[0]), "=r"(b.f[j + 1].x[1])
                     : "r"(p));
    }
}

// B fragments for cols [n0, n0+8·NB) × k [k0, k0+16) of a tile stored k-major (rows = k,
// 32 columns n per row): ldmatrix .trans. NB even.
template <int NB, int ROWS>
__device__ __forceinline__ void mt_ldsm_b_trans(mt_b_tile<NB>& b, const mt_stile<ROWS>& t, unsigned int k0,
                                                unsigned int n0) {
    static_assert(NB % 2 == 0, "pairs of 8-column blocks");
    const unsigned int l = mt_lane();
#pragma unroll
    for (int j = 0; j < NB; j += 2) {
        const unsigned int k = k0 + (l & 7u) + (((l >> 3) & 1u) << 3);
        const unsigned int p = mt_smem_addr(&t.e[mt_swizzle(k, (n0 >> 3) + (unsigned)j + (l >> 4))]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(b.f[j].x[0]), "=r"(b.f[j].x[1]), "=r"(b.f[j + 1].x[0]), "=r"(b.f[j + 1].x[1])
                     : "r"(p));
    }
}

// c += a · b (one m16n8k16 MMA, f32 accumulation).
template <typename Elem>
__device__ __forceinline__ void mt_mma(mt_c_frag& c, const mt_a_frag& a, const mt_b_frag& b) {
    if constexpr (gg_same_type<Elem, __nv_bfloat16>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3])
            : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
    } else {
        static_assert(gg_same_type<Elem, __half>::value, "bf16 or f16 operands");
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3])
            : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
    }
}

// c[16 × 8NB] += a[16 × 16] · b[16 × 8NB], blocks in ascending column order.
template <typename Elem, int NB>
__device__ __forceinline__ void mt_mma(mt_acc<NB>& c, const mt_a_frag& a, const mt_b_tile<NB>& b) {
#pragma unroll
    for (int j = 0; j < NB; ++j) mt_mma<Elem>(c.f[j], a, b.f[j]);
}

// cp.async.cg of 16 bytes; `src_bytes` < 16 zero-fills the rest (0: nothing is read).
__device__ __forceinline__ void mt_cp_async16(void* sdst, const void* gsrc, unsigned int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(mt_smem_addr(sdst)), "l"(gsrc),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void mt_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are pending (then a barrier makes
// every thread's copies visible).
template <int N>
__device__ __forceinline__ void mt_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Stages rows [0, ROWS) × features [k0, k0 + 32) of X (row-major, row stride ld, X = the tile's
// row 0, which must exist) into `t`; keep(r) says whether tile row r is read (otherwise zero);
// features ≥ d are zero. async: cp.async (X 16-byte aligned, ld and d multiples of 8), else
// plain loads. Called by every thread of a 256-thread block.
template <int ROWS, typename Elem, typename Keep>
__device__ __forceinline__ void mt_stage_rows(mt_stile<ROWS>& t, const Elem* X, unsigned int ld, unsigned int d,
                                              unsigned int k0, bool async, Keep keep) {
    static_assert((ROWS * MT_KC / 8) % GG_BLOCK == 0, "whole passes of 256 chunks");
    const unsigned short* Xw = reinterpret_cast<const unsigned short*>(X);
#pragma unroll
    for (int p = 0; p < ROWS * MT_KC / 8 / GG_BLOCK; ++p) {
        const unsigned int r = (threadIdx.x >> 2) + (unsigned)p * (GG_BLOCK / 4);
        const unsigned int c = threadIdx.x & 3u;
        const unsigned int k = k0 + 8u * c;
        const bool ok = keep(r);
        unsigned short* dst = &t.e[mt_swizzle(r, c)];
        if (async) {
            const bool read = ok && k < d;
            mt_cp_async16(dst, read ? Xw + (size_t)r * ld + k : Xw, read ? 16u : 0u);
        } else {
            unsigned int w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned int lo = 0, hi = 0;
                if (ok && k + 2u * i < d) lo = Xw[(size_t)r * ld + k + 2u * i];
                if (ok && k + 2u * i + 1u < d) hi = Xw[(size_t)r * ld + k + 2u * i + 1u];
                w[i] = lo | (hi << 16);
            }
            *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

// Whether the cp.async stage can be used for a row-major [*, ld] matrix at X.
template <typename Elem>
__device__ __forceinline__ bool mt_async_ok(const Elem* X, unsigned int ld) {
    return (reinterpret_cast<size_t>(X) & 15u) == 0 && (ld & 7u) == 0;
}

// Σ over the tile's columns of rows g and g+8 (s[0], s[1]), identical on the 4 lanes of a quad.
template <int NB>
__device__ __forceinline__ void mt_row_sums(const mt_acc<NB>& c, float s[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float v = 0.0f;
#pragma unroll
        for (int j = 0; j < NB; ++j) v += c.f[j].x[2 * h] + c.f[j].x[2 * h + 1];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        s[h] = v;
    }
}

// Σ over the tile's 16 rows of columns 8j + 2q + i (s[j][i]), identical on the 8 lanes of a column.
template <int NB>
__device__ __forceinline__ void mt_col_sums(const mt_acc<NB>& c, float s[NB][2]) {
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float v = c.f[j].x[i] + c.f[j].x[2 + i];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            s[j][i] = v;
        }
}

// out[j][e] = f(x[j][e], y[j][e], row, col) elementwise over two accumulator tiles of one
// (row, col) tile; row / col are the element's coordinates within the 16 × 8NB tile.
template <int NB, typename F>
__device__ __forceinline__ void mt_map2(mt_acc<NB>& out, const mt_acc<NB>& x, const mt_acc<NB>& y, F f) {
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            out.f[j].x[e] = f(x.f[j].x[e], y.f[j].x[e], mt_acc_row(e), 8u * (unsigned)j + mt_acc_col(e));
}

#endif  // sm_80+
