// In-Run Data Shapley (MATH.md §2): the combined query of the fused first + second order
// value, its grouped finalize, and the float64 value accumulator.
//
// ghg_query_{f32,bf16,f16}(const Elem* b_val, const Elem* b_dot, float* comb,
//                          unsigned long long count_b, const Elem* a_val, float* a_f32,
//                          unsigned long long count_a, float w0, float w1)
//   The first-order query (a_val, b_val) and the (a_val, ḃ) half of H·v share a_val, so ghg
//   evaluates them as ONE ghost-dot query (a_val, comb) with
//     comb[i]  = (float)fma((double)w0, (double)b_val[i], (double)w1 * (double)b_dot[i])
//                                                              for i < count_b
//   (w0 = -eta, w1 = eta^2/2): both products are exact in f64 (24-bit × 24-bit significands),
//   so this is the exact value rounded once to f64 and then to f32, bit for bit what the fast
//   CPU path forms. comb is always f32, whatever Elem is.
//     a_f32[i] = (float)a_val[i]                                   for i < count_a
//   is an exact widening, done only when a_f32 != null (bf16 / f16 inputs), so that the query
//   is homogeneously f32: the Gram pass then runs ghost_dot_gram_qf32_<Elem> (ghost_gram.cu) and
//   the dense / materialize passes build the query side with factored_grad_f32.
//   model_ghg (src/layers/gpu.rs) launches it once per use of a whole model the same way:
//   count_b = q·(b width); a_val = the use's float query x (Linear a_val, norm x̂_val) widened
//   for bf16 / f16, none for embedding uses (their x are ids, read in place). Its combined
//   pass then runs cross_gram_qf32_<Elem> (embedding.cu) for tied cross terms, embed_table_f32
//   for the query table and norm_grad_f32 (norm.cu) for query norm gradients.
//   Every row is formed, masked validation rows included (the ghost-dot kernels skip them; NaN
//   there stays there). Assumes element alignment only; comb / a_f32 do not alias the inputs.
//   Launch: grid = (ceil(max(count_b, count_a)/256), 1, 1), block = (256,1,1); one thread per
//   element; no shared memory.
//
// finalize_groups_f32(const float* partial, float* out, unsigned count, unsigned end0,
//                     unsigned end1, float w0, float w1, float scale, float beta)
//   The per-pseudo-layer ghost-dot kernels (ghost_gram.cu / ghost_dense.cu / reduce.cu) wrote
//   partial slots ordered [first-order slots | second-order slots]:
//     sum0 = partial[0*count+i] + ... + partial[(end0-1)*count+i]        (left to right from +0)
//     sum1 = partial[end0*count+i] + ... + partial[(end1-1)*count+i]     (left to right from +0)
//     r    = scale * fmaf(w1, sum1, w0*sum0)        (w0 = -eta, w1 = eta^2/2 for ghg)
//     out[i] = (beta != 0) ? fmaf(beta, out[i], r) : r
//   When beta == 0 the old out is not read (it may be NaN). NaN in a partial propagates.
//   Assumes end0 <= end1. Launch: grid = (ceil(count/256), 1, 1), block = (256,1,1); one
//   thread per output; no shared memory.
//
// accumulate_values_f64(const float* values, const int* ids, double* phi, unsigned n,
//                       unsigned num_ids)
//   phi[ids[k]] += (double)values[k] for k = 0..n-1, in increasing k for every id (ids may
//   repeat): the result is the sequential left-to-right float64 sum, bit for bit.
//   Ids outside [0, num_ids) are SKIPPED (the host API rejects them when it can read the ids;
//   on a device it cannot without a synchronization).
//   Launch: grid = (1, 1, 1) (exactly one block: determinism without atomics), block =
//   (256,1,1). Tiling: the block stages 256 (value, id) pairs in shared memory (2 KiB static);
//   thread tid owns every id with id % 256 == tid and scans the staged chunk in order, so each
//   phi element is read-modify-written by one thread only, in k order. Cost O(256·n) shared
//   reads: meant for one training batch per call (n up to a few thousand).

#include "common.cuh"

template <typename Elem>
__device__ __forceinline__ void ghg_query_impl(const Elem* __restrict__ b_val,
                                               const Elem* __restrict__ b_dot, float* comb,
                                               unsigned long long count_b,
                                               const Elem* __restrict__ a_val, float* a_f32,
                                               unsigned long long count_a, float w0, float w1) {
    const unsigned long long i = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    if (i < count_b) {
        const double dot_term = (double)w1 * (double)to_f32(b_dot[i]);  // exact
        comb[i] = (float)fma((double)w0, (double)to_f32(b_val[i]), dot_term);
    }
    if (a_f32 != nullptr && i < count_a) a_f32[i] = to_f32(a_val[i]);
}

#define GG_GHG_QUERY_INSTANTIATE(SUFFIX, ELEM)                                                     \
    extern "C" __global__ void GG_LAUNCH_BOUNDS ghg_query_##SUFFIX(                                \
        const ELEM* __restrict__ b_val, const ELEM* __restrict__ b_dot, float* comb,               \
        unsigned long long count_b, const ELEM* __restrict__ a_val, float* a_f32,                  \
        unsigned long long count_a, float w0, float w1) {                                          \
        ghg_query_impl<ELEM>(b_val, b_dot, comb, count_b, a_val, a_f32, count_a, w0, w1);          \
    }

GG_GHG_QUERY_INSTANTIATE(f32, float)
GG_GHG_QUERY_INSTANTIATE(bf16, __nv_bfloat16)
GG_GHG_QUERY_INSTANTIATE(f16, __half)

extern "C" __global__ void GG_LAUNCH_BOUNDS
    finalize_groups_f32(const float* __restrict__ partial, float* out, unsigned int count,
                        unsigned int end0, unsigned int end1, float w0, float w1, float scale,
                        float beta) {
    const unsigned long long i = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    if (i >= count) return;
    float sum0 = 0.0f;
    for (unsigned int s = 0; s < end0; ++s) sum0 += partial[(size_t)s * count + i];
    float sum1 = 0.0f;
    for (unsigned int s = end0; s < end1; ++s) sum1 += partial[(size_t)s * count + i];
    float r = scale * fmaf(w1, sum1, w0 * sum0);
    if (beta != 0.0f) r = fmaf(beta, out[i], r);
    out[i] = r;
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    accumulate_values_f64(const float* __restrict__ values, const int* __restrict__ ids,
                          double* phi, unsigned int n, unsigned int num_ids) {
    __shared__ float s_val[GG_BLOCK];
    __shared__ int s_id[GG_BLOCK];
    if (blockIdx.x != 0u) return;  // uniform over the block: only one block does the work
    const unsigned int tid = threadIdx.x;
    for (unsigned int base = 0; base < n; base += GG_BLOCK) {
        const unsigned int k = base + tid;
        if (k < n) {
            s_val[tid] = values[k];
            s_id[tid] = ids[k];
        }
        __syncthreads();
        const unsigned int len = (n - base < GG_BLOCK) ? (n - base) : GG_BLOCK;
        for (unsigned int j = 0; j < len; ++j) {
            const int id = s_id[j];
            if (id >= 0 && (unsigned int)id < num_ids && ((unsigned int)id & (GG_BLOCK - 1u)) == tid)
                phi[id] += (double)s_val[j];
        }
        __syncthreads();
    }
}
