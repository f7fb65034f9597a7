//! Model-level calls over `gg_layer_use` descriptors (every layer kind of a transformer,
//! `crate::layers`): `gg_model_dot`, `gg_model_gram`, `gg_model_sqnorm`, `gg_model_ghg`.

use super::*;

/// Kind of a [`gg_layer_use`] (see `ghostgrad::layers` for the factors of each kind).
pub type gg_layer_kind = u32;

/// `nn.Linear` / convolution (unfolded patches) / HF `Conv1D`: `x = a [rows, d_in]`,
/// `b [rows, d_out]`.
pub const GG_LAYER_LINEAR: gg_layer_kind = 0;

/// Embedding lookup in a `[vocab, d]` table: `x` = i32 ids `[rows]`, `b [rows, d]`.
pub const GG_LAYER_EMBEDDING: gg_layer_kind = 1;

/// LayerNorm / RMSNorm affine map: `x = x̂ [rows, d]` (normalized input), `b [rows, d]`.
pub const GG_LAYER_NORM: gg_layer_kind = 2;

/// Storage of a Linear weight: `[d_out, d_in]` (`nn.Linear`) or `[d_in, d_out]` (HF `Conv1D`).
/// Changes results only for a weight used in both orientations within one tied group.
pub type gg_weight_layout = u32;

pub const GG_WEIGHT_OUT_IN: gg_weight_layout = 0;

pub const GG_WEIGHT_IN_OUT: gg_weight_layout = 1;

/// Embedding × embedding algorithm: by cost (0), masked Gram (1) or scatter/gather (2).
pub type gg_embedding_form_request = u32;

pub const GG_EMBEDDING_FORM_AUTO: gg_embedding_form_request = 0;

pub const GG_EMBEDDING_FORM_MASKED_GRAM: gg_embedding_form_request = 1;

pub const GG_EMBEDDING_FORM_SCATTER_GATHER: gg_embedding_form_request = 2;

/// Training factors of one use: `x`, `b` with `n·t` rows (the `n` of the call), optional u8
/// `mask [n, t]`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_use_train {
    pub x: gg_tensor,
    pub b: gg_tensor,
    pub t: u64,
    pub mask: gg_tensor,
}

/// Query factors of one use: `x`, `b` with `q` rows in segments, optional u8 `mask [q]`.
/// Absent (for the train × train calls) when `x` and `b` are both absent.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_use_query {
    pub x: gg_tensor,
    pub b: gg_tensor,
    pub q: u64,
    pub segments: gg_segments,
    pub mask: gg_tensor,
}

/// One use of a parameter; uses with equal `param` are tied (one shared parameter, cross terms
/// included). Dimensions by kind: LINEAR reads `d_in`, `d_out`, `has_bias`, `layout`;
/// EMBEDDING reads `vocab`, `d`; NORM reads `d`, `has_bias`. Other fields are ignored.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_layer_use {
    pub param: u32,
    pub kind: gg_layer_kind,
    pub d_in: u64,
    pub d_out: u64,
    pub vocab: u64,
    pub d: u64,
    pub has_bias: u32,
    pub layout: gg_weight_layout,
    pub train: gg_use_train,
    pub query: gg_use_query,
    /// Nonzero: the use contributes its training gradient only, with no query side of its own
    /// (`query` absent), in `gg_model_dot` for a non-norm use tied to uses that have query
    /// factors. Zero with an absent `query` is an error in `gg_model_dot` naming the use.
    pub train_only: u32,
}

/// The algorithm of one term of a model-level call (see [`gg_term_choice`]).
pub type gg_term_algorithm = u32;
/// A Linear use's own term by a ghost dot-product form (`gg_term_choice.linear_form`).
pub const GG_TERM_LINEAR: gg_term_algorithm = 0;
/// Embedding × embedding by the masked Gram `Σ_t Σ_u [x_t = xq_u](b_t·bq_u)`.
pub const GG_TERM_EMBEDDING_MASKED_GRAM: gg_term_algorithm = 1;
/// Embedding × embedding by scatter/gather (sorted compact query table, binary-search gather).
pub const GG_TERM_EMBEDDING_SCATTER_GATHER: gg_term_algorithm = 2;
/// Two tied uses of different kinds or orientations (an embedding and its LM head) by their
/// cross Gram.
pub const GG_TERM_CROSS_GRAM: gg_term_algorithm = 3;
/// A norm parameter: per-sample gradients materialized (`d` long), then dotted.
pub const GG_TERM_NORM_MATERIALIZE: gg_term_algorithm = 4;

/// How one term of a model-level call was computed: the parameter, the two uses of the term
/// (indices into `uses`, equal for a use's own term) and the algorithm (a
/// `gg_term_algorithm`); `linear_form` is the `gg_form` of a `GG_TERM_LINEAR` term (0
/// otherwise). The same terms, with the cost model's reasons in words, are the lines of
/// [`gg_last_form_reason`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct gg_term_choice {
    pub param: u32,
    pub algorithm: gg_term_algorithm,
    pub linear_form: gg_form,
    pub use_a: u64,
    pub use_b: u64,
}

impl From<&crate::layers::TermChoice> for gg_term_choice {
    fn from(c: &crate::layers::TermChoice) -> Self {
        use crate::layers::{EmbeddingForm, TermAlgorithm};
        let (algorithm, linear_form) = match c.algorithm {
            TermAlgorithm::Linear(form) => (GG_TERM_LINEAR, form as u32),
            TermAlgorithm::Embedding(EmbeddingForm::MaskedGram) => (GG_TERM_EMBEDDING_MASKED_GRAM, 0),
            TermAlgorithm::Embedding(EmbeddingForm::ScatterGather) => (GG_TERM_EMBEDDING_SCATTER_GATHER, 0),
            TermAlgorithm::CrossGram => (GG_TERM_CROSS_GRAM, 0),
            TermAlgorithm::NormMaterialize => (GG_TERM_NORM_MATERIALIZE, 0),
        };
        gg_term_choice { param: c.param, algorithm, linear_form, use_a: c.uses.0 as u64, use_b: c.uses.1 as u64 }
    }
}

/// The caller's out-parameters for the terms of a model-level call: `cap` entries at `ptr`
/// (NULL with `cap == 0` for none) and the number of terms at `count` (NULL: not wanted).
#[derive(Debug, Clone, Copy)]
pub(super) struct TermChoicesOut {
    pub(super) ptr: *mut gg_term_choice,
    pub(super) cap: usize,
    pub(super) count: *mut usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum ModelCall {
    Dot,
    Gram,
    SqNorm,
    /// In-Run first + second order: the uses' queries are the validation factors; `x_dot` and
    /// `b_dot` point at `n_uses` descriptors each (an absent `x_dot[i]`: no input derivative).
    Ghg { eta: f32, x_dot: *const gg_tensor, b_dot: *const gg_tensor },
}

/// # Safety
/// As [`gg_model_dot`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn model_call(
    which: ModelCall,
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
    choices: TermChoicesOut,
) -> gg_status {
    guard(|| {
        use crate::layers::{EmbeddingForm, ModelForms};
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        if uses.is_null() {
            return Err(Failure::null("uses"));
        }
        if (uses as usize) % std::mem::align_of::<gg_layer_use>() != 0 {
            return Err(Failure::new(GG_STATUS_MISALIGNED, "`uses` is misaligned for gg_layer_use"));
        }
        if n_uses == 0 {
            return Err(GhostError::ZeroSize { what: "n_uses" }.into());
        }
        let forms = ModelForms {
            linear: form_request_from_code("linear_form", linear_form)?,
            embedding: match embedding_form {
                GG_EMBEDDING_FORM_AUTO => None,
                GG_EMBEDDING_FORM_MASKED_GRAM => Some(EmbeddingForm::MaskedGram),
                GG_EMBEDDING_FORM_SCATTER_GATHER => Some(EmbeddingForm::ScatterGather),
                other => {
                    return Err(Failure::invalid(
                        "embedding_form",
                        format!("{other} is not a gg_embedding_form_request (AUTO=0, MASKED_GRAM=1, SCATTER_GATHER=2)"),
                    ))
                }
            },
        };
        // SAFETY: non-null, aligned, n_uses readable descriptors (caller's contract); copied
        // out at once.
        let descs: Vec<gg_layer_use> = unsafe { std::slice::from_raw_parts(uses, n_uses) }.to_vec();
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_uses);
        for (i, u) in descs.iter().enumerate() {
            bufs.prefix = format!("uses[{i}].");
            let parsed = bufs.layer_use(u).map_err(|f| if f.message.contains("uses[") { f } else { f.context(&format!("uses[{i}]")) })?;
            raw.push(parsed);
        }
        bufs.prefix.clear();
        let mut dots = Vec::new();
        if let ModelCall::Ghg { x_dot, b_dot, .. } = which {
            // SAFETY: forwarded from this function's contract (n_uses descriptors each).
            let (xd, bd) = unsafe { (read_array(x_dot, n_uses, "x_dot", "n_uses")?, read_array(b_dot, n_uses, "b_dot", "n_uses")?) };
            for (i, (x, b)) in xd.iter().zip(&bd).enumerate() {
                let x = bufs.optional_input(&format!("x_dot[{i}]"), x)?;
                let b = bufs.input(&format!("b_dot[{i}]"), b)?;
                dots.push((x, b));
            }
        }
        let raw_out = bufs.output("out", &out)?;
        if choices.ptr.is_null() && choices.cap > 0 {
            return Err(Failure::new(GG_STATUS_NULL_POINTER, "`choices_out` is a null pointer with a nonzero capacity"));
        }
        let choices_out = bufs.out_array("choices_out", choices.ptr, choices.cap, true)?;
        let count_out = bufs.out_array("choices_count_out", choices.count, 1, true)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let views: Vec<crate::layers::LayerUse<'_>> = raw.iter().map(|r| unsafe { r.view(space) }).collect();
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        let acc = Accumulate { scale, beta };
        let report = match which {
            ModelCall::Dot => ctx.model_dot(n, &views, &mut out, acc, forms)?,
            ModelCall::Gram => ctx.model_gram(n, &views, &mut out, acc, forms)?,
            ModelCall::SqNorm => ctx.model_sqnorm(n, &views, &mut out, acc, forms)?,
            ModelCall::Ghg { eta, .. } => {
                let mut gu = Vec::with_capacity(views.len());
                for (i, (u, (x, b))) in views.iter().zip(&dots).enumerate() {
                    let val = *u.query.factors().ok_or_else(|| Failure::null("query (the validation factors)").context(&format!("uses[{i}]")))?;
                    // SAFETY: checked buffers, valid for the call by this function's contract.
                    let (x_dot, b_dot) = unsafe { (x.map(|x| x.view(space)), b.view(space)) };
                    gu.push(crate::layers::GhgUse { param: u.param, kind: u.kind, train: u.train, val, x_dot, b_dot });
                }
                ctx.model_ghg(n, &gu, eta, &mut out, acc, forms)?
            }
        };
        let lines: Vec<String> = report
            .iter()
            .map(|c| format!("param {} uses[{}]×uses[{}]: {}", c.param, c.uses.0, c.uses.1, c.method))
            .collect();
        set_form_reason(&lines.join("\n"));
        // SAFETY: both arrays were checked before the call ran (caller's contract for the rest).
        unsafe {
            if let Some(dst) = choices_out {
                dst.fill(report.iter().map(gg_term_choice::from));
            }
            if let Some(count) = count_out {
                count.fill([report.len()]);
            }
        }
        Ok(())
    })
}

/// Train × query inner products of whole-model per-sample gradients (every parameter of
/// `uses`, tied ones with their cross terms): `out[n, v] = beta·out + scale·Σ_params <G_n,
/// Gq_v>`, `out` f32 `[n, V]`. Every use needs a query side (same `V` for all). Errors name the
/// use and field as spelled here (`uses[3].query.b`).
///
/// How each term was computed, as data: `choices_out` receives the first `choices_cap` terms
/// (`gg_term_choice`, in the order of the lines of [`gg_last_form_reason`], which give the
/// reasons in words) and `*choices_count_out` the number of terms, snprintf-style (a smaller
/// capacity truncates; call with a capacity of at least `n_uses²`, or three times that for
/// `gg_model_ghg`, to get them all). `choices_out` may be NULL with `choices_cap == 0`,
/// `choices_count_out` may be NULL. Both are checked (alignment, no overlap with another buffer)
/// before anything runs.
///
/// # Safety
/// `ctx` is NULL or a live context; `uses` is NULL (an error) or points at `n_uses` readable
/// `gg_layer_use` whose buffers follow the [`gg_tensor`] / [`gg_tensor_mut`] contract for the
/// duration of the call; `choices_out` is NULL or points at `choices_cap` writable
/// `gg_term_choice`; `choices_count_out` is NULL or points at a writable `size_t`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_dot(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
    choices_out: *mut gg_term_choice,
    choices_cap: usize,
    choices_count_out: *mut usize,
) -> gg_status {
    let choices = TermChoicesOut { ptr: choices_out, cap: choices_cap, count: choices_count_out };
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Dot, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form, choices) }
}

/// Train × train Gram matrix of whole-model per-sample gradients, `out` f32 `[n, n]`
/// (query sides are ignored). `linear_form`: AUTO, GRAM or MATERIALIZE.
///
/// # Safety
/// As [`gg_model_dot`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_gram(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
    choices_out: *mut gg_term_choice,
    choices_cap: usize,
    choices_count_out: *mut usize,
) -> gg_status {
    let choices = TermChoicesOut { ptr: choices_out, cap: choices_cap, count: choices_count_out };
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Gram, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form, choices) }
}

/// Per-sample squared norms of whole-model gradients, `out` f32 `[n]` (query sides ignored).
///
/// # Safety
/// As [`gg_model_dot`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_sqnorm(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
    choices_out: *mut gg_term_choice,
    choices_cap: usize,
    choices_count_out: *mut usize,
) -> gg_status {
    let choices = TermChoicesOut { ptr: choices_out, cap: choices_cap, count: choices_count_out };
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::SqNorm, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form, choices) }
}

/// In-Run Data Shapley, first + second order, over a whole model of mixed layer kinds
/// (`Context::model_ghg`): `out[n] = beta·out + scale·(−eta·Σ_p <G^p_n, g_val^p> +
/// (eta²/2)·Σ_p <G^p_n, (H_val v)^p>)`, `out` f32 `[n]`. Each `uses[i].query` holds the
/// validation factors (one segment); `b_dot[i]` the derivative of its `b` along the batch
/// gradient `v`, `x_dot[i]` that of its `x` (absent — NULL pointer, length 0 — for embeddings
/// and inputs that do not depend on the weights). Tied parameters are exact, an embedding tied
/// to an LM head included.
///
/// # Safety
/// As [`gg_model_dot`]; `x_dot` and `b_dot` point at `n_uses` readable `gg_tensor` each, whose
/// buffers follow the [`gg_tensor`] contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_ghg(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    x_dot: *const gg_tensor,
    b_dot: *const gg_tensor,
    n_uses: usize,
    eta: f32,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
    choices_out: *mut gg_term_choice,
    choices_cap: usize,
    choices_count_out: *mut usize,
) -> gg_status {
    let choices = TermChoicesOut { ptr: choices_out, cap: choices_cap, count: choices_count_out };
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Ghg { eta, x_dot, b_dot }, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form, choices) }
}
