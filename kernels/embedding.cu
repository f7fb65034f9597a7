// Embedding layers and tied parameters (MATH.md §1, K-A5; src/layers/): a parameter stored
// [rows, cols] whose per-token gradient is an outer product r_t c_tᵀ, where r_t is a dense
// vector or the one-hot e_{id_t} of an embedding lookup.
//
// ---------------------------------------------------------------------------------------------
// cross_gram_{f32,bf16,f16}: the Gram form with a generalized row-side product.
//   partial[s*N*V' + n*V' + v] = Σ_{t in split s, mask[n*T+t]} Σ_{u in segment v, qmask[u]}
//                                  R(t,u) * (C_{n,t}·Cq_u [+1 if bias])
//   R(t,u) = [id_t == qid_u]            flags RT_IDS|RQ_IDS  (embedding × embedding)
//          = Rq[u*dr + id_t]            flags RT_IDS         (embedding × dense, e.g. LM head)
//          = R[(n*T+t)*dr + qid_u]      flags RQ_IDS         (dense × embedding)
//          = R_{n,t}·Rq_u (dot over dr) neither              (dense × dense)
//   An id outside [0, dr) (dr = vocab in the id modes) makes the pair's contribution NaN.
//   Ids are int32, or int64 (torch's default) under flags RT_IDS64 (ids) / RQ_IDS64 (qids), read
//   by gg_load_id (common.cuh): an int64 id outside the int32 range is out of range.
// cross_gram_qf32_{bf16,f16}: the same with f32 query factors Cq, Rq beside bf16 / f16
//   training factors C, R (the combined query of model_ghg, formed in f32 by ghg_query_<dt>,
//   inrun.cu). Tiles are widened to f32 in shared memory (gram_tile.cuh) and the gathered Rq is
//   read as f32, so with every other argument equal the result is that of cross_gram_f32 on the
//   exactly widened training factors, bit for bit.
// Signature: (const Elem* C, const QElem* Cq, const Elem* R, const QElem* Rq, const int* ids,
//   const int* qids, const int* seg_offsets, unsigned seg_len, const unsigned char* mask,
//   const unsigned char* qmask, float* partial, unsigned N, unsigned T, unsigned dc,
//   unsigned dr, unsigned Q, unsigned V, unsigned tokens_per_split, unsigned flags)
//   (QElem = Elem, or float for the _qf32 variants.)
//   C [N*T, dc], Cq [Q, dc], R [N*T, dr] / ids [N*T], Rq [Q, dr] / qids [Q]; pointers of the
//   unused mode are ignored (may be null). flags: bit0 bias, bit1 DIAG, bit2 RT_IDS,
//   bit3 RQ_IDS, bit4 RT_IDS64, bit5 RQ_IDS64. Segments as in ghost_gram.cu (segment_rows,
//   common.cuh).
//   DIAG: block n pairs only with segment v = n (the query is the training set itself with
//   seg_len = its T): V' = 1, grid (N, S), partial[s*N + n]. Otherwise V' = V, grid (N*V, S).
// Tiling: as ghost_dot_gram (gram_tile.cuh): 64 train tokens × 64 query rows per step, the
//   C-dot (and the dense R-dot) streamed through shared tiles; ids of the tile rows in shared
//   memory (idT, idU); the gathered R of the id modes is read from global memory per kept pair.
//   Masked rows and tails are zero-filled and skipped in the epilogue (NaN in them never
//   leaks). Order: per thread (train tile, query tile, i, j), then the fixed block tree.
// Static shared memory: 2*32*68*4 + 2*64 + 2*64*4 + 32 = 18 048 bytes.
//
// ---------------------------------------------------------------------------------------------
// Scatter/gather form of embedding × embedding (three kernels, then finalize_partials_f32):
//
// embed_sort(const int* qids, const unsigned char* qmask, const int* seg_offsets,
//            unsigned seg_len, unsigned Q, unsigned V, unsigned vocab, int* perm, int* sid,
//            unsigned flags)
//   (flags bit5 RQ_IDS64: qids are int64.)
//   Sorts the rows of every segment by key = INT_MIN (masked row), qid (valid, in [0, vocab)),
//   INT_MAX (kept row with an invalid id), ties by row: row u of segment [s, e) goes to
//   position s + rank(u), rank = #{w in [s,e): (key_w, w) < (key_u, u)}; perm[pos] = u,
//   sid[pos] = key_u. Rows outside every segment are not written (and never read).
//   Grid (ceil(Q/256), 1, 1), one thread per row. The block's rows span segments whose union
//   [lo, hi) it reads once, in tiles of 256 keys through shared memory (keys[256]; lo/hi[256]
//   for the fixed min/max tree): each row compares against its own segment's keys from shared
//   memory, so a segment of Q_v rows costs Q_v comparisons per row but only Q_v/256 global
//   reads per row (3 KB of static shared memory).
//
// embed_table_{f32,bf16,f16}(const Elem* Bq, const int* perm, const int* sid,
//            const int* seg_offsets, unsigned seg_len, unsigned Q, unsigned V, unsigned d,
//            float* table)
//   For every position k that starts a run of equal valid keys in its segment:
//   table[k*d + f] = Σ_{r in run, in order} Bq[perm[r]*d + f]. Other positions are not
//   written (and never read). Grid (Q, ceil(d/256), 1): block (k, chunk), thread f.
//   It reads only the query side: model_ghg's combined query (f32 comb beside bf16 / f16
//   training factors) runs embed_table_f32, then the training-dtype embed_gather below.
//
// embed_gather_{f32,bf16,f16}(const int* ids, const Elem* B, const unsigned char* mask,
//            const int* sid, const float* table, const int* seg_offsets, unsigned seg_len,
//            float* partial, unsigned N, unsigned T, unsigned d, unsigned Q, unsigned V,
//            unsigned vocab, unsigned tokens_per_split, unsigned flags)
//   partial[s*N*V' + n*V' + v] = Σ_{t in split s, kept} B_{n,t} · table[k(id_t)], k = the
//   first position of segment v with sid == id_t (binary search); no such position: 0.
//   An id outside [0, vocab), or a segment holding an invalid kept id (sid[e-1] == INT_MAX),
//   gives NaN. flags bit1 DIAG as above, bit4 RT_IDS64: ids are int64. Grid (N*V', S, 1); warp w of the block takes tokens
//   t_begin + w, + 8, ...; its lanes stride over d. Fixed order, then the block tree.
// Assumes only element alignment; all sizes < 2^31.

#include "common.cuh"
#include "gram_tile.cuh"

#define GG_FLAG_DIAG 2u
#define GG_FLAG_RT_IDS 4u
#define GG_FLAG_RQ_IDS 8u
#define GG_FLAG_RT_IDS64 16u
#define GG_FLAG_RQ_IDS64 32u
#define GG_KEY_MASKED (-2147483647 - 1)
#define GG_KEY_INVALID 2147483647

template <typename Elem, typename QElem>
__device__ __forceinline__ void cross_gram_impl(
    const Elem* C, const QElem* Cq, const Elem* R, const QElem* Rq, const void* ids, const void* qids,
    const int* seg_offsets, unsigned int seg_len, const unsigned char* mask,
    const unsigned char* qmask, float* partial, unsigned int N, unsigned int T, unsigned int dc,
    unsigned int dr, unsigned int Q, unsigned int V, unsigned int tokens_per_split,
    unsigned int flags) {
    __shared__ __align__(16) float Xs[GR_KC][GR_LD];
    __shared__ __align__(16) float Qs[GR_KC][GR_LD];
    __shared__ unsigned char keepT[GR_TT];
    __shared__ unsigned char keepU[GR_TU];
    __shared__ int idT[GR_TT];
    __shared__ int idU[GR_TU];

    const bool diag = (flags & GG_FLAG_DIAG) != 0u;
    const bool t_ids = (flags & GG_FLAG_RT_IDS) != 0u;
    const bool q_ids = (flags & GG_FLAG_RQ_IDS) != 0u;
    const bool t_wide = (flags & GG_FLAG_RT_IDS64) != 0u, q_wide = (flags & GG_FLAG_RQ_IDS64) != 0u;
    const float bias = (flags & GG_FLAG_BIAS) ? 1.0f : 0.0f;
    const unsigned int Veff = diag ? 1u : V;
    if (Veff == 0u || blockIdx.x >= N * Veff) return;  // uniform over the block
    const unsigned int n = blockIdx.x / Veff;
    const unsigned int v = diag ? n : blockIdx.x - n * Veff;
    const unsigned int s = blockIdx.y;

    const size_t row0 = (size_t)n * T;
    const Elem* Cn = C + row0 * dc;
    const Elem* Rn = R ? R + row0 * dr : nullptr;
    const unsigned char* maskn = mask ? mask + row0 : nullptr;

    unsigned int u_begin, u_end;
    segment_rows(seg_offsets, seg_len, v, V, Q, &u_begin, &u_end);

    unsigned long long tb, te;
    split_range(s, tokens_per_split, T, &tb, &te);
    const unsigned int t_begin = (unsigned int)tb, t_end = (unsigned int)te;

    const unsigned int tx = threadIdx.x & 15u;
    const unsigned int ty = threadIdx.x >> 4;
    float acc = 0.0f;

    for (unsigned int t0 = t_begin; t0 < t_end; t0 += GR_TT) {
        for (unsigned int u0 = u_begin; u0 < u_end; u0 += GR_TU) {
            __syncthreads();  // the previous tile's epilogue has finished reading keep/id arrays
            if (threadIdx.x < GR_TT) {
                const unsigned int t = t0 + threadIdx.x;
                const bool k = t < t_end && keep_row(maskn, t);
                keepT[threadIdx.x] = k ? 1 : 0;
                idT[threadIdx.x] = (k && t_ids) ? gg_load_id(ids, row0 + t, t_wide) : 0;
            } else if (threadIdx.x < GR_TT + GR_TU) {
                const unsigned int j = threadIdx.x - GR_TT;
                const unsigned int u = u0 + j;
                const bool k = u < u_end && keep_row(qmask, u);
                keepU[j] = k ? 1 : 0;
                idU[j] = (k && q_ids) ? gg_load_id(qids, u, q_wide) : 0;
            }
            __syncthreads();

            float dcv[4][4], drv[4][4];
            gram_tile_dots<Elem>(Cn, Cq, dc, t0, u0, keepT, keepU, Xs, Qs, dcv);
            if (!t_ids && !q_ids) gram_tile_dots<Elem>(Rn, Rq, dr, t0, u0, keepT, keepU, Xs, Qs, drv);

#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool t_ok = keepT[4 * ty + i] != 0;
                const int it = idT[4 * ty + i];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (!(t_ok && keepU[4 * tx + j] != 0)) continue;
                    const int iu = idU[4 * tx + j];
                    float r;
                    if (t_ids && q_ids) {
                        const bool ok = it >= 0 && (unsigned int)it < dr && iu >= 0 && (unsigned int)iu < dr;
                        r = ok ? (it == iu ? 1.0f : 0.0f) : __int_as_float(0x7fc00000);
                    } else if (t_ids) {
                        const bool ok = it >= 0 && (unsigned int)it < dr;
                        r = ok ? to_f32(Rq[(size_t)(u0 + 4 * tx + j) * dr + (unsigned int)it])
                               : __int_as_float(0x7fc00000);
                    } else if (q_ids) {
                        const bool ok = iu >= 0 && (unsigned int)iu < dr;
                        r = ok ? to_f32(Rn[(size_t)(t0 + 4 * ty + i) * dr + (unsigned int)iu])
                               : __int_as_float(0x7fc00000);
                    } else {
                        r = drv[i][j];
                    }
                    acc = fmaf(r, dcv[i][j] + bias, acc);
                }
            }
        }
    }

    const float total = block_sum_256(acc);
    if (threadIdx.x == 0) partial[(size_t)s * N * Veff + blockIdx.x] = total;
}

// ptxas 12.9 (the CUDA 12 image set) spills 12 bytes in cross_gram_impl on sm_120 under the
// 128-register cap of GG_LAUNCH_BOUNDS (CUDA 13.5 does not); there, one resident block per SM
// is required instead of two, which lifts the cap. Every other architecture keeps the default.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200
#define GG_CROSS_LAUNCH_BOUNDS __launch_bounds__(256, 1)
#else
#define GG_CROSS_LAUNCH_BOUNDS GG_LAUNCH_BOUNDS
#endif

#define GG_CROSS_INSTANTIATE(NAME, ELEM, QELEM)                                                   \
    extern "C" __global__ void GG_CROSS_LAUNCH_BOUNDS NAME(                                        \
        const ELEM* __restrict__ C, const QELEM* __restrict__ Cq, const ELEM* __restrict__ R,      \
        const QELEM* __restrict__ Rq, const void* __restrict__ ids, const void* __restrict__ qids, \
        const int* __restrict__ seg_offsets, unsigned int seg_len,                                 \
        const unsigned char* __restrict__ mask, const unsigned char* __restrict__ qmask,           \
        float* partial, unsigned int N, unsigned int T, unsigned int dc, unsigned int dr,          \
        unsigned int Q, unsigned int V, unsigned int tokens_per_split, unsigned int flags) {       \
        cross_gram_impl<ELEM, QELEM>(C, Cq, R, Rq, ids, qids, seg_offsets, seg_len, mask, qmask, partial, \
                              N, T, dc, dr, Q, V, tokens_per_split, flags);                        \
    }

GG_CROSS_INSTANTIATE(cross_gram_f32, float, float)
GG_CROSS_INSTANTIATE(cross_gram_bf16, __nv_bfloat16, __nv_bfloat16)
GG_CROSS_INSTANTIATE(cross_gram_f16, __half, __half)
GG_CROSS_INSTANTIATE(cross_gram_qf32_bf16, __nv_bfloat16, float)
GG_CROSS_INSTANTIATE(cross_gram_qf32_f16, __half, float)

// The segment [*s, *e) holding row (or sorted position) u, or false when none does. With
// nondecreasing offsets the binary search finds the only candidate; with invalid offsets the
// result is unspecified but within [0, Q].
__device__ __forceinline__ bool segment_of(const int* seg_offsets, unsigned int seg_len,
                                           unsigned int u, unsigned int V, unsigned int Q,
                                           unsigned int* s, unsigned int* e) {
    unsigned int v;
    if (seg_offsets != nullptr) {
        // Largest v in [0, V) with clamp(offsets[v]) <= u.
        unsigned int lo = 0, hi = V;  // invariant: answer in [lo, hi)
        while (hi - lo > 1u) {
            const unsigned int mid = lo + (hi - lo) / 2u;
            long long o = seg_offsets[mid];
            o = o < 0 ? 0 : (o > (long long)Q ? (long long)Q : o);
            if ((unsigned long long)o <= u) lo = mid; else hi = mid;
        }
        v = lo;
    } else if (V == 1u) {
        v = 0;
    } else {
        v = seg_len ? u / seg_len : V;
    }
    if (v >= V) return false;
    segment_rows(seg_offsets, seg_len, v, V, Q, s, e);
    return u >= *s && u < *e;
}

__device__ __forceinline__ int sort_key(const void* qids, bool wide, const unsigned char* qmask,
                                        unsigned int u, unsigned int vocab) {
    if (!keep_row(qmask, u)) return GG_KEY_MASKED;
    const int id = gg_load_id(qids, u, wide);
    return (id >= 0 && (unsigned int)id < vocab) ? id : GG_KEY_INVALID;
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    embed_sort(const void* __restrict__ qids, const unsigned char* __restrict__ qmask,
               const int* __restrict__ seg_offsets, unsigned int seg_len, unsigned int Q,
               unsigned int V, unsigned int vocab, int* perm, int* sid, unsigned int flags) {
    const bool wide = (flags & GG_FLAG_RQ_IDS64) != 0u;
    __shared__ int keys[GG_BLOCK];
    __shared__ unsigned int lo[GG_BLOCK], hi[GG_BLOCK];
    const unsigned long long u64 = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    const unsigned int u = (unsigned int)u64;
    unsigned int s = 0, e = 0;
    const bool mine = u64 < Q && segment_of(seg_offsets, seg_len, u, V, Q, &s, &e);
    const int key = mine ? sort_key(qids, wide, qmask, u, vocab) : 0;
    // The union [lo, hi) of this block's rows' segments (fixed tree: min / max are exact).
    lo[threadIdx.x] = mine ? s : 0xffffffffu;
    hi[threadIdx.x] = mine ? e : 0u;
    __syncthreads();
    for (unsigned int h = GG_BLOCK / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) {
            lo[threadIdx.x] = min(lo[threadIdx.x], lo[threadIdx.x + h]);
            hi[threadIdx.x] = max(hi[threadIdx.x], hi[threadIdx.x + h]);
        }
        __syncthreads();
    }
    const unsigned int blo = lo[0], bhi = hi[0];
    unsigned int rank = 0;
    for (unsigned int t0 = blo; t0 < bhi; t0 += GG_BLOCK) {
        __syncthreads();  // the previous tile has been read
        const unsigned int w = t0 + threadIdx.x;
        keys[threadIdx.x] = w < bhi ? sort_key(qids, wide, qmask, w, vocab) : 0;
        __syncthreads();
        if (mine && e > t0 && s < t0 + GG_BLOCK) {  // this tile overlaps the row's segment
            const unsigned int jb = s > t0 ? s - t0 : 0u;
            const unsigned int je = min(e, min(bhi, t0 + GG_BLOCK)) - t0;
            for (unsigned int j = jb; j < je; ++j) {
                const int kw = keys[j];
                rank += (kw < key || (kw == key && t0 + j < u)) ? 1u : 0u;
            }
        }
    }
    if (mine) {
        perm[s + rank] = (int)u;
        sid[s + rank] = key;
    }
}

template <typename Elem>
__device__ __forceinline__ void embed_table_impl(const Elem* Bq, const int* perm, const int* sid,
                                                 const int* seg_offsets, unsigned int seg_len,
                                                 unsigned int Q, unsigned int V, unsigned int d,
                                                 float* table) {
    const unsigned int k = blockIdx.x;
    unsigned int s, e;
    if (k >= Q || !segment_of(seg_offsets, seg_len, k, V, Q, &s, &e)) return;
    const int key = sid[k];
    if (key == GG_KEY_MASKED || key == GG_KEY_INVALID) return;
    if (k > s && sid[k - 1] == key) return;  // not the start of its run
    const unsigned long long f = (unsigned long long)blockIdx.y * GG_BLOCK + threadIdx.x;
    if (f >= d) return;
    float sum = 0.0f;
    for (unsigned int r = k; r < e && sid[r] == key; ++r) sum += to_f32(Bq[(size_t)perm[r] * d + f]);
    table[(size_t)k * d + f] = sum;
}

#define GG_TABLE_INSTANTIATE(SUFFIX, ELEM)                                                         \
    extern "C" __global__ void GG_LAUNCH_BOUNDS embed_table_##SUFFIX(                              \
        const ELEM* __restrict__ Bq, const int* __restrict__ perm, const int* __restrict__ sid,    \
        const int* __restrict__ seg_offsets, unsigned int seg_len, unsigned int Q, unsigned int V, \
        unsigned int d, float* table) {                                                            \
        embed_table_impl<ELEM>(Bq, perm, sid, seg_offsets, seg_len, Q, V, d, table);               \
    }

GG_TABLE_INSTANTIATE(f32, float)
GG_TABLE_INSTANTIATE(bf16, __nv_bfloat16)
GG_TABLE_INSTANTIATE(f16, __half)

template <typename Elem>
__device__ __forceinline__ void embed_gather_impl(
    const void* ids, const Elem* B, const unsigned char* mask, const int* sid, const float* table,
    const int* seg_offsets, unsigned int seg_len, float* partial, unsigned int N, unsigned int T,
    unsigned int d, unsigned int Q, unsigned int V, unsigned int vocab,
    unsigned int tokens_per_split, unsigned int flags) {
    const bool diag = (flags & GG_FLAG_DIAG) != 0u;
    const bool wide = (flags & GG_FLAG_RT_IDS64) != 0u;
    const unsigned int Veff = diag ? 1u : V;
    if (Veff == 0u || blockIdx.x >= N * Veff) return;  // uniform over the block
    const unsigned int n = blockIdx.x / Veff;
    const unsigned int v = diag ? n : blockIdx.x - n * Veff;
    unsigned int qs, qe;
    segment_rows(seg_offsets, seg_len, v, V, Q, &qs, &qe);

    unsigned long long tb, te;
    split_range(blockIdx.y, tokens_per_split, T, &tb, &te);

    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warp = threadIdx.x >> 5;
    const size_t row0 = (size_t)n * T;
    float acc = 0.0f;
    for (unsigned long long t = tb + warp; t < te; t += GG_BLOCK / 32) {
        if (!keep_row(mask, row0 + t)) continue;  // uniform over the warp
        const int id = gg_load_id(ids, row0 + t, wide);
        if (id < 0 || (unsigned int)id >= vocab) {
            if (lane == 0u) acc += __int_as_float(0x7fc00000);
            continue;
        }
        // lower_bound of id in sid[qs, qe)
        unsigned int lo = qs, hi = qe;
        while (lo < hi) {
            const unsigned int mid = lo + (hi - lo) / 2u;
            if (sid[mid] < id) lo = mid + 1u; else hi = mid;
        }
        if (lo >= qe || sid[lo] != id) continue;
        const Elem* b = B + (row0 + t) * d;
        const float* row = table + (size_t)lo * d;
        for (unsigned int f = lane; f < d; f += 32u) acc = fmaf(to_f32(b[f]), row[f], acc);
    }
    if (threadIdx.x == 0 && qe > qs && sid[qe - 1] == GG_KEY_INVALID) acc += __int_as_float(0x7fc00000);
    const float total = block_sum_256(acc);
    if (threadIdx.x == 0) partial[(size_t)blockIdx.y * N * Veff + blockIdx.x] = total;
}

#define GG_GATHER_INSTANTIATE(SUFFIX, ELEM)                                                        \
    extern "C" __global__ void GG_LAUNCH_BOUNDS embed_gather_##SUFFIX(                             \
        const void* __restrict__ ids, const ELEM* __restrict__ B,                                  \
        const unsigned char* __restrict__ mask, const int* __restrict__ sid,                       \
        const float* __restrict__ table, const int* __restrict__ seg_offsets,                      \
        unsigned int seg_len, float* partial, unsigned int N, unsigned int T, unsigned int d,      \
        unsigned int Q, unsigned int V, unsigned int vocab, unsigned int tokens_per_split,         \
        unsigned int flags) {                                                                      \
        embed_gather_impl<ELEM>(ids, B, mask, sid, table, seg_offsets, seg_len, partial, N, T, d,  \
                                Q, V, vocab, tokens_per_split, flags);                             \
    }

GG_GATHER_INSTANTIATE(f32, float)
GG_GATHER_INSTANTIATE(bf16, __nv_bfloat16)
GG_GATHER_INSTANTIATE(f16, __half)
