//! In-Run Data Shapley of a list of linear layers (MATH.md §2, `crate::inrun`): `gg_ghg` and
//! the float64 value accumulator `gg_accumulate_values`.

use super::*;

/// One model layer of [`gg_ghg`] (MATH.md §2): the training factors, the validation activations
/// `a_val [t_v, d_in]` and output gradients `b_val [t_v, d_out]`, their directional derivatives
/// `a_dot [t_v, d_in]`, `b_dot [t_v, d_out]` along the batch gradient (all of the training
/// dtype), and an optional `val_mask` u8 `[t_v]` (zero = that validation token does not exist).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_ghg_layer {
    pub shape: gg_layer_shape,
    pub train: gg_train,
    pub a_val: gg_tensor,
    pub b_val: gg_tensor,
    pub a_dot: gg_tensor,
    pub b_dot: gg_tensor,
    pub t_v: u64,
    pub val_mask: gg_tensor,
}

/// Fused first + second order In-Run Data Shapley value of every training sample of one SGD
/// step (MATH.md §2), summed over `n_layers` layers (same `N`):
/// `out[n] = beta·out[n] + scale·(−eta·Σ_l <G^l_n, g_val^l> + (eta²/2)·Σ_l <G^l_n, (H_val v)^l>)`,
/// `out` f32 `[N]`. Three ghost-dot pseudo-layers per layer, each with its own form (`form`, a
/// `gg_form_request`, applies to all). `choices_out` (may be NULL) receives `3·n_layers`
/// `gg_form_choice`, ordered `[(a_val, b_val) of every layer | (a_val, b_dot), (a_dot, b_val)
/// of layer 0, of layer 1, …]`; the reasons are the lines of [`gg_last_form_reason`], in that
/// order. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, every buffer of every layer, `out` and `choices_out` (which,
/// if not NULL, points at `3·n_layers` writable `gg_form_choice`); `layers` is NULL (an error) or
/// points at `n_layers` readable `gg_ghg_layer`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghg(
    ctx: *const gg_context,
    layers: *const gg_ghg_layer,
    n_layers: usize,
    eta: f32,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choices_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        let form = form_request_from_code("form", form)?;
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            raw.push(bufs.ghg_layer(l)?);
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        let choices_out = bufs.out_array("choices_out", choices_out, 3 * n_layers, true)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let gl: Vec<GhgLayer<'_>> = raw.iter().map(|r| unsafe { r.view(space) }).collect();
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        // Every layer is validated (errors name the field: `layers[1].a_dot`) before anything runs.
        let choices = ctx.ghg(&gl, eta, &mut out, Accumulate { scale, beta }, form)?;
        let labels = (0..n_layers)
            .map(|l| format!("layers[{l}] (a_val, b_val)"))
            .chain((0..n_layers).flat_map(|l| [format!("layers[{l}] (a_val, b_dot)"), format!("layers[{l}] (a_dot, b_val)")]));
        let reason = labels.zip(&choices).map(|(label, c)| format!("{label}: {}", c.reason)).collect::<Vec<_>>().join("\n");
        set_form_reason(&reason);
        if let Some(dst) = choices_out {
            // SAFETY: checked before the call ran; 3·n_layers entries (contract).
            unsafe { dst.fill(choices.iter().map(gg_form_choice::from)) };
        }
        Ok(())
    })
}

/// Float64 value accumulation: `phi[ids[k]] += values[k]` for `k = 0..N`, in `k` order (ids may
/// repeat; the result is the sequential float64 sum, bit for bit on every backend). `values` f32
/// `[N]`, `ids` i32 `[N]` (`N = values.len`), `phi` f64 `[num_ids]` (`num_ids = phi.len ≥ 1`).
/// Ids outside `[0, num_ids)`: `GG_STATUS_INVALID_ARGUMENT` on a CPU context (nothing written);
/// a GPU context cannot read them without synchronizing, so its kernel skips them.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `values`, `ids`; `phi` holds `phi.len` writable f64 in the
/// context's memory space that nothing else reads or writes meanwhile.
#[no_mangle]
pub unsafe extern "C" fn gg_accumulate_values(
    ctx: *const gg_context,
    values: gg_tensor,
    ids: gg_tensor,
    phi: gg_tensor_f64_mut,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let mut bufs = Buffers::new(ctx);
        let raw_values = bufs.input("values", &values)?;
        let raw_ids = bufs.input("ids", &ids)?;
        let raw_phi = bufs.output_f64("phi", &phi)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (values, ids, mut phi) = unsafe { (raw_values.view(space), raw_ids.view(space), raw_phi.view_mut_f64(space)) };
        Ok(ctx.accumulate_values(&values, &ids, &mut phi)?)
    })
}
