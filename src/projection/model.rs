//! Model-level projection: every parameter of a model — Linear (both weight layouts,
//! convolutions as unfolded patches), embedding, LayerNorm/RMSNorm, and parameters tied across
//! several uses — projected into one column block per parameter (MATH.md §3).
//!
//! A parameter is projected **in its storage layout**: its per-sample gradient `G_n`, summed
//! over the parameter's uses, is a `[rows, cols]` matrix and
//!
//! ```text
//! Ĝ_n = P_rows G_n P_colsᵀ ∈ R^{k_o×k_i},  ĝ_n = vec(Ĝ_n) (row-major),
//! P_rows = P_o ∈ R^{k_o×rows} (Which::Out of a Random spec),  P_cols = P_i ∈ R^{k_i×cols} (Which::In)
//! ```
//!
//! | [`LayerKind`] | `[rows, cols]` | a use's contribution to `G_n` |
//! |---|---|---|
//! | `Linear { layout: OutIn }` | `[d_out, d_in + bias]` | `Σ_t b_t [a_t; 1]ᵀ` |
//! | `Linear { layout: InOut }` | `[d_in + bias, d_out]` (the bias is the last row) | `Σ_t [a_t; 1] b_tᵀ` |
//! | `Embedding { vocab, d }` | `[vocab, d]` | `Σ_t e_{id_t} b_tᵀ` |
//! | `Norm { d, has_bias }` | `[d, 1 + bias]` (column 0 `γ`, column 1 `β`) | `Σ_t [b_t ⊙ x̂_t, b_t]` |
//!
//! So an embedding tied to an LM head (`wte [vocab, d]` used as `E[id]` and as the
//! `nn.Linear(d, vocab)` weight) gets *one* projection, consistent for both uses: the lookup's
//! rows are gathered columns of `P_rows` and its `b` is projected by `P_cols`, the head's `b`
//! (over the vocabulary) by `P_rows` and its `a` by `P_cols`. The sum over the uses is exact
//! (it is linear), so `<ĝ_n, ĝ_m>` estimates the tied parameter's `<G_n, G_m>` including the
//! cross terms. For a parameter used once as `Linear { OutIn }` the block is exactly
//! [`kron_project`](crate::Context::kron_project)'s `ĝ` (bit for bit on every backend).
//!
//! For a norm parameter `cols = 1 + bias` is tiny: `k_i = 1 + bias` with a dense identity
//! `P_cols` keeps `γ` and `β` apart (`ĝ = [P γ-grad, P β-grad]`), while `k_i = 1` with a random
//! `P_cols` folds them into one JL projection.
//!
//! On a GPU each matrix use is one fused `kron_project[_ids]` launch (the transposed
//! orientations store `Ĝᵀ`, with the roles of `P_i` / `P_o` swapped) into consecutive partial
//! slots of its parameter, and one `kron_finalize_f32` sums all slots of the parameter in a fixed
//! order; a norm parameter is materialized by `norm_grad` (uses summed) into the workspace, then
//! projected by the ids kernel with `id(t) = t` over its `1 + bias` columns. Deterministic, no
//! synchronization.

use super::cpu;
use super::gpu::{self, GpuProjectLayer, FLAG_IOTA, FLAG_TRANSPOSE};
use super::ops::{check_spec, gpu_layer, gpu_projection, host_kron, host_matrices};
use super::{ColumnGroup, EmbeddingLayer, ProjectInput, ProjectLayer, ProjectionSpec, TokenFactors};
use crate::buffer::TensorMut;
use crate::context::{dev_ptr, host_u8, Backend, Context};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::{run_with_workspace, Carve};
use crate::ghost_dot::validate_ops::TrainDims;
use crate::ghost_dot::{Accumulate, LayerShape, TrainFactors};
use crate::layers::reference::add_use_grad;
use crate::layers::{LayerKind, LayerUse, Mode, WeightLayout};
use crate::runtime::LaunchPlan;
use crate::validate::{self as v, mul, product};

const OP: &str = "kron_project_model";

/// The projection of one parameter (all uses with `LayerUse::param == param`): one block of
/// `proj.k_o · proj.k_i` columns of [`kron_project_model`](Context::kron_project_model)'s output.
/// A dense `proj` gives `p_out = P_rows [k_o, rows]` and `p_in = P_cols [k_i, cols]` (see the
/// [module doc](self) for `[rows, cols]`).
#[derive(Debug, Clone, Copy)]
pub struct ParamProjection<'a> {
    pub param: u32,
    pub proj: ProjectionSpec<'a>,
}

/// `[rows, cols]` of the projected parameter matrix of a use (bias included).
pub fn projected_storage(kind: &LayerKind) -> (u64, u64) {
    match *kind {
        LayerKind::Linear { d_in, d_out, has_bias, layout: WeightLayout::OutIn } => (d_out, d_in + has_bias as u64),
        LayerKind::Linear { d_in, d_out, has_bias, layout: WeightLayout::InOut } => (d_in + has_bias as u64, d_out),
        LayerKind::Embedding { vocab, d } => (vocab, d),
        LayerKind::Norm { d, has_bias } => (d, 1 + has_bias as u64),
    }
}

/// Whether the use's natural `Ĝ = (P b)(P a)ᵀ` is the transpose of its parameter's storage.
fn transposed(kind: &LayerKind) -> bool {
    matches!(kind, LayerKind::Linear { layout: WeightLayout::InOut, .. } | LayerKind::Embedding { .. })
}

/// A matrix use as a layer of the projection kernels in its natural orientation (`d_in` = the
/// vocabulary for an embedding): `(layer, dims, k_i, k_o)`, the sizes of `proj` swapped for a
/// transposed use (the layer carries `proj` only to be a complete [`ProjectInput`]; the callers
/// pass the matrices in the matching roles themselves).
fn natural<'a>(use_: &LayerUse<'a>, n: u64, dtype: DType, proj: ProjectionSpec<'a>) -> (ProjectInput<'a>, TrainDims, u64, u64) {
    let (k_i, k_o) = if transposed(&use_.kind) { (proj.k_o, proj.k_i) } else { (proj.k_i, proj.k_o) };
    let tr = use_.train;
    let (layer, shape) = match use_.kind {
        LayerKind::Linear { d_in, d_out, has_bias, .. } => {
            let shape = LayerShape { d_in, d_out, has_bias };
            let train = TrainFactors { a: tr.x, b: tr.b, n, t: tr.t, mask: tr.mask };
            (ProjectInput::Linear(ProjectLayer { shape, train, proj }), shape)
        }
        LayerKind::Embedding { vocab, d } => {
            let shape = LayerShape { d_in: vocab, d_out: d, has_bias: false };
            let train = TokenFactors { ids: tr.x, b: tr.b, n, t: tr.t, mask: tr.mask };
            (ProjectInput::Embedding(EmbeddingLayer { shape, train, proj }), shape)
        }
        LayerKind::Norm { .. } => unreachable!("norm uses are not matrix uses"),
    };
    let dims = TrainDims { n, t: tr.t, d_in: shape.d_in, d_out: shape.d_out, has_bias: shape.has_bias, dtype };
    (layer, dims, k_i, k_o)
}

/// One validated parameter.
struct Param<'a> {
    proj: ProjectionSpec<'a>,
    uses: Vec<usize>,
    rows: u64,
    cols: u64,
    offset: u64,
}

impl Context {
    /// Projected per-sample gradients of every parameter of a model (see the
    /// [module doc](self)): `out[n, offset_p + j] = beta·out + scale·ĝ^p_n[j]`, `out` f32
    /// `[N, Σ_p k_o^p·k_i^p]` with the parameters' blocks in `params` order; `ĝ^p_n` projects
    /// the sum of the gradients of all uses with `LayerUse::param == p` (tied uses: one block).
    /// The uses follow [`model_dot`](Context::model_dot)'s rules (factors, masks, tie rules;
    /// query sides are ignored). Every use's `param` must appear exactly once in `params`, and
    /// every entry of `params` must have a use. Returns the column block of each parameter (in
    /// `params` order), as [`influence_scores_groups`](Context::influence_scores_groups) and
    /// [`dvemb_layers`](Context::dvemb_layers) take them.
    pub fn kron_project_model(
        &self,
        n: u64,
        uses: &[LayerUse<'_>],
        params: &[ParamProjection<'_>],
        out: &mut TensorMut<'_>,
        acc: Accumulate,
    ) -> Result<Vec<ColumnGroup>> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let (dims, checked, total) = self.check_params(OP, n, uses, params)?;
        let space = self.space();
        v::fits_i32("Σ k_o*k_i", total)?;
        v::output("out", out, space, v::mul("n*Σ k_o*k_i", n, total)?, OP)?;
        self.check_out_ptr("out", out)?;
        let groups: Vec<ColumnGroup> = checked.iter().map(|p| ColumnGroup { offset: p.offset, width: p.proj.width() }).collect();
        match &self.backend {
            Backend::Gpu(rt) => {
                let out_ptr = out.device("out")?.ptr();
                run_with_workspace(rt.as_ref(), |ws| gpu_model_plans(n, uses, &dims, &checked, out_ptr, total, acc, ws))?;
            }
            backend => {
                let reference = matches!(backend, Backend::CpuReference);
                let out = out.host("out")?;
                for p in &checked {
                    let res = host_param(n, uses, &dims, p, reference)?;
                    cpu::write_columns(out, &res, p.proj.width() as usize, total as usize, p.offset as usize, acc);
                }
            }
        }
        Ok(groups)
    }
}

impl Context {
    /// Validates the uses (as [`model_dot`](Context::model_dot)'s, tie rules included) and the
    /// parameter projections: every use's `param` listed exactly once, every listed param used,
    /// dense matrices `[k, rows]` / `[k, cols]`. Returns the use dims, the parameters with their
    /// column offsets, and `Σ k_o·k_i`.
    fn check_params<'p>(
        &self,
        op: &'static str,
        n: u64,
        uses: &[LayerUse<'_>],
        params: &[ParamProjection<'p>],
    ) -> Result<(Vec<crate::layers::UseDims>, Vec<Param<'p>>, u64)> {
        let (dims, _) = self.validate_uses(op, n, uses, Mode::SelfNorm)?;
        if params.is_empty() {
            return Err(GhostError::ZeroSize { what: "params" });
        }
        let space = self.space();
        let mut checked: Vec<Param<'p>> = Vec::with_capacity(params.len());
        let mut total = 0u64;
        for (p, pp) in params.iter().enumerate() {
            if params[..p].iter().any(|q| q.param == pp.param) {
                return Err(GhostError::InvalidArgument { what: "params", reason: format!("param {} is listed twice", pp.param) });
            }
            let group: Vec<usize> = (0..uses.len()).filter(|&i| uses[i].param == pp.param).collect();
            let Some(&first) = group.first() else {
                return Err(GhostError::InvalidArgument { what: "params", reason: format!("param {} has no use", pp.param) });
            };
            let (rows, cols) = projected_storage(&uses[first].kind);
            check_spec(space, &pp.proj, cols, rows, op)?;
            self.check_proj_ptrs(&pp.proj)?;
            checked.push(Param { proj: pp.proj, uses: group, rows, cols, offset: total });
            total = v::add("Σ k_o*k_i", total, pp.proj.width())?;
        }
        if let Some(u) = uses.iter().find(|u| !params.iter().any(|p| p.param == u.param)) {
            return Err(GhostError::InvalidArgument { what: "params", reason: format!("param {} of a use has no projection", u.param) });
        }
        Ok((dims, checked, total))
    }
}

/// `ĝ` of one parameter on the CPU backends, f64 `[N, k_o·k_i]`: the uses' `Ĝ` (each rounded to
/// f32 on the fast path, exact on the reference) summed in f64 in use order.
fn host_param(n: u64, uses: &[LayerUse<'_>], dims: &[crate::layers::UseDims], p: &Param<'_>, reference: bool) -> Result<Vec<f64>> {
    let (p_cols, p_rows) = host_matrices(&p.proj, p.cols, p.rows)?;
    let (k_i, k_o) = (p.proj.k_i as usize, p.proj.k_o as usize);
    let width = k_o * k_i;
    let nn = n as usize;
    if let LayerKind::Norm { d, has_bias } = uses[p.uses[0]].kind {
        // Per sample: the uses' gradients summed in f64 ([γ | β], as the model-level reference
        // materializes them), laid out as G_n [d, 1 + bias], then P_rows G_n P_colsᵀ.
        let (d, cols) = (d as usize, 1 + has_bias as usize);
        let (mut flat, mut g) = (vec![0.0f64; d * cols], vec![0.0f64; d * cols]);
        let mut res = Vec::with_capacity(nn * width);
        for s in 0..nn {
            flat.fill(0.0);
            for &u in &p.uses {
                let tr = &uses[u].train;
                let t = tr.t as usize;
                add_use_grad(&uses[u].kind, &tr.x, &tr.b, host_u8("mask", tr.mask.as_ref())?, s * t..(s + 1) * t, false, &mut flat)?;
            }
            for k in 0..d {
                for c in 0..cols {
                    g[k * cols + c] = flat[c * d + k];
                }
            }
            cpu::sandwich(&g, cols, d, &p_cols, &p_rows, k_i, k_o, false, &mut res);
        }
        return Ok(res);
    }
    let mut total: Option<Vec<f64>> = None;
    for &u in &p.uses {
        let (layer, ldims, ki, ko) = natural(&uses[u], n, dims[u].dtype, p.proj);
        let t = transposed(&uses[u].kind);
        let (kp_in, kp_out) = if t { (&p_rows, &p_cols) } else { (&p_cols, &p_rows) };
        let (ki, ko) = (ki as usize, ko as usize);
        let res = host_kron(&layer, &ldims, kp_in, kp_out, ki, ko, reference)?;
        if total.is_none() && !t {
            total = Some(res); // exactly this use's result (no `0 + x`, which would turn −0 into +0)
            continue;
        }
        let total = total.get_or_insert_with(|| vec![0.0f64; nn * width]);
        for (dst, src) in total.chunks_exact_mut(width).zip(res.chunks_exact(width)) {
            if t {
                // src is [ko, ki] (natural), dst [ki, ko] (storage): dst[i·ko + o] = src[o·ki + i].
                for o in 0..ko {
                    for i in 0..ki {
                        dst[i * ko + o] += src[o * ki + i];
                    }
                }
            } else {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    }
    Ok(total.expect("a parameter has at least one use"))
}

/// Launches of several contributions that one fixed-order finalize sums: contribution `i`
/// writes `splits[i]` partial slots of `slot_bytes` each, all back to back (no padding) in one
/// region carved from `carve`, so the finalize reads `Σ splits` consecutive slots in
/// contribution order. `plan(i, at, carve)` gives contribution `i`'s launches writing at `at`
/// (scratch of its own from `carve`); they are appended to `plans`. Returns (region, slots).
fn summed_slots(
    splits: &[u64],
    slot_bytes: u64,
    ws: u64,
    carve: &mut Carve,
    plans: &mut Vec<LaunchPlan>,
    mut plan: impl FnMut(usize, u64, &mut Carve) -> Result<Vec<LaunchPlan>>,
) -> Result<(u64, u64)> {
    let slots = splits.iter().try_fold(0u64, |a, &s| v::add("partial slots", a, s))?;
    let region = ws + carve.take(mul("partial bytes", slots, slot_bytes)?)?;
    let mut at = region;
    for (i, &s) in splits.iter().enumerate() {
        plans.extend(plan(i, at, carve)?);
        at += mul("partial bytes", s, slot_bytes)?;
    }
    Ok((region, slots))
}

/// Launch plans of [`Context::kron_project_model`] on a GPU (partials carved from `ws`).
#[allow(clippy::too_many_arguments)]
fn gpu_model_plans(
    n: u64,
    uses: &[LayerUse<'_>],
    dims: &[crate::layers::UseDims],
    params: &[Param<'_>],
    out: u64,
    ld: u64,
    acc: Accumulate,
    ws: u64,
) -> Result<(Vec<LaunchPlan>, u64)> {
    let mut plans = Vec::new();
    let mut carve = Carve::default();
    for p in params {
        let width = p.proj.width();
        let base = gpu_projection(&p.proj)?;
        // Every matrix use as a kernel layer in its natural orientation, with the parameter's
        // matrices in the matching roles.
        let mut layers: Vec<(GpuProjectLayer, u32)> = Vec::new();
        if let LayerKind::Norm { d, has_bias } = uses[p.uses[0]].kind {
            let cols = 1 + has_bias as u64;
            let g = ws + carve.take(product("norm grads", &[n, d, cols, 4])?)?;
            for (k, &u) in p.uses.iter().enumerate() {
                let tr = &uses[u].train;
                plans.push(crate::layers::gpu::norm_grad_plan(
                    dims[u].dtype,
                    tr.x.device("x")?.ptr(),
                    tr.b.device("b")?.ptr(),
                    dev_ptr(tr.mask.as_ref(), "mask")?,
                    0,
                    tr.t,
                    mul("n*t", n, tr.t)?,
                    n,
                    d,
                    has_bias,
                    k > 0,
                    g,
                )?);
            }
            // g is [N, 1 + bias, d] f32: sample n's "tokens" c = 0 (γ), 1 (β) with b = column c
            // of G_n and id c, so Ĝ_n = Σ_c (P_rows g_c)(P_cols[:, c])ᵀ = P_rows G_n P_colsᵀ.
            let dims = TrainDims { n, t: cols, d_in: cols, d_out: d, has_bias: false, dtype: DType::F32 };
            let l = GpuProjectLayer { dims, a: 0, b: g, mask: 0, ids: true, proj: base, k_i: p.proj.k_i, k_o: p.proj.k_o, offset: p.offset };
            layers.push((l, FLAG_IOTA));
        } else {
            for &u in &p.uses {
                let (layer, ldims, k_i, k_o) = natural(&uses[u], n, dims[u].dtype, p.proj);
                let t = transposed(&uses[u].kind);
                let mut proj = base;
                if t {
                    std::mem::swap(&mut proj.p_in, &mut proj.p_out);
                    std::mem::swap(&mut proj.key_in, &mut proj.key_out);
                    std::mem::swap(&mut proj.scale_in, &mut proj.scale_out);
                }
                layers.push((gpu_layer(&layer, ldims, proj, k_i, k_o, p.offset)?, if t { FLAG_TRANSPOSE } else { 0 }));
            }
        }
        let splits = layers.iter().map(|(l, _)| gpu::kron_splits(l)).collect::<Result<Vec<_>>>()?;
        let (partial, slots) = summed_slots(&splits, product("partial slot bytes", &[n, width, 4])?, ws, &mut carve, &mut plans, |i, at, _| {
            Ok(vec![gpu::kron_kernel_plan(&layers[i].0, at, layers[i].1)?])
        })?;
        plans.push(gpu::kron_finalize_plan(partial, out, n, width, slots, ld, p.offset, acc)?);
    }
    Ok((plans, carve.bytes))
}

/// One side of a matrix use for the K-FAC factors: the per-token vectors that the rows
/// (`P_rows`) or the columns (`P_cols`) of the parameter see.
enum SideRows {
    /// Dense rows `[N·T, width]` (plus a trailing 1 with `ones`).
    Dense { ones: bool, width: u64, b_side: bool },
    /// Token ids into `vocab`.
    Ids { vocab: u64 },
}

/// `(rows side, cols side)` of a matrix use: `nn.Linear` `(b, [a; 1])`, Conv1D `([a; 1], b)`,
/// embedding `(e_id, b)`.
fn use_sides(kind: &LayerKind) -> (SideRows, SideRows) {
    match *kind {
        LayerKind::Linear { d_in, d_out, has_bias, layout: WeightLayout::OutIn } => {
            (SideRows::Dense { ones: false, width: d_out, b_side: true }, SideRows::Dense { ones: has_bias, width: d_in, b_side: false })
        }
        LayerKind::Linear { d_in, d_out, has_bias, layout: WeightLayout::InOut } => {
            (SideRows::Dense { ones: has_bias, width: d_in, b_side: false }, SideRows::Dense { ones: false, width: d_out, b_side: true })
        }
        LayerKind::Embedding { vocab, d } => (SideRows::Ids { vocab }, SideRows::Dense { ones: false, width: d, b_side: true }),
        LayerKind::Norm { .. } => unreachable!("rejected before"),
    }
}

impl Context {
    /// K-FAC factors of every parameter (MATH.md §4) in the storage layout of
    /// [`kron_project_model`](Context::kron_project_model), over every kept token of every use
    /// of the parameter: with each use's per-token gradient an outer product `r_t c_tᵀ` on
    /// `[rows, cols]` (`nn.Linear`: `r = b`, `c = [a; 1]`; Conv1D: `r = [a; 1]`, `c = b`;
    /// embedding: `r = e_id`, `c = b`),
    /// `c_rows[p] = beta·c_rows[p] + scale·Σ_uses Σ_{n,t} (P_rows r_t)(P_rows r_t)ᵀ` (f32
    /// `[k_o, k_o]`) and `c_cols[p] = beta·c_cols[p] + scale·Σ (P_cols c_t)(P_cols c_t)ᵀ`
    /// (`[k_i, k_i]`), `p` in `params` order — the token statistics of tied uses are summed
    /// (K-FAC "expand" for shared weights). Fit with
    /// [`Kfac::from_covariances_f32`](super::precondition::Kfac::from_covariances_f32)`(c_cols,
    /// c_rows)` and apply to the parameter's block of `kron_project_model`'s rows. Norm
    /// parameters are not Kronecker-factored (a token's `γ`/`β` gradient is not one outer
    /// product): a typed error; precondition their few columns with the raw Fisher
    /// ([`projected_fisher`](Context::projected_fisher)). On a GPU: each use side as in
    /// [`kfac_covariances`](Context::kfac_covariances) (fused, or `project_rows` + `syrk` for a
    /// dense side with `k > 64`) into consecutive partial slots, one fixed-order finalize per factor.
    pub fn kfac_covariances_model(
        &self,
        n: u64,
        uses: &[LayerUse<'_>],
        params: &[ParamProjection<'_>],
        c_rows: &mut [TensorMut<'_>],
        c_cols: &mut [TensorMut<'_>],
        acc: Accumulate,
    ) -> Result<()> {
        const OPK: &str = "kfac_covariances_model";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let (dims, checked, _) = self.check_params(OPK, n, uses, params)?;
        if let Some(p) = checked.iter().find(|p| matches!(uses[p.uses[0]].kind, LayerKind::Norm { .. })) {
            return Err(GhostError::InvalidArgument {
                what: "params",
                reason: format!(
                    "param {} is a norm parameter, which K-FAC does not factor (use projected_fisher on its columns)",
                    uses[p.uses[0]].param
                ),
            });
        }
        if c_rows.len() != checked.len() || c_cols.len() != checked.len() {
            return Err(GhostError::InvalidArgument {
                what: "c_rows / c_cols",
                reason: format!("need one factor per param ({}), got {} and {}", checked.len(), c_rows.len(), c_cols.len()),
            });
        }
        let space = self.space();
        for ((p, cr), cc) in checked.iter().zip(c_rows.iter()).zip(c_cols.iter()) {
            v::output("c_rows", cr, space, v::fits_i32("k_o*k_o", mul("k_o*k_o", p.proj.k_o, p.proj.k_o)?)? as u64, OPK)?;
            v::output("c_cols", cc, space, v::fits_i32("k_i*k_i", mul("k_i*k_i", p.proj.k_i, p.proj.k_i)?)? as u64, OPK)?;
            self.check_out_ptr("c_rows", cr)?;
            self.check_out_ptr("c_cols", cc)?;
        }
        match &self.backend {
            Backend::Gpu(rt) => {
                let outs: Vec<(u64, u64)> =
                    c_rows.iter().zip(c_cols.iter()).map(|(r, c)| Ok((r.device("c_rows")?.ptr(), c.device("c_cols")?.ptr()))).collect::<Result<_>>()?;
                run_with_workspace(rt.as_ref(), |ws| {
                    let mut carve = Carve::default();
                    let mut plans = Vec::new();
                    for (p, &(cr, cc)) in checked.iter().zip(&outs) {
                        let gp = gpu_projection(&p.proj)?;
                        // (projection of the rows, of the columns): (P_out, P_in) of the spec.
                        let mats = [(gp.p_out, gp.key_out, gp.scale_out, p.proj.k_o, cr), (gp.p_in, gp.key_in, gp.scale_in, p.proj.k_i, cc)];
                        for (which, &(pm, key, scale, k, out)) in mats.iter().enumerate() {
                            let mut sides = Vec::new();
                            for &u in &p.uses {
                                let use_ = &uses[u];
                                let tr = &use_.train;
                                let (rs, cs) = use_sides(&use_.kind);
                                let side = if which == 0 { rs } else { cs };
                                let (x, ids, width, ones) = match side {
                                    SideRows::Ids { vocab } => (tr.x.device("x")?.ptr(), true, vocab, false),
                                    SideRows::Dense { ones, width, b_side } => {
                                        (if b_side { tr.b.device("b")?.ptr() } else { tr.x.device("x")?.ptr() }, false, width, ones)
                                    }
                                };
                                sides.push(gpu::CovSide {
                                    x,
                                    ids,
                                    dtype: dims[u].dtype,
                                    mask: dev_ptr(tr.mask.as_ref(), "mask")?,
                                    p: pm,
                                    key,
                                    scale,
                                    flags: gp.flags
                                        | if ones { crate::ghost_dot::gpu::FLAG_BIAS } else { 0 }
                                        | if ids { gpu::ids_flag(&tr.x) } else { 0 },
                                    rows: mul("n*t", n, tr.t)?,
                                    width,
                                    k,
                                });
                            }
                            let kk = mul("k*k", k, k)?;
                            let splits = sides.iter().map(gpu::cov_side_splits).collect::<Result<Vec<_>>>()?;
                            let (region, slots) = summed_slots(&splits, mul("partial slot bytes", kk, 4)?, ws, &mut carve, &mut plans, |i, at, carve| {
                                gpu::cov_side_plans(&sides[i], at, ws, carve)
                            })?;
                            plans.push(crate::ghost_dot::gpu::finalize_plan(region, out, kk, slots, acc)?);
                        }
                    }
                    Ok((plans, carve.bytes))
                })
            }
            backend => {
                let reference = matches!(backend, Backend::CpuReference);
                for ((p, cr), cc) in checked.iter().zip(c_rows.iter_mut()).zip(c_cols.iter_mut()) {
                    let (p_cols, p_rows) = host_matrices(&p.proj, p.cols, p.rows)?;
                    let mut sum_rows = vec![0.0f64; (p.proj.k_o * p.proj.k_o) as usize];
                    let mut sum_cols = vec![0.0f64; (p.proj.k_i * p.proj.k_i) as usize];
                    for &u in &p.uses {
                        let use_ = &uses[u];
                        let tr = &use_.train;
                        let (rs, cs) = use_sides(&use_.kind);
                        let mask = host_u8("mask", tr.mask.as_ref())?;
                        let nrows = (n * tr.t) as usize;
                        for (sum, side, pm, k) in [(&mut sum_rows, rs, &p_rows, p.proj.k_o), (&mut sum_cols, cs, &p_cols, p.proj.k_i)] {
                            let rows = match side {
                                SideRows::Ids { vocab } => cpu::CovRows::Ids { ids: super::ops::host_ids(&tr.x)?, vocab: vocab as usize },
                                SideRows::Dense { ones, width, b_side } => {
                                    cpu::CovRows::Dense { x: if b_side { tr.b.host("b")? } else { tr.x.host("x")? }, width: width as usize, ones }
                                }
                            };
                            let res = if reference {
                                cpu::kfac_cov_reference(&rows, mask, nrows, pm, k as usize, false)
                            } else {
                                cpu::kfac_cov_fast(&rows, mask, nrows, pm, k as usize)
                            };
                            sum.iter_mut().zip(&res).for_each(|(s, r)| *s += r);
                        }
                    }
                    crate::cpu::apply_accumulate(cr.host("c_rows")?, &sum_rows, acc);
                    crate::cpu::apply_accumulate(cc.host("c_cols")?, &sum_cols, acc);
                }
                Ok(())
            }
        }
    }
}
