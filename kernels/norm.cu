// norm_grad_{f32,bf16,f16}: per-group gradients of a LayerNorm / RMSNorm affine map
// (MATH.md §1, K-A6; src/layers/): y = γ ⊙ x̂ + β, so for a group of rows g
//   out[g*D + k]     (+)= Σ_{r in group g, kept} B[r,k] * X[r,k]        (γ, k < d)
//   out[g*D + d + k] (+)= Σ_{r in group g, kept} B[r,k]                 (β, with bias)
//   D = d * (1 + bias). The groups are the samples (seg_len = T, G = N) or query segments.
// Signature: (const Elem* X, const Elem* B, const unsigned char* mask, const int* seg_offsets,
//   unsigned seg_len, unsigned rows, unsigned G, unsigned d, unsigned flags, float* out)
//   X, B [rows, d] row-major; mask [rows] may be null; group g = segment_rows(seg_offsets,
//   seg_len, g, G, rows) (common.cuh). flags: bit0 bias, bit2 ACCUMULATE (add to out instead
//   of overwriting: the uses of a tied norm parameter are summed by consecutive launches).
// Launch: grid (ceil(d/256), G, 1), block 256: thread k of chunk c owns feature c*256 + k and
//   walks the group's rows in order (fmaf): fixed order, coalesced loads, no shared memory.
//   Masked rows are skipped (never read). Assumes only element alignment.
// Query gradients of model_ghg's combined query (src/layers/gpu.rs): X = x̂_val widened to f32
//   and B = comb, both f32 (formed by ghg_query_<dt>, inrun.cu) whatever the training dtype, so
//   norm_grad_f32 serves them; the training gradients keep the training dtype. Both land in f32
//   [G, D] buffers dotted by rows_dot_f32.

#include "common.cuh"

#define GG_FLAG_ACCUMULATE 4u

template <typename Elem>
__device__ __forceinline__ void norm_grad_impl(const Elem* X, const Elem* B,
                                               const unsigned char* mask, const int* seg_offsets,
                                               unsigned int seg_len, unsigned int rows,
                                               unsigned int G, unsigned int d, unsigned int flags,
                                               float* out) {
    const unsigned long long k = (unsigned long long)blockIdx.x * GG_BLOCK + threadIdx.x;
    const unsigned int g = blockIdx.y;
    if (k >= d || g >= G) return;
    const bool bias = (flags & GG_FLAG_BIAS) != 0u;
    unsigned int s, e;
    segment_rows(seg_offsets, seg_len, g, G, rows, &s, &e);
    float w = 0.0f, bsum = 0.0f;
    for (unsigned int r = s; r < e; ++r) {
        if (!keep_row(mask, r)) continue;
        const float b = to_f32(B[(size_t)r * d + k]);
        w = fmaf(b, to_f32(X[(size_t)r * d + k]), w);
        bsum += b;
    }
    const size_t D = (size_t)d * (bias ? 2u : 1u);
    float* o = out + (size_t)g * D;
    if (flags & GG_FLAG_ACCUMULATE) {
        o[k] += w;
        if (bias) o[d + k] += bsum;
    } else {
        o[k] = w;
        if (bias) o[d + k] = bsum;
    }
}

#define GG_NORM_INSTANTIATE(SUFFIX, ELEM)                                                          \
    extern "C" __global__ void GG_LAUNCH_BOUNDS norm_grad_##SUFFIX(                                \
        const ELEM* __restrict__ X, const ELEM* __restrict__ B,                                    \
        const unsigned char* __restrict__ mask, const int* __restrict__ seg_offsets,               \
        unsigned int seg_len, unsigned int rows, unsigned int G, unsigned int d,                   \
        unsigned int flags, float* out) {                                                          \
        norm_grad_impl<ELEM>(X, B, mask, seg_offsets, seg_len, rows, G, d, flags, out);            \
    }

GG_NORM_INSTANTIATE(f32, float)
GG_NORM_INSTANTIATE(bf16, __nv_bfloat16)
GG_NORM_INSTANTIATE(f16, __half)
