// Reductions that finish the split-token kernels, and the "materialize" dot product.
//
// finalize_partials_f32(const float* partial, float* out, unsigned count, unsigned splits,
//                       float scale, float beta)
//   sum = partial[0*count+i] + partial[1*count+i] + ... + partial[(splits-1)*count+i]
//         (left to right, starting from +0: sum = ((0 + p0) + p1) + ...)
//   out[i] = (beta != 0) ? fmaf(beta, out[i], scale*sum) : scale*sum
//   When beta == 0 the old out is not read (it may be NaN). NaN in a partial propagates.
//   Launch: grid = (ceil(count/256), 1, 1), block = (256,1,1). One thread per output.
//
// rows_dot_f32(const float* X, const float* Y, float* partial, unsigned N, unsigned V,
//              unsigned long long D, unsigned long long chunk, unsigned diag)
//   partial[s*N*V + n*V + v] = Σ_{k in [s*chunk, min(D,(s+1)*chunk))} X[n*D+k] * Y[v*D+k]
//   diag != 0 (per-sample squared norms of materialized gradients): the host passes V = 1 and
//   block n pairs row n of X with row n of Y, i.e. partial[s*N + n] = Σ X[n*D+k] * Y[n*D+k].
//   Launch: grid = (N*V, S, 1), S = ceil(D / chunk) (chunk == 0 means D, S = 1),
//   blockIdx.x = n*V + v, blockIdx.y = s; block = (256,1,1).
//   Order: thread tid owns k = kb + tid + 256*m (m = 0,1,...) and keeps 4 running sums,
//   m%4 -> acc[m%4] (fmaf), combined as (acc0+acc1)+(acc2+acc3); then the fixed block tree of
//   common.cuh. Deterministic for a given chunk; loads coalesced (consecutive threads,
//   consecutive k). Assumes only element alignment. Static shared memory: 32 bytes.

#include "common.cuh"

extern "C" __global__ void GG_LAUNCH_BOUNDS
    finalize_partials_f32(const float* __restrict__ partial, float* out, unsigned int count,
                          unsigned int splits, float scale, float beta) {
    const unsigned long long i = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    if (i >= count) return;
    float sum = 0.0f;
    for (unsigned int s = 0; s < splits; ++s) sum += partial[(size_t)s * count + i];
    float r = scale * sum;
    if (beta != 0.0f) r = fmaf(beta, out[i], r);
    out[i] = r;
}

extern "C" __global__ void GG_LAUNCH_BOUNDS
    rows_dot_f32(const float* __restrict__ X, const float* __restrict__ Y, float* partial,
                 unsigned int N, unsigned int V, unsigned long long D,
                 unsigned long long chunk, unsigned int diag) {
    if (V == 0u || blockIdx.x >= N * V) return;  // uniform over the block
    const unsigned int n = blockIdx.x / V;
    const unsigned int v = blockIdx.x - n * V;
    const unsigned long long s = blockIdx.y;
    const unsigned long long ch = chunk ? chunk : D;
    unsigned long long kb = s * ch;
    unsigned long long ke = kb + ch;
    if (ke > D || ke < kb) ke = D;  // ke < kb: overflow guard
    if (kb > ke) kb = ke;

    const float* x = X + (size_t)n * D;
    const float* y = Y + (size_t)(diag ? n : v) * D;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    unsigned long long k = kb + threadIdx.x;
    // Main part: 4 strided elements per iteration, one per accumulator.
    for (; k + 3ull * GG_BLOCK < ke; k += 4ull * GG_BLOCK) {
        const float x0 = x[k], x1 = x[k + GG_BLOCK], x2 = x[k + 2 * GG_BLOCK],
                    x3 = x[k + 3 * GG_BLOCK];
        const float y0 = y[k], y1 = y[k + GG_BLOCK], y2 = y[k + 2 * GG_BLOCK],
                    y3 = y[k + 3 * GG_BLOCK];
        acc[0] = fmaf(x0, y0, acc[0]);
        acc[1] = fmaf(x1, y1, acc[1]);
        acc[2] = fmaf(x2, y2, acc[2]);
        acc[3] = fmaf(x3, y3, acc[3]);
    }
    // Tail: continue the same m%4 -> acc assignment.
    if (k < ke) acc[0] = fmaf(x[k], y[k], acc[0]);
    if (k + GG_BLOCK < ke) acc[1] = fmaf(x[k + GG_BLOCK], y[k + GG_BLOCK], acc[1]);
    if (k + 2ull * GG_BLOCK < ke) acc[2] = fmaf(x[k + 2 * GG_BLOCK], y[k + 2 * GG_BLOCK], acc[2]);

    const float total = block_sum_256((acc[0] + acc[1]) + (acc[2] + acc[3]));
    if (threadIdx.x == 0) partial[(size_t)s * N * V + blockIdx.x] = total;
}
