//! First-order ghost dot-products (MATH.md §1): inner products of per-sample gradients of a
//! linear layer computed from their factors, never materializing `G_n = B_nᵀ A_n`.
//!
//! Shapes (row-major, contiguous):
//! ```text
//! A  [N, T, d_in]   layer inputs of the training samples      (f32 | bf16 | f16)
//! B  [N, T, d_out]  output gradients of the training samples  (same dtype as A)
//! mask [N, T] u8    optional; a zero entry SKIPS that token (it contributes exactly 0,
//!                   even when its rows hold NaN or Inf)
//! Aq [Q, d_in], Bq [Q, d_out]   query factors (validation/test rows), same dtype
//! query segments    which query rows form query sample v (V segments), see [`Segments`]
//! ```
//! With `has_bias`, the layer's bias is part of the parameter: activations are augmented with a
//! constant 1, so `a·a'` becomes `a·a' + 1` and `G` gains the column `Σ_t b_t`.
//!
//! Operations (all write `out = beta·out + scale·result`; `beta = 0` never reads `out`):
//! * [`ghost_dot`](crate::Context::ghost_dot): `out[n, v] = <G_n, Gq_v>`, in the Gram form
//!   `Σ_t Σ_{u∈v} (a_{n,t}·aq_u)(b_{n,t}·bq_u)`, the dense-query form `Σ_t b_{n,t}ᵀ M_v a_{n,t}`
//!   with `M_v = Bq_vᵀ Aq_v`, or by materializing; [`FormRequest::Auto`] picks by cost.
//! * [`ghost_dot_dense`](crate::Context::ghost_dot_dense): `out[n] = Σ_t b_{n,t}ᵀ M a_{n,t}` for
//!   a caller-given dense `M [d_out, d_in]` (+ `m_bias [d_out]`).
//! * [`factored_grad`](crate::Context::factored_grad): `M_v = Σ_{u∈v} w_u bq_u aq_uᵀ`.
//! * [`ghost_gram`](crate::Context::ghost_gram): `K[n, m] = <G_n, G_m>` over training samples,
//!   and [`ghost_sqnorm`](crate::Context::ghost_sqnorm): its diagonal `‖G_n‖²`.

pub mod cost;
pub(crate) mod gpu;
pub(crate) mod validate_ops;

use crate::buffer::Tensor;

pub use cost::{Form, FormChoice, FormCost, FormRequest};

/// Shape of one linear layer `y = x Wᵀ (+ bias)`, `W ∈ R^{d_out×d_in}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub d_in: u64,
    pub d_out: u64,
    pub has_bias: bool,
}

impl LayerShape {
    pub fn new(d_in: u64, d_out: u64) -> Self {
        LayerShape { d_in, d_out, has_bias: false }
    }
    pub fn with_bias(mut self, has_bias: bool) -> Self {
        self.has_bias = has_bias;
        self
    }
}

/// Training-side factors of one layer: `A [n, t, d_in]`, `B [n, t, d_out]`, optional mask `[n, t]`.
#[derive(Debug, Clone, Copy)]
pub struct TrainFactors<'a> {
    pub a: Tensor<'a>,
    pub b: Tensor<'a>,
    pub n: u64,
    pub t: u64,
    pub mask: Option<Tensor<'a>>,
}

/// Which query rows belong to which query sample.
#[derive(Debug, Clone, Copy)]
pub enum Segments<'a> {
    /// All `Q` rows form one query (e.g. the summed validation gradient): `V = 1`.
    Single,
    /// Consecutive runs of `len` rows; `V = ceil(Q / len)` (the last may be shorter).
    Uniform(u64),
    /// `offsets [V + 1]` (i32, in the context's memory space): segment `v` is rows
    /// `offsets[v]..offsets[v+1]`. Offsets must be nondecreasing within `[0, Q]`: checked on the
    /// host; on a device they cannot be read without a synchronization, so kernels clamp them
    /// (never reading out of bounds) and the results of invalid offsets are unspecified.
    Offsets(Tensor<'a>),
}

/// Query-side factors of one layer: `Aq [q, d_in]`, `Bq [q, d_out]`, optional row mask `[q]`.
#[derive(Debug, Clone, Copy)]
pub struct QueryFactors<'a> {
    pub aq: Tensor<'a>,
    pub bq: Tensor<'a>,
    pub q: u64,
    pub segments: Segments<'a>,
    pub mask: Option<Tensor<'a>>,
}

/// `out = beta·out + scale·result`. With `beta == 0` the previous contents of `out` are not read
/// (so an uninitialized or NaN-filled output is fine), as in BLAS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accumulate {
    pub scale: f32,
    pub beta: f32,
}

impl Default for Accumulate {
    fn default() -> Self {
        Accumulate { scale: 1.0, beta: 0.0 }
    }
}

impl Accumulate {
    /// `out = result`.
    pub fn overwrite() -> Self {
        Self::default()
    }
    /// `out = out + scale·result`: the form used to sum over layers.
    pub fn add_scaled(scale: f32) -> Self {
        Accumulate { scale, beta: 1.0 }
    }
}

/// One layer of a batched ghost dot-product call.
#[derive(Debug, Clone, Copy)]
pub struct GhostDotLayer<'a> {
    pub shape: LayerShape,
    pub train: TrainFactors<'a>,
    pub query: QueryFactors<'a>,
    pub form: FormRequest,
}
