//! Every layer of a transformer in one batched call (MATH.md §1, K-A1, K-A5, K-A6): inner
//! products of per-sample gradients of a whole model — Linear (and convolution, and HF
//! `Conv1D`), embedding, LayerNorm/RMSNorm, and parameters shared by several uses (an input
//! embedding tied to the LM head) — computed from the factors of one ordinary backward pass.
//!
//! # Layer kinds and what to feed
//!
//! Every use of a parameter gives, per token (train: `N·T` rows; query: `Q` rows), a pair of
//! factors `x` and `b = ∂loss/∂(layer output)`:
//!
//! | [`LayerKind`] | parameter | `x` | `b` | per-sample gradient |
//! |---|---|---|---|---|
//! | `Linear { layout: OutIn }` (`nn.Linear`, `y = x Wᵀ + β`) | `W [d_out, d_in]`, `β [d_out]` | `a [rows, d_in]` | `[rows, d_out]` | `G = Σ_t b_t a_tᵀ`, `Σ_t b_t` |
//! | `Linear { layout: InOut }` (HF `Conv1D`, `y = x W + β`) | `W [d_in, d_out]`, `β [d_out]` | `a [rows, d_in]` | `[rows, d_out]` | `G = Σ_t a_t b_tᵀ`, `Σ_t b_t` |
//! | `Linear` for a convolution | `W.view(C_out, C_in·k_h·k_w)` | unfolded patches `[rows = N·H_out·W_out, C_in·k_h·k_w]` (`F.unfold(x).transpose(1, 2)`), `T = H_out·W_out` | `[rows, C_out]` (`grad_out.flatten(2).transpose(1, 2)`) | as `nn.Linear` |
//! | `Embedding { vocab, d }` (`y = E[id]`) | `E [vocab, d]` | ids, i32 `[rows]` in `[0, vocab)` | `[rows, d]` | `G = Σ_t e_{id_t} b_tᵀ` |
//! | `Norm { d, has_bias }` (LayerNorm / RMSNorm, `y = γ ⊙ x̂ + β`) | `γ [d]`, `β [d]` | `x̂ [rows, d]` (the normalized input before the affine map) | `[rows, d]` | `g = Σ_t b_t ⊙ x̂_t`, `Σ_t b_t` |
//!
//! What `WeightLayout` changes, exactly:
//! * in these model-level calls, nothing for a parameter used once (`<G, G'>` does not depend on
//!   how `W` is stored); for a parameter used in *both* orientations in one tied group, the
//!   cross terms: the `OutIn` use contributes `Σ_t b_t a_tᵀ` and the `InOut` use `Σ_t a_t b_tᵀ`
//!   to the same `[rows, cols]` storage (checked: the two uses must agree on it);
//! * where a dense matrix is exchanged with the caller — `M` of
//!   [`ghost_dot_dense`](crate::Context::ghost_dot_dense), the output of
//!   [`factored_grad`](crate::Context::factored_grad) — ghostgrad always uses `[d_out, d_in]`.
//!   For a `Conv1D` weight (stored `[d_in, d_out]`) either transpose (`M.T.contiguous()`), or,
//!   without a copy and for a layer without bias, swap the roles: `LayerShape::new(d_out, d_in)`
//!   with `A := B`, `B := A` (train and query) takes/produces the `[d_in, d_out]` matrix as
//!   stored, since `Σ_t b_tᵀ M a_t = Σ_t a_tᵀ Mᵀ b_t` (tested in tests/layers.rs).
//!
//! # Tied parameters
//!
//! Uses with the same [`LayerUse::param`] id share one parameter: its per-sample gradient is the
//! sum of the uses' gradients, so `<G_n, Gq_v> = Σ_i Σ_j <G^i_n, Gq^j_v>`, cross terms included.
//! Each matrix use is, per token, an outer product `r_t c_tᵀ` on the parameter's storage
//! `[rows, cols]`: `r` = `b` (`OutIn`), `a` (`InOut`) or the one-hot `e_id` (embedding), `c` the
//! other factor. A cross term is `Σ_t Σ_u (r_t·r'_u)(c_t·c'_u)`, where `r_t·r'_u` is a dot
//! product, `[id_t = id'_u]`, or a gather `r'_u[id_t]` (embedding × LM head:
//! `Σ_t Σ_u bq_u[x_t] (b_t·aq_u)`, and its mirror). Rules (checked): the uses of one parameter
//! agree on its `[rows, cols]` and dtype; norm parameters tie only with norm parameters; a bias is
//! shared only by Linear uses of one layout (its gradient `Σ_t b_t` then augments `a` with a 1).
//!
//! # Operations (each `out = beta·out + scale·result`, `beta = 0` never reads `out`)
//!
//! * [`model_dot`](crate::Context::model_dot): `out[n, v] = Σ_params <G_n, Gq_v>`, `[N, V]`;
//! * [`model_gram`](crate::Context::model_gram): `K[n, m] = Σ_params <G_n, G_m>`, `[N, N]`;
//! * [`model_sqnorm`](crate::Context::model_sqnorm): `‖G_n‖²` over all parameters, `[N]`.
//!
//! # Algorithms
//!
//! * a Linear use's own term (the whole parameter when used once; the diagonal term of a tied
//!   group): the ghost dot-product family (Gram, dense-query or materialize by cost);
//! * embedding: masked Gram `Σ_t Σ_u [x_t = xq_u](b_t·bq_u)`, or scatter/gather: the query rows
//!   of each segment are sorted by id (ties by row), rows with equal ids are summed into a
//!   compact table (one row per distinct id, at most `Q` rows — never `[vocab, d]`), and every
//!   training token gathers its row by binary search; chosen by cost ([`EmbeddingForm`]);
//! * cross terms of tied uses: the Gram form with the row-side dot replaced as above;
//! * norms: the d-long per-sample gradients are materialized (summed over tied uses), then dotted.
//!
//! On a GPU, all terms write partial slots and one or two `finalize_partials_f32` launches apply
//! the accumulation: the whole model is a fixed, small number of launches per term, with no
//! synchronization and a result that depends only on the shapes (deterministic).
//!
//! Ids: on the host they are checked to lie in `[0, vocab)`. Device ids cannot be read without a
//! synchronization; an id outside the range makes every result it would touch NaN (never an
//! out-of-bounds access).

pub(crate) mod fast;
pub(crate) mod gpu;
pub mod reference;

use crate::buffer::{HostSlice, Tensor, TensorMut};
use crate::context::{Backend, Context};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::cost::GhostDotSize;
use crate::ghost_dot::validate_ops::{self as vo, QueryDims, SegKind};
use crate::ghost_dot::{Accumulate, Form, FormRequest, LayerShape, Segments};
use crate::validate::{self as v, Space};

/// How a Linear weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum WeightLayout {
    /// `[d_out, d_in]`, `y = x Wᵀ` (`torch.nn.Linear`, convolutions).
    #[default]
    OutIn = 0,
    /// `[d_in, d_out]`, `y = x W` (HF `transformers.Conv1D`, GPT-2).
    InOut = 1,
}

/// What a parameter use computes (see the module doc for the factors of each kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Linear { d_in: u64, d_out: u64, has_bias: bool, layout: WeightLayout },
    Embedding { vocab: u64, d: u64 },
    Norm { d: u64, has_bias: bool },
}

impl LayerKind {
    /// A `torch.nn.Linear` (`W [d_out, d_in]`).
    pub fn linear(d_in: u64, d_out: u64, has_bias: bool) -> Self {
        LayerKind::Linear { d_in, d_out, has_bias, layout: WeightLayout::OutIn }
    }
    /// Width of `x` (0 for embedding ids, which are one per row).
    fn x_width(&self) -> u64 {
        match *self {
            LayerKind::Linear { d_in, .. } => d_in,
            LayerKind::Embedding { .. } => 1,
            LayerKind::Norm { d, .. } => d,
        }
    }
    fn b_width(&self) -> u64 {
        match *self {
            LayerKind::Linear { d_out, .. } => d_out,
            LayerKind::Embedding { d, .. } | LayerKind::Norm { d, .. } => d,
        }
    }
    fn has_bias(&self) -> bool {
        match *self {
            LayerKind::Linear { has_bias, .. } | LayerKind::Norm { has_bias, .. } => has_bias,
            LayerKind::Embedding { .. } => false,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            LayerKind::Linear { .. } => "linear",
            LayerKind::Embedding { .. } => "embedding",
            LayerKind::Norm { .. } => "norm",
        }
    }
}

/// Training-side factors of one use: `x`, `b` with `N·t` rows (the `N` of the call), optional
/// u8 `mask [N, t]` (zero = skip the token).
#[derive(Debug, Clone, Copy)]
pub struct UseTrain<'a> {
    pub x: Tensor<'a>,
    pub b: Tensor<'a>,
    pub t: u64,
    pub mask: Option<Tensor<'a>>,
}

/// Query-side factors of one use: `x`, `b` with `q` rows grouped into segments (all uses of a
/// call must give the same number of segments `V`), optional u8 `mask [q]`.
#[derive(Debug, Clone, Copy)]
pub struct UseQuery<'a> {
    pub x: Tensor<'a>,
    pub b: Tensor<'a>,
    pub q: u64,
    pub segments: Segments<'a>,
    pub mask: Option<Tensor<'a>>,
}

/// The query side of a use in [`model_dot`](crate::Context::model_dot) (and the validation
/// side in [`model_ghg`](crate::Context::model_ghg)); the train × train calls ignore it.
#[derive(Debug, Clone, Copy)]
pub enum QuerySide<'a> {
    /// The use's query factors.
    Factors(UseQuery<'a>),
    /// The use contributes its training gradient only, nothing on the query side: for a
    /// non-norm use tied to uses that give query factors (an input embedding whose query is
    /// the LM head's, and `model_ghg`'s `(ẋ, b_val)` pass for uses without `ẋ`). A deliberate
    /// choice: an [`Absent`](Self::Absent) query side is an error in `model_dot`.
    TrainOnly,
    /// No query side: what [`model_gram`](crate::Context::model_gram) and
    /// [`model_sqnorm`](crate::Context::model_sqnorm) take; an error naming the use
    /// (`uses[3].query`) in `model_dot`, so a hook that failed to capture a use's query
    /// factors cannot go unnoticed.
    Absent,
}

impl<'a> QuerySide<'a> {
    /// The query factors, if the use has them.
    pub fn factors(&self) -> Option<&UseQuery<'a>> {
        match self {
            QuerySide::Factors(q) => Some(q),
            QuerySide::TrainOnly | QuerySide::Absent => None,
        }
    }
}

/// One use of a parameter. Uses with equal `param` are tied (one parameter).
#[derive(Debug, Clone, Copy)]
pub struct LayerUse<'a> {
    pub param: u32,
    pub kind: LayerKind,
    pub train: UseTrain<'a>,
    /// [`QuerySide::Factors`] for every use of a [`model_dot`](crate::Context::model_dot) call,
    /// except [`QuerySide::TrainOnly`] uses (see there); ignored by the train × train calls.
    pub query: QuerySide<'a>,
}

/// The two exact algorithms for an embedding × embedding term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EmbeddingForm {
    /// `Σ_t Σ_u [x_t = xq_u](b_t·bq_u)`: `2·d·N·T·Q` FLOPs.
    MaskedGram = 0,
    /// Sorted compact table per query segment, binary-search gather:
    /// `Q·d + sort + N·T·V·(2d + log₂ Q_v)`.
    ScatterGather = 1,
}

/// Forms requested for a model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelForms {
    /// For parameters with one Linear use.
    pub linear: FormRequest,
    /// For embedding × embedding terms; `None` = by cost.
    pub embedding: Option<EmbeddingForm>,
}

/// How one term of a model call was computed.
#[derive(Debug, Clone, PartialEq)]
pub struct TermChoice {
    pub param: u32,
    /// Indices (into the call's `uses`) of the two uses of the term (equal for a single use).
    pub uses: (usize, usize),
    pub method: String,
}

/// Checked dimensions of one use.
#[derive(Debug, Clone)]
pub(crate) struct UseDims {
    pub kind: LayerKind,
    pub dtype: DType,
    pub t: u64,
    pub query: Option<QueryDims>,
}

/// What a call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `[N, V]` against the query sides.
    Dot,
    /// `[N, N]` train × train.
    Pairwise,
    /// `[N]` diagonal.
    SelfNorm,
}

/// One term of the computation.
#[derive(Debug, Clone)]
pub(crate) enum Term {
    /// A Linear use's own term `<G^u_n, Gq^u_v>`: the ghost dot-product family, in `form`.
    Linear { u: usize, form: Form },
    /// `Σ_t Σ_u (r_t·r'_u)(c_t·c'_u [+1])` between use `i` (train) and `j` (query / train).
    Cross { i: usize, j: usize, bias: bool },
    /// Embedding × embedding by scatter/gather.
    Gather { i: usize, j: usize },
    /// A norm parameter: the listed uses' gradients summed, materialized, dotted.
    Norm { uses: Vec<usize>, d: u64, bias: bool },
}

/// A matrix use as `(r, c)` factors on the parameter's storage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatSides<'a> {
    pub r: Tensor<'a>,
    pub r_ids: bool,
    pub c: Tensor<'a>,
    /// Width of `r` (`vocab` for ids) and of `c`.
    pub dr: u64,
    pub dc: u64,
}

/// `(r, c)` of a use, oriented for cross terms: with `bias_group` (a Linear group of one layout
/// sharing a bias) `c = a` so the bias augments `c`; otherwise the storage orientation.
pub(crate) fn mat_sides<'a>(kind: &LayerKind, x: Tensor<'a>, b: Tensor<'a>, bias_group: bool) -> MatSides<'a> {
    match *kind {
        LayerKind::Linear { d_in, d_out, layout, .. } => {
            if bias_group || layout == WeightLayout::OutIn {
                MatSides { r: b, r_ids: false, c: x, dr: d_out, dc: d_in }
            } else {
                MatSides { r: x, r_ids: false, c: b, dr: d_in, dc: d_out }
            }
        }
        LayerKind::Embedding { vocab, d } => MatSides { r: x, r_ids: true, c: b, dr: vocab, dc: d },
        LayerKind::Norm { .. } => unreachable!("norm uses are not matrix uses"),
    }
}

/// Storage `[rows, cols]` of a matrix use's parameter.
fn storage(kind: &LayerKind) -> (u64, u64) {
    match *kind {
        LayerKind::Linear { d_in, d_out, layout: WeightLayout::OutIn, .. } => (d_out, d_in),
        LayerKind::Linear { d_in, d_out, layout: WeightLayout::InOut, .. } => (d_in, d_out),
        LayerKind::Embedding { vocab, d } => (vocab, d),
        LayerKind::Norm { d, .. } => (d, 1),
    }
}

fn bad(what: &'static str, reason: String) -> GhostError {
    GhostError::InvalidArgument { what, reason }
}

fn check_kind(k: &LayerKind, space: Space) -> Result<()> {
    let dims: &[(&'static str, u64)] = match k {
        LayerKind::Linear { d_in, d_out, .. } => &[("d_in", *d_in), ("d_out", *d_out)],
        LayerKind::Embedding { vocab, d } => &[("vocab", *vocab), ("d", *d)],
        LayerKind::Norm { d, .. } => &[("d", *d)],
    };
    for &(what, x) in dims {
        v::nonzero(what, x)?;
        v::fits_i32(what, x)?;
    }
    let _ = space;
    Ok(())
}

/// Host ids of the kept rows must lie in `[0, vocab)`; masked rows' ids are never read.
fn check_host_ids(what: impl Fn() -> String, x: &Tensor<'_>, mask: Option<&Tensor<'_>>, vocab: u64) -> Result<()> {
    let Tensor::Host(h) = x else { return Ok(()) };
    let Some(ids) = h.ids() else { return Ok(()) };
    let mask = crate::context::host_u8("mask", mask)?;
    if let Some((r, id)) = ids.first_out_of_range(mask, vocab) {
        return Err(GhostError::InvalidField { what: what(), reason: format!("id {id} at row {r} is outside [0, vocab = {vocab})") });
    }
    Ok(())
}

/// Validates one side's `x`, `b`, `mask` for `rows` rows; returns the float dtype. `names`:
/// the buffers' names in errors; `field`: the side as the caller spells it (`uses[3].train`),
/// for the errors that name a use.
#[allow(clippy::too_many_arguments)]
fn check_side(
    kind: &LayerKind,
    x: &Tensor<'_>,
    b: &Tensor<'_>,
    mask: Option<&Tensor<'_>>,
    rows: u64,
    space: Space,
    names: [&'static str; 3],
    field: &dyn Fn() -> String,
    op: &'static str,
) -> Result<DType> {
    const FLOATS: &[DType] = &[DType::F32, DType::BF16, DType::F16];
    let dtype = v::input(names[1], b, space, FLOATS, v::mul("rows*b width", rows, kind.b_width())?, op)?;
    if let Some(m) = mask {
        v::input(names[2], m, space, &[DType::U8], rows, op)?;
    }
    match kind {
        LayerKind::Embedding { vocab, .. } => {
            v::input(names[0], x, space, &[DType::I32, DType::I64], rows, op)?;
            check_host_ids(|| format!("{}.x", field()), x, mask, *vocab)?;
        }
        _ => {
            let dx = v::input(names[0], x, space, FLOATS, v::mul("rows*x width", rows, kind.x_width())?, op)?;
            v::same_dtype(names[0], dtype, dx)?;
        }
    }
    Ok(dtype)
}

impl Context {
    pub(crate) fn validate_uses(&self, op: &'static str, n: u64, uses: &[LayerUse<'_>], mode: Mode) -> Result<(Vec<UseDims>, u64)> {
        let space = self.space();
        v::nonzero("n", n)?;
        v::fits_i32("n", n)?;
        if uses.is_empty() {
            return Err(GhostError::ZeroSize { what: "uses" });
        }
        let mut dims = Vec::with_capacity(uses.len());
        let mut nseg: Option<u64> = None;
        for (ui, u) in uses.iter().enumerate() {
            check_kind(&u.kind, space)?;
            v::nonzero("t", u.train.t)?;
            let rows = v::mul("n*t", n, u.train.t)?;
            v::fits_i32("n*t", rows)?;
            let train_field = || format!("uses[{ui}].train");
            let dtype = check_side(&u.kind, &u.train.x, &u.train.b, u.train.mask.as_ref(), rows, space, ["x", "b", "mask"], &train_field, op)?;
            let mut ptrs = vec![("x", Some(&u.train.x)), ("b", Some(&u.train.b)), ("mask", u.train.mask.as_ref())];
            let query_field = || format!("uses[{ui}].query");
            let query = match (mode, &u.query) {
                (Mode::Dot, QuerySide::Absent) => {
                    return Err(GhostError::InvalidField {
                        what: query_field(),
                        reason: format!(
                            "use of param {} has no query side: model_dot needs every use's query factors \
                             (a non-norm use tied to uses that have them may add its training gradient only: QuerySide::TrainOnly)",
                            u.param
                        ),
                    });
                }
                (Mode::Dot, QuerySide::TrainOnly) => {
                    // Allowed only inside a tied group whose other uses give the query: the use
                    // then adds its training gradient and nothing on the query side.
                    let shared = uses.iter().any(|w| w.param == u.param && w.query.factors().is_some());
                    if !shared || matches!(u.kind, LayerKind::Norm { .. }) {
                        return Err(GhostError::InvalidField {
                            what: query_field(),
                            reason: format!(
                                "a train-only use needs a non-norm parameter tied to uses with query factors (param {}, {})",
                                u.param,
                                u.kind.name()
                            ),
                        });
                    }
                    None
                }
                (Mode::Dot, QuerySide::Factors(q)) => {
                    v::nonzero("q", q.q)?;
                    v::fits_i32("q", q.q)?;
                    let dq = check_side(&u.kind, &q.x, &q.b, q.mask.as_ref(), q.q, space, ["query x", "query b", "query mask"], &query_field, op)?;
                    v::same_dtype("query b", dtype, dq)?;
                    let qd = vo::segments(q.q, &q.segments, space, op)?;
                    if let Some(prev) = nseg {
                        if prev != qd.v {
                            return Err(bad("segments", format!("all uses need the same number of query segments V: {} vs {prev}", qd.v)));
                        }
                    }
                    nseg = Some(qd.v);
                    ptrs.extend([("query x", Some(&q.x)), ("query b", Some(&q.b)), ("query mask", q.mask.as_ref())]);
                    if let Segments::Offsets(t) = &q.segments {
                        ptrs.push(("segment offsets", Some(t)));
                    }
                    Some(qd)
                }
                _ => None,
            };
            self.check_device_ptrs(&ptrs)?;
            dims.push(UseDims { kind: u.kind, dtype, t: u.train.t, query });
        }
        // Tied groups.
        for (i, u) in uses.iter().enumerate() {
            let first = uses.iter().position(|w| w.param == u.param).expect("present");
            if first == i {
                continue;
            }
            let f = &uses[first];
            let what = |r: &str| bad("uses", format!("param {}: uses {first} ({}) and {i} ({}) {r}", u.param, f.kind.name(), u.kind.name()));
            let norm = |k: &LayerKind| matches!(k, LayerKind::Norm { .. });
            if norm(&f.kind) != norm(&u.kind) {
                return Err(what("cannot share a parameter: a norm parameter ties only with norm uses"));
            }
            if storage(&f.kind) != storage(&u.kind) {
                return Err(what(&format!("store the parameter as {:?} vs {:?}", storage(&f.kind), storage(&u.kind))));
            }
            if f.kind.has_bias() != u.kind.has_bias() {
                return Err(what("disagree on the bias"));
            }
            if let (LayerKind::Linear { layout: l1, has_bias: true, .. }, LayerKind::Linear { layout: l2, .. }) = (f.kind, u.kind) {
                if l1 != l2 {
                    return Err(what("share a bias but not a weight layout (the bias would have two shapes)"));
                }
            }
            if dims[first].dtype != dims[i].dtype {
                return Err(what(&format!("have dtypes {} and {}", dims[first].dtype, dims[i].dtype)));
            }
        }
        let nv = match mode {
            Mode::Dot => nseg.expect("at least one use"),
            Mode::Pairwise => n,
            Mode::SelfNorm => 1,
        };
        Ok((dims, nv))
    }

    /// Groups uses by parameter (first-appearance order) and chooses every term's algorithm.
    fn plan_terms(&self, n: u64, uses: &[LayerUse<'_>], dims: &[UseDims], mode: Mode, forms: ModelForms) -> Result<(Vec<Term>, Vec<TermChoice>)> {
        let mut terms = Vec::new();
        let mut report = Vec::new();
        let mut seen: Vec<u32> = Vec::new();
        for (i, u) in uses.iter().enumerate() {
            if seen.contains(&u.param) {
                continue;
            }
            seen.push(u.param);
            let group: Vec<usize> = (i..uses.len()).filter(|&j| uses[j].param == u.param).collect();
            match u.kind {
                LayerKind::Norm { d, has_bias } => {
                    terms.push(Term::Norm { uses: group.clone(), d, bias: has_bias });
                    report.push(TermChoice { param: u.param, uses: (i, i), method: format!("norm: materialize {} use(s), dot", group.len()) });
                }
                LayerKind::Linear { .. } if group.len() == 1 => {
                    let (form, why) = self.linear_choice(n, dims, i, mode, forms.linear);
                    terms.push(Term::Linear { u: i, form });
                    report.push(TermChoice { param: u.param, uses: (i, i), method: format!("linear {form}: {why}") });
                }
                _ => {
                    let bias = u.kind.has_bias();
                    for &a in &group {
                        for &b in &group {
                            if mode == Mode::Dot && uses[b].query.factors().is_none() {
                                continue; // a tied use without a query side adds nothing there
                            }
                            let both_ids = matches!(uses[a].kind, LayerKind::Embedding { .. })
                                && matches!(uses[b].kind, LayerKind::Embedding { .. });
                            if a == b && matches!(uses[a].kind, LayerKind::Linear { .. }) {
                                // A use's own term is a plain ghost dot-product: all its forms apply.
                                let (form, why) = self.linear_choice(n, dims, a, mode, forms.linear);
                                terms.push(Term::Linear { u: a, form });
                                report.push(TermChoice { param: u.param, uses: (a, a), method: format!("linear {form}: {why}") });
                            } else if both_ids {
                                let (form, why) = self.embedding_form(n, dims, a, b, mode, forms.embedding);
                                terms.push(match form {
                                    EmbeddingForm::MaskedGram => Term::Cross { i: a, j: b, bias: false },
                                    EmbeddingForm::ScatterGather => Term::Gather { i: a, j: b },
                                });
                                report.push(TermChoice { param: u.param, uses: (a, b), method: format!("embedding {form:?}: {why}") });
                            } else {
                                terms.push(Term::Cross { i: a, j: b, bias });
                                report.push(TermChoice {
                                    param: u.param,
                                    uses: (a, b),
                                    method: format!("{} × {}: cross Gram", uses[a].kind.name(), uses[b].kind.name()),
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok((terms, report))
    }

    /// The ghost dot-product form of a Linear use's own term, by the cost model.
    fn linear_choice(&self, n: u64, dims: &[UseDims], i: usize, mode: Mode, req: FormRequest) -> (Form, String) {
        let LayerKind::Linear { d_in, d_out, has_bias, .. } = dims[i].kind else { unreachable!("a linear use") };
        let (q, nv, t) = (self.term_query_rows(n, dims, i, mode), self.term_segments(n, dims, i, mode), dims[i].t);
        let size = GhostDotSize { n, t, q, v: nv, d_in, d_out, has_bias, elem_bytes: dims[i].dtype.size() };
        let mut choice = size.choose(req, &self.rates);
        if mode != Mode::Dot && choice.form == Form::DenseQuery {
            // The dense-query form needs a separate query; train×train uses the others.
            let best = choice
                .costs
                .iter()
                .filter(|c| c.form != Form::DenseQuery && (c.fits || c.form == Form::Gram))
                .min_by(|a, b| a.est_seconds.total_cmp(&b.est_seconds))
                .copied()
                .expect("gram always fits");
            choice.form = best.form;
            choice.reason = format!("{} (dense-query does not apply train×train)", best.form);
        }
        (choice.form, choice.reason)
    }

    /// Query rows a term of use `i` sees (`Q`, or the training rows in the train×train modes).
    fn term_query_rows(&self, n: u64, dims: &[UseDims], i: usize, mode: Mode) -> u64 {
        match mode {
            Mode::Dot => dims[i].query.as_ref().map_or(0, |q| q.q),
            Mode::Pairwise => n * dims[i].t,
            Mode::SelfNorm => dims[i].t,
        }
    }

    fn term_segments(&self, n: u64, dims: &[UseDims], i: usize, mode: Mode) -> u64 {
        match mode {
            Mode::Dot => dims[i].query.as_ref().map_or(1, |q| q.v),
            Mode::Pairwise => n,
            Mode::SelfNorm => 1,
        }
    }

    /// Cost model of the two embedding forms (operation counts; both read the same inputs).
    fn embedding_form(&self, n: u64, dims: &[UseDims], i: usize, j: usize, mode: Mode, req: Option<EmbeddingForm>) -> (EmbeddingForm, String) {
        if let Some(f) = req {
            return (f, "requested".into());
        }
        let d = dims[i].kind.b_width() as f64;
        let nt = (n * dims[i].t) as f64;
        let q = self.term_query_rows(n, dims, j, mode).max(1) as f64;
        let vseg = self.term_segments(n, dims, j, mode).max(1) as f64;
        let qv = (q / vseg).max(1.0);
        // Masked Gram: every (train token, query row) pair of a segment, a d-long dot each.
        let (pairs, segs_per_token) = match mode {
            Mode::SelfNorm => ((n * dims[i].t) as f64 * q, 1.0),
            _ => (nt * q, vseg),
        };
        let gram = 2.0 * d * pairs;
        // Scatter/gather: sort (GPU: a rank per row, O(Q·Q_v) comparisons from shared-memory tiles of
        // the segment's keys; CPU: O(Q log Q)), the table, one
        // binary search and one d-long dot per (train token, segment).
        let sort = match self.backend {
            Backend::Gpu(_) => q * qv,
            _ => q * (q.log2() + 1.0),
        };
        let gather = sort + q * d + nt * segs_per_token * (2.0 * d + (qv + 1.0).log2());
        if gram <= gather {
            (EmbeddingForm::MaskedGram, format!("masked Gram ~{gram:.3e} ops <= scatter/gather ~{gather:.3e}"))
        } else {
            (EmbeddingForm::ScatterGather, format!("scatter/gather ~{gather:.3e} ops < masked Gram ~{gram:.3e}"))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn model_call(
        &self,
        op: &'static str,
        n: u64,
        uses: &[LayerUse<'_>],
        out: &mut TensorMut<'_>,
        acc: Accumulate,
        forms: ModelForms,
        mode: Mode,
    ) -> Result<Vec<TermChoice>> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let (dims, nv) = self.validate_uses(op, n, uses, mode)?;
        let out_len = match mode {
            Mode::SelfNorm => n,
            _ => v::mul("n*V", n, nv)?,
        };
        v::output("out", out, self.space(), out_len, op)?;
        self.check_out_ptr("out", out)?;
        let (terms, report) = self.plan_terms(n, uses, &dims, mode, forms)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let out_ptr = out.device("out")?.ptr();
                gpu::run(rt.as_ref(), n, nv, uses, &dims, &terms, mode, out_ptr, acc)?;
            }
            Backend::CpuReference => {
                let o = out.host("out")?;
                let res = reference::model(n as usize, uses, mode, false)?;
                crate::cpu::apply_accumulate(o, &res, acc);
            }
            Backend::CpuFast => {
                let o = out.host("out")?;
                let res = fast::model(n as usize, uses, &dims, &terms, mode)?;
                crate::cpu::apply_accumulate(o, &res, acc);
            }
        }
        Ok(report)
    }

    /// Train × query inner products of whole-model per-sample gradients:
    /// `out[n, v] = beta·out + scale·Σ_params <G_n, Gq_v>`, `out` f32 `[N, V]` (see
    /// [`crate::layers`]). Every use needs query factors, except the explicitly train-only uses
    /// of a tied parameter ([`QuerySide::TrainOnly`]); an absent one is an error naming the use
    /// (`uses[3].query`). Returns how each term was computed.
    pub fn model_dot(&self, n: u64, uses: &[LayerUse<'_>], out: &mut TensorMut<'_>, acc: Accumulate, forms: ModelForms) -> Result<Vec<TermChoice>> {
        self.model_call("model_dot", n, uses, out, acc, forms, Mode::Dot)
    }

    /// Pairwise train × train Gram matrix of whole-model per-sample gradients:
    /// `K[n, m] = beta·K + scale·Σ_params <G_n, G_m>`, `out` f32 `[N, N]`.
    pub fn model_gram(&self, n: u64, uses: &[LayerUse<'_>], out: &mut TensorMut<'_>, acc: Accumulate, forms: ModelForms) -> Result<Vec<TermChoice>> {
        self.model_call("model_gram", n, uses, out, acc, forms, Mode::Pairwise)
    }

    /// Per-sample squared norms of whole-model gradients: `out[n] = beta·out + scale·‖G_n‖²`
    /// (all parameters, tied ones counted once with their cross terms), `out` f32 `[N]`.
    pub fn model_sqnorm(&self, n: u64, uses: &[LayerUse<'_>], out: &mut TensorMut<'_>, acc: Accumulate, forms: ModelForms) -> Result<Vec<TermChoice>> {
        self.model_call("model_sqnorm", n, uses, out, acc, forms, Mode::SelfNorm)
    }

    /// In-Run Data Shapley, first + second order (MATH.md §2), over a whole model of mixed layer
    /// kinds: `out[n] = beta·out + scale·(−η Σ_p <G^p_n, g_val^p> + (η²/2) Σ_p <G^p_n, (H_val v)^p>)`,
    /// `out` f32 `[N]`. Each use gives its validation factors `val` (one segment) and their
    /// derivatives along `v`: `b_dot` always, `x_dot` for uses whose input moves with the
    /// weights (`None` for embeddings — ids do not move — and for inputs of the first layer).
    /// A parameter's block of `H_val v` is `Σ_uses [Q(x_val, ḃ) + Q(ẋ, b_val)]`, the second
    /// without bias (the constant 1 has no derivative); tied uses are summed exactly as in
    /// [`model_dot`](Self::model_dot).
    ///
    /// Passes: every term of a model-level dot is linear in the query-side `b`, so the
    /// first-order query `(x_val, b_val)` (weight `−η`) and the `Q(x_val, ḃ)` half (weight
    /// `η²/2`) are ONE pass with the query `(x_val, comb)`, `comb = −η·b_val + (η²/2)·ḃ` (formed
    /// in f64 and rounded once to f32); then `(ẋ, b_val)` without bias, scaled by `η²/2`, over
    /// the uses with `x_dot` (and their tied query-less uses). Two model passes on the fast CPU
    /// path (summed in f64, `out` rounded once) and on a GPU (one workspace: `ghg_query_<dt>`
    /// forms `comb` — and `x_val` widened to f32 for bf16 / f16 factors — per use, then the two
    /// passes' plans with an all-f32 combined query; `out` rounded after each pass). The float64
    /// reference runs three independent `model_dot` passes (`out` rounded after each).
    ///
    /// Returns the terms of the passes in order: on the fast CPU path and a GPU, those of the
    /// combined pass (planned as for `(x_val, b_val)`; `(x_val, ḃ)` has the same sizes, so the
    /// same choices), then those of `(ẋ, b_val)` if any; the reference reports the three passes'
    /// terms (`(x_val, b_val)`, `(x_val, ḃ)`, `(ẋ, b_val)`), so its list is longer.
    ///
    /// In a tied parameter whose uses mix `x_dot: None` and `Some` (an embedding tied to an LM
    /// head), the `(ẋ, b_val)` pass takes the `None` uses' training gradients with no query of
    /// their own ([`QuerySide::TrainOnly`]).
    #[allow(clippy::too_many_arguments)]
    pub fn model_ghg(&self, n: u64, uses: &[GhgUse<'_>], eta: f32, out: &mut TensorMut<'_>, acc: Accumulate, forms: ModelForms) -> Result<Vec<TermChoice>> {
        const OP: &str = "model_ghg";
        v::finite("eta", eta)?;
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let (w0, w1) = (-eta, 0.5 * eta * eta);
        v::finite("eta²/2", w1)?;
        let first: Vec<LayerUse<'_>> =
            uses.iter().map(|u| LayerUse { param: u.param, kind: u.kind, train: u.train, query: QuerySide::Factors(u.val) }).collect();
        let second_b: Vec<LayerUse<'_>> = uses
            .iter()
            .map(|u| LayerUse { param: u.param, kind: u.kind, train: u.train, query: QuerySide::Factors(UseQuery { b: u.b_dot, ..u.val }) })
            .collect();
        let second_x: Vec<LayerUse<'_>> = uses
            .iter()
            .filter_map(|u| {
                // A use without ẋ takes part only through its training gradient, when a tied use
                // of the same parameter has ẋ (an embedding tied to the LM head).
                let tied_with_dot = uses.iter().any(|w| w.param == u.param && w.x_dot.is_some());
                if !tied_with_dot {
                    return None;
                }
                let kind = match u.kind {
                    LayerKind::Linear { d_in, d_out, layout, .. } => LayerKind::Linear { d_in, d_out, has_bias: false, layout },
                    LayerKind::Norm { d, .. } => LayerKind::Norm { d, has_bias: false },
                    k @ LayerKind::Embedding { .. } => k,
                };
                let query = match u.x_dot {
                    Some(x) => QuerySide::Factors(UseQuery { x, ..u.val }),
                    None => QuerySide::TrainOnly,
                };
                Some(LayerUse { param: u.param, kind, train: u.train, query })
            })
            .collect();
        // Everything is validated before anything runs: the (x_val, b_val) uses (the terms and
        // forms of the combined pass), the same with ḃ (checks b_dot) and the (ẋ, b_val) uses.
        let (dims, nv) = self.validate_uses(OP, n, &first, Mode::Dot)?;
        self.validate_uses(OP, n, &second_b, Mode::Dot)?;
        let third = if second_x.is_empty() { None } else { Some(self.validate_uses(OP, n, &second_x, Mode::Dot)?.0) };
        v::output("out", out, self.space(), v::mul("n*V", n, nv)?, OP)?;
        self.check_out_ptr("out", out)?;
        if matches!(self.backend, Backend::CpuReference) {
            // The independent check: three model_dot passes, `out` rounded after each.
            let mut choices = self.model_dot(n, &first, out, Accumulate { scale: acc.scale * w0, beta: acc.beta }, forms)?;
            choices.extend(self.model_dot(n, &second_b, out, Accumulate { scale: acc.scale * w1, beta: 1.0 }, forms)?);
            if !second_x.is_empty() {
                choices.extend(self.model_dot(n, &second_x, out, Accumulate { scale: acc.scale * w1, beta: 1.0 }, forms)?);
            }
            return Ok(choices);
        }
        // model_dot is linear in the query-side b (every term, tied cross terms and norm
        // gradients included), so (x_val, b_val)·w0 + (x_val, ḃ)·w1 is ONE pass with the query
        // (x_val, comb), comb = w0·b_val + w1·ḃ formed in f64 and rounded once to f32. Its terms
        // and forms are those planned for (x_val, b_val) (same sizes as (x_val, ḃ)).
        let (terms, mut report) = self.plan_terms(n, &first, &dims, Mode::Dot, forms)?;
        let third = match &third {
            Some(d3) => Some((d3, self.plan_terms(n, &second_x, d3, Mode::Dot, forms)?)),
            None => None,
        };
        match &self.backend {
            Backend::Gpu(rt) => {
                let out_ptr = out.device("out")?.ptr();
                let b_dot: Vec<Tensor<'_>> = uses.iter().map(|u| u.b_dot).collect();
                let t3 = third.as_ref().map(|(d3, (t3, _))| (&second_x[..], &d3[..], &t3[..]));
                gpu::run_ghg(rt.as_ref(), n, nv, &first, &dims, &terms, &b_dot, (w0, w1), t3, out_ptr, acc)?;
            }
            Backend::CpuFast => {
                let combs: Vec<Vec<f32>> = uses
                    .iter()
                    .map(|u| -> Result<Vec<f32>> {
                        let len = (u.val.q * u.kind.b_width()) as usize;
                        let (mut bv, mut bd) = (vec![0.0f32; len], vec![0.0f32; len]);
                        u.val.b.host("query b")?.copy_to_f32(0, &mut bv);
                        u.b_dot.host("b_dot")?.copy_to_f32(0, &mut bd);
                        Ok(bv.iter().zip(&bd).map(|(&b, &db)| (w0 as f64 * b as f64 + w1 as f64 * db as f64) as f32).collect())
                    })
                    .collect::<Result<_>>()?;
                // The query x keeps its dtype: the CPU code widens every row it reads to f32
                // (exactly), so a bf16 / f16 x beside the f32 comb is the f32 query of the GPU.
                let comb_uses: Vec<LayerUse<'_>> = first
                    .iter()
                    .zip(&combs)
                    .map(|(u, c)| {
                        let q = *u.query.factors().expect("validated");
                        LayerUse { query: QuerySide::Factors(UseQuery { b: Tensor::Host(HostSlice::F32(c)), ..q }), ..*u }
                    })
                    .collect();
                let mut total = fast::model(n as usize, &comb_uses, &dims, &terms, Mode::Dot)?;
                if let Some((d3, (t3, _))) = &third {
                    let r = fast::model(n as usize, &second_x, d3, t3, Mode::Dot)?;
                    total.iter_mut().zip(&r).for_each(|(t, x)| *t += w1 as f64 * x);
                }
                crate::cpu::apply_accumulate(out.host("out")?, &total, acc);
            }
            Backend::CpuReference => unreachable!("handled above"),
        }
        if let Some((_, (_, r3))) = third {
            report.extend(r3);
        }
        Ok(report)
    }
}

/// One use of [`model_ghg`](crate::Context::model_ghg): a [`LayerUse`] whose query is the
/// validation pass (`val`, one segment), plus the derivatives of the validation factors along
/// the batch gradient `v` (same shapes as `val.x`, `val.b`).
#[derive(Debug, Clone, Copy)]
pub struct GhgUse<'a> {
    pub param: u32,
    pub kind: LayerKind,
    pub train: UseTrain<'a>,
    pub val: UseQuery<'a>,
    /// `ẋ` (`None`: the input does not depend on the weights — embedding ids, the first layer).
    pub x_dot: Option<Tensor<'a>>,
    pub b_dot: Tensor<'a>,
}

/// Host row ranges of a use's query segments (`Mode::Dot`) or of its training samples.
pub(crate) fn host_ranges(dims: &UseDims, n: u64, mode: Mode) -> Vec<(usize, usize)> {
    match mode {
        Mode::Dot => dims.query.as_ref().expect("validated").ranges(),
        _ => (0..n as usize).map(|s| (s * dims.t as usize, (s + 1) * dims.t as usize)).collect(),
    }
}

/// The `LayerShape` of a Linear use, for the ghost dot-product family.
pub(crate) fn linear_shape(kind: &LayerKind) -> LayerShape {
    match *kind {
        LayerKind::Linear { d_in, d_out, has_bias, .. } => LayerShape::new(d_in, d_out).with_bias(has_bias),
        _ => unreachable!("not a linear use"),
    }
}

pub(crate) fn seg_kind_args(q: &QueryDims) -> (u64, u64) {
    match q.seg {
        SegKind::Single => (0, 0),
        SegKind::Uniform(len) => (0, len),
        SegKind::Device(p) => (p, 0),
        SegKind::Host(_) => unreachable!("host offsets never reach a GPU plan"),
    }
}
