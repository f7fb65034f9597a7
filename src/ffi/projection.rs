//! LoGra projections (MATH.md §3, `crate::projection`): the projection descriptor and codes,
//! `gg_kron_project`, `gg_kron_project_layers`, `gg_kron_project_embedding`,
//! `gg_kron_project_model`, `gg_projection_matrix`.

use super::*;

/// Distribution of the entries of a random projection matrix.
pub type gg_distribution = u32;

/// Standardized Irwin–Hall(4) entries of variance `1/k` (bit-exact on every backend).
pub const GG_DISTRIBUTION_GAUSSIAN: gg_distribution = 0;

/// `±1/√k` with probability ½ each.
pub const GG_DISTRIBUTION_RADEMACHER: gg_distribution = 1;

/// Which of a layer's two projection matrices.
pub type gg_which = u32;

/// `P_i ∈ R^{k_i × (d_in + bias)}`, applied to activations.
pub const GG_WHICH_IN: gg_which = 0;

/// `P_o ∈ R^{k_o × d_out}`, applied to output gradients.
pub const GG_WHICH_OUT: gg_which = 1;

const _: () = {
    assert!(GG_WHICH_IN == Which::In as u32);
    assert!(GG_WHICH_OUT == Which::Out as u32);
};

/// Where a layer's projection matrices come from (see [`gg_projection`]).
pub type gg_projection_kind = u32;

/// Generated from `(seed, layer, which, row, col)` inside the kernels: no matrix in memory.
pub const GG_PROJECTION_RANDOM: gg_projection_kind = 0;

/// Caller-given f32 matrices `p_in [k_i, d_in + bias]` and `p_out [k_o, d_out]`.
pub const GG_PROJECTION_DENSE: gg_projection_kind = 1;

/// A layer's low-rank projection `Ĝ = P_o G P_iᵀ ∈ R^{k_o × k_i}` (MATH.md §3). `kind` is a
/// `gg_projection_kind`. `seed`, `layer` and `dist` (a `gg_distribution`) are read only for
/// `GG_PROJECTION_RANDOM` (entries of variance `1/k_i` and `1/k_o`; the same seed gives the same
/// matrices on every backend); `p_in` (f32 `[k_i, d_in + bias]`, its last column projecting the
/// bias gradient) and `p_out` (f32 `[k_o, d_out]`), row-major, only for `GG_PROJECTION_DENSE`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_projection {
    pub k_i: u64,
    pub k_o: u64,
    pub kind: gg_projection_kind,
    pub dist: gg_distribution,
    pub seed: u64,
    pub layer: u32,
    pub p_in: gg_tensor,
    pub p_out: gg_tensor,
}

/// One layer of [`gg_kron_project_layers`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_project_layer {
    pub shape: gg_layer_shape,
    pub train: gg_train,
    pub proj: gg_projection,
}

pub(super) fn distribution_from_code(code: gg_distribution) -> FfiResult<Distribution> {
    match code {
        GG_DISTRIBUTION_GAUSSIAN => Ok(Distribution::Gaussian),
        GG_DISTRIBUTION_RADEMACHER => Ok(Distribution::Rademacher),
        other => Err(Failure::invalid("dist", format!("{other} is not a gg_distribution (GAUSSIAN=0, RADEMACHER=1)"))),
    }
}

pub(super) fn which_from_code(code: gg_which) -> FfiResult<Which> {
    match code {
        GG_WHICH_IN => Ok(Which::In),
        GG_WHICH_OUT => Ok(Which::Out),
        other => Err(Failure::invalid("which", format!("{other} is not a gg_which (IN=0, OUT=1)"))),
    }
}

/// Projected per-sample gradients of one layer (MATH.md §3):
/// `out[n·row_stride + col_offset + o·k_i + i] = beta·out + scale·Ĝ_n[o, i]`,
/// `Ĝ_n = Σ_t (P_o b_{n,t})(P_i a_{n,t})ᵀ`; `out` f32 `[N, row_stride]` (exactly
/// `N·row_stride` long), `col_offset + k_o·k_i ≤ row_stride`; the other columns are not touched.
/// For one layer alone pass `col_offset = 0`, `row_stride = k_o·k_i`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train` and `out`; `proj` is NULL (an error) or a readable
/// descriptor whose dense matrices (if any) obey the same rules as the other inputs.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    col_offset: u64,
    row_stride: u64,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kron_project_one(ctx, shape, train, proj, out, OutColumns { offset: col_offset, row_stride }, Accumulate { scale, beta }) }
}

/// Several layers' projected gradients side by side: `out` f32 `[N, Σ_l k_o^l·k_i^l]`, layer `l`
/// at column offset `Σ_{l'<l} k_o^{l'}·k_i^{l'}` (array order), every layer with the same `N`;
/// `out = beta·out + scale·[Ĝ^0_n | Ĝ^1_n | …]`. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_kron_project`] for every layer; `layers` is NULL (an error) or points at `n_layers`
/// readable `gg_project_layer`.
#[no_mangle]
pub unsafe extern "C" fn gg_kron_project_layers(
    ctx: *const gg_context,
    layers: *const gg_project_layer,
    n_layers: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            raw.push((bufs.train(&l.train)?, bufs.projection(&l.proj)?));
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        let mut pl = Vec::with_capacity(n_layers);
        for (i, (l, (rt, rp))) in descs.iter().zip(&raw).enumerate() {
            // SAFETY: checked buffers, valid for the call by this function's contract.
            let (train, proj) = unsafe { (rt.view(space), rp.view(space)) };
            let layer = ProjectLayer { shape: layer_shape(&l.shape), train, proj };
            // Validates this layer alone (nothing runs) so that an error names it.
            ctx.check_projection(&layer.shape, &layer.train, &layer.proj)
                .map_err(|e| Failure::from(e).context(&format!("layers[{i}]")))?;
            pl.push(layer);
        }
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        Ok(ctx.kron_project_layers(&pl, &mut out, Accumulate { scale, beta })?)
    })
}

/// The random matrix `which` (a `gg_which`) of `layer` under `seed`, `k × d` row-major f32
/// entries of the `gg_distribution` `dist`, exactly what `GG_PROJECTION_RANDOM` uses inside the
/// kernels (bit-identical on every backend). For `P_i` of a layer with a bias pass
/// `d = d_in + 1`. `out` f32 `[k, d]` is overwritten.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_projection_matrix(
    ctx: *const gg_context,
    seed: u64,
    layer: u32,
    which: gg_which,
    k: u64,
    d: u64,
    dist: gg_distribution,
    out: gg_tensor_mut,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let (which, dist) = (which_from_code(which)?, distribution_from_code(dist)?);
        let mut bufs = Buffers::new(ctx);
        let raw_out = bufs.output("out", &out)?;
        let space = bufs.space;
        // SAFETY: checked output, the only buffer of the call, exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        Ok(ctx.projection_matrix(seed, layer, which, k, d, dist, &mut out)?)
    })
}

/// The projection of one parameter of [`gg_kron_project_model`]: every use with
/// `gg_layer_use.param == param` is projected into one block of `proj.k_o·proj.k_i` columns. A
/// dense `proj` gives `p_out = P_rows [k_o, rows]` and `p_in = P_cols [k_i, cols]` of the
/// parameter's projected storage (Linear `[d_out, d_in + bias]`, Conv1D layout
/// `[d_in + bias, d_out]`, embedding `[vocab, d]`, norm `[d, 1 + bias]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_param_projection {
    pub param: u32,
    pub proj: gg_projection,
}

/// LoGra projection of a whole model (MATH.md §3; Rust `Context::kron_project_model`): for every
/// parameter of `params` (in array order) the projected per-sample gradient
/// `P_rows (Σ_uses G_n) P_colsᵀ` of all its uses — tied ones (an embedding and its LM head, one
/// weight in both orientations, a shared norm) summed into one block — written
/// `out = beta·out + scale·[ĝ^0_n | ĝ^1_n | …]`, `out` f32 `[n, Σ_p k_o·k_i]`. Query sides of the
/// uses are ignored. When `groups_out` is not NULL it receives the `n_params` column blocks
/// (`gg_column_group`), as [`gg_influence_scores_groups`] and [`gg_dvemb_layers`] take them.
///
/// # Safety
/// As [`gg_model_dot`] for `ctx`, `uses` and `out`; `params` points at `n_params` readable
/// `gg_param_projection` whose dense matrices follow the [`gg_tensor`] contract; `groups_out` is
/// NULL or points at `n_params` writable `gg_column_group`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project_model(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    params: *const gg_param_projection,
    n_params: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    groups_out: *mut gg_column_group,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs, pdescs) =
            unsafe { (context_ref(ctx)?, read_array(uses, n_uses, "uses", "n_uses")?, read_array(params, n_params, "params", "n_params")?) };
        if !groups_out.is_null() && (groups_out as usize) % std::mem::align_of::<gg_column_group>() != 0 {
            return Err(Failure::new(GG_STATUS_MISALIGNED, "`groups_out` is misaligned for gg_column_group"));
        }
        let mut bufs = Buffers::new(ctx);
        let (raw, rawp) = bufs.model_params(&descs, &pdescs)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let (views, specs) = unsafe { model_param_views(&raw, &rawp, space) };
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        let groups = ctx.kron_project_model(n, &views, &specs, &mut out, Accumulate { scale, beta })?;
        if !groups_out.is_null() {
            // SAFETY: non-null, aligned, n_params writable entries (caller's contract); one per param.
            let dst = unsafe { std::slice::from_raw_parts_mut(groups_out, n_params) };
            for (d, g) in dst.iter_mut().zip(&groups) {
                *d = gg_column_group { offset: g.offset, width: g.width };
            }
        }
        Ok(())
    })
}

/// The training-factor descriptor of a one-layer projection call: a linear layer's
/// [`gg_train`] or an embedding layer's [`gg_token_train`]. The twin C functions
/// (`gg_kron_project` / `gg_kron_project_embedding`, `gg_kfac_covariances` /
/// `gg_kfac_covariances_embedding`) differ only in this type and share one body through it.
pub(super) trait LayerTrainDesc: Copy {
    /// The descriptor's buffers, checked and registered for the overlap check.
    type Raw: Copy;

    /// Checks and registers the descriptor's buffers (named `train.*`).
    fn register(&self, bufs: &mut Buffers) -> FfiResult<Self::Raw>;

    /// The library's layer: `shape`, the factors of `raw` viewed in `space`, and `proj`.
    ///
    /// # Safety
    /// As [`RawBuf::view`] for every buffer of `raw`.
    unsafe fn layer<'a>(raw: Self::Raw, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a>;
}

impl LayerTrainDesc for gg_train {
    type Raw = RawTrain;

    fn register(&self, bufs: &mut Buffers) -> FfiResult<RawTrain> {
        bufs.train(self)
    }

    unsafe fn layer<'a>(raw: RawTrain, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a> {
        // SAFETY: forwarded from this function's contract.
        ProjectInput::Linear(ProjectLayer { shape, train: unsafe { raw.view(space) }, proj })
    }
}

impl LayerTrainDesc for gg_token_train {
    type Raw = RawTokens;

    fn register(&self, bufs: &mut Buffers) -> FfiResult<RawTokens> {
        bufs.tokens(self)
    }

    unsafe fn layer<'a>(raw: RawTokens, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a> {
        // SAFETY: forwarded from this function's contract.
        ProjectInput::Embedding(EmbeddingLayer { shape, train: unsafe { raw.view(space) }, proj })
    }
}

/// The parsed inputs of a one-layer projection call, outputs not yet registered.
pub(super) struct LayerCall<'c, R> {
    pub(super) ctx: &'c Context,
    pub(super) bufs: Buffers,
    pub(super) train: R,
    pub(super) proj: RawProj,
}

impl<'c, R: Copy> LayerCall<'c, R> {
    /// Reads `ctx`, `*train` and `*proj` and registers the train factors and the projection
    /// (in that order, so that the first bad argument is the one reported).
    ///
    /// # Safety
    /// `ctx` is NULL or a live context; `train` and `proj` are NULL or readable descriptors.
    pub(super) unsafe fn parse<D>(ctx: *const gg_context, train: *const D, proj: *const gg_projection) -> FfiResult<Self>
    where
        D: LayerTrainDesc<Raw = R>,
    {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, proj) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(proj, "proj")?) };
        let mut bufs = Buffers::new(ctx);
        let train = train.register(&mut bufs)?;
        let proj = bufs.projection(&proj)?;
        Ok(LayerCall { ctx, bufs, train, proj })
    }
}

/// The body of [`gg_kron_project`] and [`gg_kron_project_embedding`]: one layer's projected
/// per-sample gradients into the columns `cols` of `out`.
///
/// # Safety
/// As [`gg_kron_project`] (or [`gg_kron_project_embedding`] for token-id factors).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kron_project_one<D: LayerTrainDesc>(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const D,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    cols: OutColumns,
    acc: Accumulate,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let LayerCall { ctx, mut bufs, train, proj } = unsafe { LayerCall::parse(ctx, train, proj)? };
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (layer, mut out) = unsafe { (D::layer(train, space, layer_shape(&shape), proj.view(space)), raw_out.view_mut(space)) };
        Ok(match layer {
            ProjectInput::Linear(l) => ctx.kron_project(&l.shape, &l.train, &l.proj, &mut out, cols, acc),
            ProjectInput::Embedding(l) => ctx.kron_project_embedding(&l.shape, &l.train, &l.proj, &mut out, cols, acc),
        }?)
    })
}

/// Projected per-sample gradients of an embedding layer (MATH.md §3):
/// `out[n·out_row_stride + out_offset + o·k_i + i] = beta·out + scale·Ĝ_n[o, i]`,
/// `Ĝ_n = Σ_t (P_o b_{n,t})(P_i[:, ids_{n,t}])ᵀ` (`shape.d_in` = vocabulary size `V`, no bias),
/// `out` f32 `[n, out_row_stride]`; other columns are never touched. A kept id outside `[0, V)`
/// is `GG_STATUS_INVALID_ARGUMENT` on a CPU context (nothing written); on a CUDA context that
/// sample's columns become NaN (ids in device memory are never read by the host).
///
/// # Safety
/// `ctx` is NULL or a live context; `train` and `proj` are NULL or point at readable
/// descriptors whose buffers follow the contract of [`gg_tensor`] (host memory for CPU contexts,
/// device memory for CUDA contexts) for the duration of the call; `out` is writable and
/// aliases no other buffer.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project_embedding(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_token_train,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    out_offset: u64,
    out_row_stride: u64,
    scale: f32,
    beta: f32,
) -> gg_status {
    let cols = OutColumns { offset: out_offset, row_stride: out_row_stride };
    // SAFETY: forwarded from this function's contract.
    unsafe { kron_project_one(ctx, shape, train, proj, out, cols, Accumulate { scale, beta }) }
}
