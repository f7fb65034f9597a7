//! Ghost dot-products of single layers and lists of layers (MATH.md §1, `crate::ghost_dot`):
//! `gg_ghost_dot`, `gg_ghost_dot_layers`, `gg_ghost_dot_dense`, `gg_factored_grad`,
//! `gg_ghost_gram`, `gg_ghost_sqnorm`, `gg_choose_form`.

use super::*;

/// Stores the reasons of one call for [`gg_last_form_reason`] and fills the optional
/// out-array of choices (checked before the call ran, one entry per choice).
///
/// # Safety
/// As [`OutArray::fill`] for `out`.
pub(super) unsafe fn publish_choices(choices: &[FormChoice], out: Option<OutArray<gg_form_choice>>) {
    let reason = if choices.len() == 1 {
        choices[0].reason.clone()
    } else {
        choices.iter().enumerate().map(|(i, c)| format!("layers[{i}]: {}", c.reason)).collect::<Vec<_>>().join("\n")
    };
    set_form_reason(&reason);
    if let Some(out) = out {
        // SAFETY: forwarded from this function's contract.
        unsafe { out.fill(choices.iter().map(gg_form_choice::from)) };
    }
}

/// Ghost dot-products of one layer (MATH.md §1):
/// `out[n, v] = beta·out[n, v] + scale·<G_n, Gq_v>`, `out` f32 `[N, V]`, with
/// `G_n = Σ_t b_{n,t} a_{n,t}ᵀ` and `Gq_v = Σ_{u∈v} bq_u aq_uᵀ`. `form` is a `gg_form_request`.
/// `choice_out` (may be NULL) receives the form used and its costs; the reason in words is
/// [`gg_last_form_reason`].
///
/// # Safety
/// `ctx` is NULL or a live handle. `train` and `query` are NULL (an error) or readable
/// descriptors. Every buffer they describe is NULL or holds `len` elements of its dtype in the
/// context's memory space, readable during the call (until the stream passes the operation on a
/// GPU). `out` holds `out.len` writable f32 that nothing else reads or writes meanwhile.
/// `choice_out` is NULL or points at a writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    query: *const gg_query,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, query) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(query, "query")?) };
        let form = form_request_from_code("form", form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_query = bufs.query(&query)?;
        let raw_out = bufs.output("out", &out)?;
        let choice_out = bufs.out_array("choice_out", choice_out, 1, true)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: buffers checked (non-null, aligned, sized, no output aliasing) and valid for
        // the call by this function's contract.
        let (train, query, mut out) = unsafe { (raw_train.view(space), raw_query.view(space), raw_out.view_mut(space)) };
        set_form_reason("");
        let choice = ctx.ghost_dot(&layer_shape(&shape), &train, &query, &mut out, Accumulate { scale, beta }, form)?;
        // SAFETY: forwarded from this function's contract (choice_out checked above).
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) };
        Ok(())
    })
}

/// Ghost dot-products summed over `n_layers` layers (same `N` and `V`; any shapes and dtypes):
/// `out[n, v] = beta·out[n, v] + scale·Σ_l <G^l_n, Gq^l_v>`, `out` f32 `[N, V]`.
/// `choices_out` (may be NULL) receives one `gg_form_choice` per layer; the reasons are the
/// lines of [`gg_last_form_reason`]. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_ghost_dot`], for every layer; `layers` is NULL (an error) or points at `n_layers`
/// readable `gg_layer`; `choices_out` is NULL or points at `n_layers` writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot_layers(
    ctx: *const gg_context,
    layers: *const gg_layer,
    n_layers: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    choices_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: forwarded from this function's contract.
        let descs = unsafe { read_array(layers, n_layers, "layers", "n_layers")? };
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            let form = form_request_from_code(&bufs.name("form"), l.form)?;
            raw.push((bufs.train(&l.train)?, bufs.query(&l.query)?, form));
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        let choices_out = bufs.out_array("choices_out", choices_out, n_layers, true)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        let gl: Vec<GhostDotLayer<'_>> = descs
            .iter()
            .zip(&raw)
            // SAFETY: checked buffers, valid for the call by this function's contract.
            .map(|(l, (rt, rq, form))| unsafe { GhostDotLayer { shape: layer_shape(&l.shape), train: rt.view(space), query: rq.view(space), form: *form } })
            .collect();
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        // Every layer is validated (errors name it: `layers[2].query.aq`) before anything runs.
        let choices = ctx.ghost_dot_layers(&gl, &mut out, Accumulate { scale, beta })?;
        // SAFETY: forwarded from this function's contract (choices_out checked above).
        unsafe { publish_choices(&choices, choices_out) };
        Ok(())
    })
}

/// Dense-query ghost dot-product with a caller-given `m` (f32 `[d_out, d_in]`) and, iff the
/// layer has a bias, `m_bias` (f32 `[d_out]`; otherwise absent):
/// `out[n] = beta·out[n] + scale·Σ_t (b_{n,t}ᵀ M a_{n,t} + b_{n,t}·m_bias)`, `out` f32 `[N]`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `m`, `m_bias` and `out`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot_dense(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    m: gg_tensor,
    m_bias: gg_tensor,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?) };
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_m = bufs.input("m", &m)?;
        let raw_mb = bufs.optional_input("m_bias", &m_bias)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (train, m, mb, mut out) = unsafe {
            (raw_train.view(space), raw_m.view(space), raw_mb.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        Ok(ctx.ghost_dot_dense(&layer_shape(&shape), &train, &m, mb.as_ref(), &mut out, Accumulate { scale, beta })?)
    })
}

/// Factored weight gradient of every query sample:
/// `out[v] = beta·out[v] + scale·Σ_{u∈v} w_u bq_u aq_uᵀ`, `out` f32 `[V, d_out, d_in]`; iff the
/// layer has a bias, `out_bias` f32 `[V, d_out]` receives `Σ_{u∈v} w_u bq_u` (otherwise absent).
/// `row_weights` f32 `[q]` is optional (1 when absent).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `query`, `row_weights`, `out` and `out_bias`.
#[no_mangle]
pub unsafe extern "C" fn gg_factored_grad(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    query: *const gg_query,
    row_weights: gg_tensor,
    out: gg_tensor_mut,
    out_bias: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, query) = unsafe { (context_ref(ctx)?, read_desc(query, "query")?) };
        let mut bufs = Buffers::new(ctx);
        let raw_query = bufs.query(&query)?;
        let raw_w = bufs.optional_input("row_weights", &row_weights)?;
        let raw_out = bufs.output("out", &out)?;
        let raw_ob = bufs.optional_output("out_bias", &out_bias)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (query, w, mut out, mut ob) = unsafe {
            (
                raw_query.view(space),
                raw_w.map(|b| b.view(space)),
                raw_out.view_mut(space),
                raw_ob.map(|b| b.view_mut(space)),
            )
        };
        Ok(ctx.factored_grad(&layer_shape(&shape), &query, w.as_ref(), &mut out, ob.as_mut(), Accumulate { scale, beta })?)
    })
}

/// Which entry point of the train-only family.
#[derive(Clone, Copy)]
pub(super) enum TrainOnly {
    Gram,
    SqNorm,
}

/// # Safety
/// As [`gg_ghost_gram`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn train_only(
    op: TrainOnly,
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?) };
        let form = form_request_from_code("form", form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_out = bufs.output("out", &out)?;
        let choice_out = bufs.out_array("choice_out", choice_out, 1, true)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (train, mut out) = unsafe { (raw_train.view(space), raw_out.view_mut(space)) };
        let (shape, acc) = (layer_shape(&shape), Accumulate { scale, beta });
        set_form_reason("");
        let choice = match op {
            TrainOnly::Gram => ctx.ghost_gram(&shape, &train, &mut out, acc, form)?,
            TrainOnly::SqNorm => ctx.ghost_sqnorm(&shape, &train, &mut out, acc, form)?,
        };
        // SAFETY: forwarded from this function's contract (choice_out checked above).
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) };
        Ok(())
    })
}

/// Pairwise train×train Gram matrix `K[n, m] = beta·K[n, m] + scale·<G_n, G_m>`, `out` f32
/// `[N, N]`. `form`: AUTO, GRAM or MATERIALIZE (dense-query does not apply).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `out` and `choice_out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghost_gram(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { train_only(TrainOnly::Gram, ctx, shape, train, out, scale, beta, form, choice_out) }
}

/// Per-sample squared gradient norms `out[n] = beta·out[n] + scale·‖G_n‖²`, `out` f32 `[N]`
/// (the diagonal of [`gg_ghost_gram`]; ghost clipping in DP-SGD).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `out` and `choice_out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghost_sqnorm(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { train_only(TrainOnly::SqNorm, ctx, shape, train, out, scale, beta, form, choice_out) }
}

/// Which form [`gg_ghost_dot`] would use for these arguments, and why; validates everything but
/// runs nothing. `choice_out` is required; the reason is [`gg_last_form_reason`].
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train` and `query` (the buffers are not read);
/// `choice_out` is NULL (an error) or points at a writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_choose_form(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    query: *const gg_query,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, query) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(query, "query")?) };
        let form = form_request_from_code("form", form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_query = bufs.query(&query)?;
        let choice_out = bufs.out_array("choice_out", choice_out, 1, false)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call (contract); nothing is written.
        let (train, query) = unsafe { (raw_train.view(space), raw_query.view(space)) };
        set_form_reason("");
        let choice = ctx.choose_form(&layer_shape(&shape), &train, &query, form)?;
        // SAFETY: forwarded from this function's contract (choice_out checked above).
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) };
        Ok(())
    })
}
