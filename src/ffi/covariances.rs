//! Second moments of projected gradients for the preconditioners: `gg_projected_fisher`,
//! `gg_kfac_covariances` (linear, embedding, whole model), `gg_ekfac_eigen_correction`.

use super::*;

/// K-FAC factors of every matrix parameter of a model (Rust `Context::kfac_covariances_model`),
/// in the storage layout of [`gg_kron_project_model`], token statistics of tied uses summed:
/// `c_rows[p] = beta·c_rows[p] + scale·Σ (P_rows r_t)(P_rows r_t)ᵀ` (f32 `[k_o, k_o]`),
/// `c_cols[p] = beta·c_cols[p] + scale·Σ (P_cols c_t)(P_cols c_t)ᵀ` (f32 `[k_i, k_i]`), `p` in
/// `params` order (`nn.Linear`: `r = b`, `c = [a; 1]`; Conv1D: `r = [a; 1]`, `c = b`; embedding:
/// `r = e_id`, `c = b`). Fit with [`gg_kfac_from_covariances`] (`c_a = c_cols`, `c_b = c_rows`).
/// Norm parameters: `GG_STATUS_INVALID_ARGUMENT` (use [`gg_projected_fisher`] on their columns).
///
/// # Safety
/// As [`gg_kron_project_model`] for `ctx`, `uses` and `params`; `c_rows` and `c_cols` point at
/// `n_params` readable `gg_tensor_mut` each, whose buffers follow the [`gg_tensor_mut`] contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances_model(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    params: *const gg_param_projection,
    n_params: usize,
    c_rows: *const gg_tensor_mut,
    c_cols: *const gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs, pdescs, crd, ccd) = unsafe {
            (
                context_ref(ctx)?,
                read_array(uses, n_uses, "uses", "n_uses")?,
                read_array(params, n_params, "params", "n_params")?,
                read_array(c_rows, n_params, "c_rows", "n_params")?,
                read_array(c_cols, n_params, "c_cols", "n_params")?,
            )
        };
        let mut bufs = Buffers::new(ctx);
        let (raw, rawp) = bufs.model_params(&descs, &pdescs)?;
        let mut outs = Vec::with_capacity(2 * n_params);
        for (i, t) in crd.iter().enumerate() {
            outs.push(bufs.output(&format!("c_rows[{i}]"), t)?);
        }
        for (i, t) in ccd.iter().enumerate() {
            outs.push(bufs.output(&format!("c_cols[{i}]"), t)?);
        }
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let (views, specs) = unsafe { model_param_views(&raw, &rawp, space) };
        // SAFETY: checked outputs, no aliasing (check_overlaps), exclusive by the contract.
        let mut mats: Vec<TensorMut<'_>> = outs.iter().map(|o| unsafe { o.view_mut(space) }).collect();
        let (cr, cc) = mats.split_at_mut(n_params);
        Ok(ctx.kfac_covariances_model(n, &views, &specs, cr, cc, Accumulate { scale, beta })?)
    })
}

/// The body of [`gg_kfac_covariances`] and [`gg_kfac_covariances_embedding`]: one layer's
/// K-FAC factors into `c_a` and `c_b`.
///
/// # Safety
/// As [`gg_kfac_covariances`] (or [`gg_kfac_covariances_embedding`] for token-id factors).
pub(super) unsafe fn kfac_covariances_one<D: LayerTrainDesc>(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const D,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    acc: Accumulate,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let LayerCall { ctx, mut bufs, train, proj } = unsafe { LayerCall::parse(ctx, train, proj)? };
        let (raw_a, raw_b) = (bufs.output("c_a", &c_a)?, bufs.output("c_b", &c_b)?);
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (layer, mut ca, mut cb) =
            unsafe { (D::layer(train, space, layer_shape(&shape), proj.view(space)), raw_a.view_mut(space), raw_b.view_mut(space)) };
        Ok(ctx.kfac_covariances(layer, &mut ca, &mut cb, acc)?)
    })
}

/// Raw projected Fisher (SYRK): `out = beta·out + scale·Σ_{r<n} ĝ_r ĝ_rᵀ`, `out` f32 `[k, k]`
/// written in full (exactly symmetric), `ĝ_r = grads[r·row_stride + offset ..][..k]`, `grads`
/// f32 `[n, row_stride]`. Stream batches with `beta = 1`.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `grads` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_projected_fisher(
    ctx: *const gg_context,
    grads: gg_tensor,
    n: u64,
    k: u64,
    offset: u64,
    row_stride: u64,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx)? };
        let mut bufs = Buffers::new(ctx);
        let raw_g = bufs.input("grads", &grads)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (g, mut out) = unsafe { (raw_g.view(space), raw_out.view_mut(space)) };
        let cols = crate::projection::OutColumns { offset, row_stride };
        Ok(ctx.projected_fisher(&g, n, k, cols, &mut out, Accumulate { scale, beta })?)
    })
}

/// K-FAC factors of a linear layer over every kept token:
/// `c_a = beta·c_a + scale·Σ (P_i a)(P_i a)ᵀ` (f32 `[k_i, k_i]`, `a` augmented with 1 when
/// the layer has a bias), `c_b = beta·c_b + scale·Σ (P_o b)(P_o b)ᵀ` (f32 `[k_o, k_o]`), both
/// written in full; the projected tokens are never materialized.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `train`, `proj`, `c_a` and `c_b`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kfac_covariances_one(ctx, shape, train, proj, c_a, c_b, Accumulate { scale, beta }) }
}

/// [`gg_kfac_covariances`] of an embedding layer (`c_a` from the gathered columns
/// `P_i[:, ids]`); ids as in [`gg_kron_project_embedding`] (out of range: an error on a CPU
/// context, NaN in `c_a` on a CUDA context).
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `train`, `proj`, `c_a` and `c_b`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances_embedding(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_token_train,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kfac_covariances_one(ctx, shape, train, proj, c_a, c_b, Accumulate { scale, beta }) }
}

/// EK-FAC eigenvalue correction: `out = beta·out + scale·Σ_{r<n} (Q_Bᵀ Ĝ_r Q_A)^{⊙2}`, `out`
/// f32 `[k_o, k_i]`, `Ĝ_r` the row-major `k_o × k_i` matrix at `grads[r·row_stride + offset]`,
/// `q_b` f32 `[k_o, k_o]`, `q_a` f32 `[k_i, k_i]` row-major with eigenvectors as columns.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `grads`, `q_b`, `q_a` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ekfac_eigen_correction(
    ctx: *const gg_context,
    grads: gg_tensor,
    n: u64,
    k_o: u64,
    k_i: u64,
    offset: u64,
    row_stride: u64,
    q_b: gg_tensor,
    q_a: gg_tensor,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx)? };
        let mut bufs = Buffers::new(ctx);
        let raw_g = bufs.input("grads", &grads)?;
        let (raw_qb, raw_qa) = (bufs.input("q_b", &q_b)?, bufs.input("q_a", &q_a)?);
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (g, qb, qa, mut out) = unsafe { (raw_g.view(space), raw_qb.view(space), raw_qa.view(space), raw_out.view_mut(space)) };
        let cols = crate::projection::OutColumns { offset, row_stride };
        Ok(ctx.ekfac_eigen_correction(&g, n, k_o, k_i, cols, &qb, &qa, &mut out, Accumulate { scale, beta })?)
    })
}
