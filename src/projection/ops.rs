//! `Context` entry points of the projection family: validate, then dispatch to the f64
//! reference, the fast CPU path or the GPU plans.

use std::borrow::Cow;

use super::generator::{entry_scale, fill_projection, stream_key, try_materialize_projection, Distribution, Which};
use super::gpu::{self, GpuProjectLayer, GpuProjection, FLAG_RADEMACHER, FLAG_RANDOM};
use super::{
    cpu, ColumnGroup, EmbeddingLayer, OutColumns, ProjectInput, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims, ScoreMode,
    TokenFactors,
};
use crate::buffer::{HostIds, Tensor, TensorMut};
use crate::context::{cpu_train, dev_ptr, host_f32, host_u8, Backend, Context};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::run_with_workspace;
use crate::ghost_dot::validate_ops::{self as vo, TrainDims, FLOAT_INPUTS};
use crate::ghost_dot::{Accumulate, LayerShape, TrainFactors};
use crate::validate::{self as v, Space};

const OP: &str = "kron_project";

/// A validated layer.
struct Checked {
    dims: TrainDims,
    k_i: u64,
    k_o: u64,
    offset: u64,
}

/// The projection's checks that do not depend on the input kind: `k_i`, `k_o` and, for a dense
/// projection, `p_in [k_i, di]` and `p_out [k_o, d_out]`.
pub(super) fn check_spec(space: Space, proj: &ProjectionSpec<'_>, di: u64, d_out: u64, op: &'static str) -> Result<()> {
    v::nonzero("k_i", proj.k_i)?;
    v::nonzero("k_o", proj.k_o)?;
    v::fits_i32("k_i", proj.k_i)?;
    v::fits_i32("k_o", proj.k_o)?;
    v::fits_i32("k_o*k_i", v::mul("k_o*k_i", proj.k_o, proj.k_i)?)?;
    if let ProjectionKind::Dense { p_in, p_out } = &proj.kind {
        v::input("p_in", p_in, space, &[DType::F32], v::mul("k_i*(d_in+bias)", proj.k_i, di)?, op)?;
        v::input("p_out", p_out, space, &[DType::F32], v::mul("k_o*d_out", proj.k_o, d_out)?, op)?;
    }
    Ok(())
}

/// Validates the token-id factors of an embedding layer: `ids [N, T]` i32, `b [N, T, d_out]`,
/// `mask [N, T]` u8, no bias. `d_in` of the result is the vocabulary size.
pub(super) fn check_tokens(space: Space, shape: &LayerShape, tr: &TokenFactors<'_>, op: &'static str) -> Result<TrainDims> {
    vo::shape(op, shape)?;
    if shape.has_bias {
        return Err(GhostError::InvalidArgument { what: "has_bias", reason: "an embedding layer has no bias".into() });
    }
    v::nonzero("n", tr.n)?;
    v::nonzero("t", tr.t)?;
    let nt = v::mul("n*t", tr.n, tr.t)?;
    v::fits_i32("n*t", nt)?;
    if space == Space::Device {
        v::fits_i32("n", tr.n)?;
        v::fits_i32("t", tr.t)?;
    }
    v::input("ids", &tr.ids, space, &[DType::I32, DType::I64], nt, op)?;
    let dtype = v::input("b", &tr.b, space, FLOAT_INPUTS, v::mul("n*t*d_out", nt, shape.d_out)?, op)?;
    if let Some(m) = &tr.mask {
        v::input("mask", m, space, &[DType::U8], nt, op)?;
    }
    Ok(TrainDims { n: tr.n, t: tr.t, d_in: shape.d_in, d_out: shape.d_out, has_bias: false, dtype })
}

/// Host ids (i32 or i64) of the kept tokens must lie in `[0, vocab)` (masked ids are never
/// read). `what` names the buffer as the caller spells it (`ids`, `uses[2].train.x`).
pub(super) fn check_host_ids(what: &dyn Fn() -> String, ids: HostIds<'_>, mask: Option<&[u8]>, t: u64, vocab: u64) -> Result<()> {
    if let Some((r, id)) = ids.first_out_of_range(mask, vocab) {
        let (n, tt) = (r as u64 / t, r as u64 % t);
        let what = what();
        return Err(GhostError::InvalidField { reason: format!("{what}[{n}, {tt}] = {id} is outside the vocabulary [0, {vocab})"), what });
    }
    Ok(())
}

/// The host token ids of a validated buffer (i32 or i64).
pub(super) fn host_ids<'a>(t: &Tensor<'a>) -> Result<HostIds<'a>> {
    let h = t.host("ids")?;
    h.ids().ok_or(GhostError::UnsupportedDtype { what: "ids", dtype: h.dtype(), op: "cpu backend" })
}

/// `(p_in, p_out)` on the host, borrowed or materialized.
pub(super) type HostMatrices<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

/// The host matrices of a projection (`p_in [k_i, di]`, `p_out [k_o, d_out]`), materialized
/// when random.
pub(super) fn host_matrices<'a>(proj: &ProjectionSpec<'a>, di: u64, d_out: u64) -> Result<HostMatrices<'a>> {
    Ok(match &proj.kind {
        ProjectionKind::Random { seed, layer, dist } => (
            Cow::Owned(try_materialize_projection(*seed, *layer, Which::In, proj.k_i, di, *dist)?),
            Cow::Owned(try_materialize_projection(*seed, *layer, Which::Out, proj.k_o, d_out, *dist)?),
        ),
        ProjectionKind::Dense { p_in, p_out } => (Cow::Borrowed(host_f32("p_in", p_in)?), Cow::Borrowed(host_f32("p_out", p_out)?)),
    })
}

/// The device side of a validated projection.
pub(super) fn gpu_projection(proj: &ProjectionSpec<'_>) -> Result<GpuProjection> {
    Ok(match &proj.kind {
        ProjectionKind::Random { seed, layer, dist } => GpuProjection {
            p_in: 0,
            p_out: 0,
            key_in: stream_key(*seed, *layer, Which::In),
            key_out: stream_key(*seed, *layer, Which::Out),
            scale_in: entry_scale(proj.k_i, *dist),
            scale_out: entry_scale(proj.k_o, *dist),
            flags: FLAG_RANDOM | if *dist == Distribution::Rademacher { FLAG_RADEMACHER } else { 0 },
        },
        ProjectionKind::Dense { p_in, p_out } => GpuProjection {
            p_in: p_in.device("p_in")?.ptr(),
            p_out: p_out.device("p_out")?.ptr(),
            key_in: 0,
            key_out: 0,
            scale_in: 0.0,
            scale_out: 0.0,
            flags: 0,
        },
    })
}

impl Context {
    pub(crate) fn check_projection(&self, shape: &LayerShape, train: &TrainFactors<'_>, proj: &ProjectionSpec<'_>) -> Result<TrainDims> {
        let space = self.space();
        let d = vo::train(OP, shape, train, space)?;
        check_spec(space, proj, d.d_in + d.has_bias as u64, d.d_out, OP)?;
        self.check_proj_ptrs(proj)?;
        self.check_device_ptrs(&[("a", Some(&train.a)), ("b", Some(&train.b)), ("mask", train.mask.as_ref())])?;
        Ok(d)
    }

    pub(super) fn check_proj_ptrs(&self, proj: &ProjectionSpec<'_>) -> Result<()> {
        if let ProjectionKind::Dense { p_in, p_out } = &proj.kind {
            self.check_device_ptrs(&[("p_in", Some(p_in)), ("p_out", Some(p_out))])?;
        }
        Ok(())
    }

    /// Validates an embedding layer (on the CPU backends including its ids' range).
    pub(super) fn check_embedding(&self, l: &EmbeddingLayer<'_>, op: &'static str) -> Result<TrainDims> {
        let space = self.space();
        let d = check_tokens(space, &l.shape, &l.train, op)?;
        check_spec(space, &l.proj, d.d_in, d.d_out, op)?;
        self.check_proj_ptrs(&l.proj)?;
        self.check_device_ptrs(&[("ids", Some(&l.train.ids)), ("b", Some(&l.train.b)), ("mask", l.train.mask.as_ref())])?;
        if space == Space::Host {
            check_host_ids(&|| "ids".to_string(), host_ids(&l.train.ids)?, host_u8("mask", l.train.mask.as_ref())?, d.t, d.d_in)?;
        }
        Ok(d)
    }

    /// Projected per-sample gradients of one layer (MATH.md §3):
    /// `out[n·row_stride + offset + o·k_i + i] = beta·out + scale·Ĝ_n[o, i]`,
    /// `Ĝ_n = Σ_t (P_o b_{n,t})(P_i a_{n,t})ᵀ`; `out` f32 `[N, row_stride]`, exactly
    /// `N·row_stride` long, `offset + k_o·k_i ≤ row_stride`. Columns outside the layer's range
    /// are never touched. On a GPU: one fused kernel (P generated in-kernel for `Random`) plus
    /// a fixed-order finalize; `Ĝ` is the only thing written.
    pub fn kron_project(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        proj: &ProjectionSpec<'_>,
        out: &mut TensorMut<'_>,
        cols: OutColumns,
        acc: Accumulate,
    ) -> Result<()> {
        let layer = ProjectInput::Linear(ProjectLayer { shape: *shape, train: *train, proj: *proj });
        self.project_at(&[layer], &[cols.offset], cols.row_stride, out, acc)
    }

    /// [`kron_project`](Self::kron_project) of an embedding layer (see the
    /// [module doc](crate::projection)): `shape.d_in` is the vocabulary size `V`, `train.ids
    /// [N, T]` i32, `Ĝ_n = Σ_t (P_o b_{n,t})(P_i[:, x_{n,t}])ᵀ`, `P_i ∈ R^{k_i × V}`. Kept ids
    /// outside `[0, V)`: a typed error on the CPU backends, NaN in that sample's columns on a
    /// GPU. On a GPU: one fused kernel (a column gather instead of the A-side projection) plus
    /// the finalize, bit for bit the dense kernel on one-hot activations.
    pub fn kron_project_embedding(
        &self,
        shape: &LayerShape,
        train: &TokenFactors<'_>,
        proj: &ProjectionSpec<'_>,
        out: &mut TensorMut<'_>,
        cols: OutColumns,
        acc: Accumulate,
    ) -> Result<()> {
        let layer = ProjectInput::Embedding(EmbeddingLayer { shape: *shape, train: *train, proj: *proj });
        self.project_at(&[layer], &[cols.offset], cols.row_stride, out, acc)
    }

    /// Several layers into one `[N, Σ_l k_o^l·k_i^l]` output, layer `l` at column offset
    /// `Σ_{l'<l} k_o^{l'}·k_i^{l'}` (caller order). All layers need the same `N`. Layers are
    /// [`ProjectLayer`]s, [`EmbeddingLayer`]s, or a mix as [`ProjectInput`]s.
    pub fn kron_project_layers<'a, L>(&self, layers: &[L], out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()>
    where
        L: Copy + Into<ProjectInput<'a>>,
    {
        let layers: Vec<ProjectInput<'a>> = layers.iter().map(|&l| l.into()).collect();
        let mut offsets = Vec::with_capacity(layers.len());
        let mut total = 0u64;
        for l in &layers {
            offsets.push(total);
            total = v::add("Σ k_o*k_i", total, l.proj().width())?;
        }
        self.project_at(&layers, &offsets, total, out, acc)
    }

    fn project_at(&self, layers: &[ProjectInput<'_>], offsets: &[u64], ld: u64, out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let first = layers.first().ok_or(GhostError::ZeroSize { what: "layers" })?;
        let n = first.n();
        let mut checked = Vec::with_capacity(layers.len());
        for (l, &offset) in layers.iter().zip(offsets) {
            let dims = match l {
                ProjectInput::Linear(l) => self.check_projection(&l.shape, &l.train, &l.proj)?,
                ProjectInput::Embedding(l) => self.check_embedding(l, OP)?,
            };
            if dims.n != n {
                return Err(GhostError::InvalidArgument { what: "layers", reason: format!("all layers need the same N: {} vs {n}", dims.n) });
            }
            let proj = l.proj();
            let end = v::add("offset + k_o*k_i", offset, proj.width())?;
            if end > ld {
                return Err(GhostError::InvalidArgument {
                    what: "out columns",
                    reason: format!("offset {offset} + k_o·k_i {} exceeds row_stride {ld}", proj.width()),
                });
            }
            checked.push(Checked { dims, k_i: proj.k_i, k_o: proj.k_o, offset });
        }
        v::nonzero("row_stride", ld)?;
        v::output("out", out, self.space(), v::mul("n*row_stride", n, ld)?, OP)?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let mut gl = Vec::with_capacity(layers.len());
                for (l, c) in layers.iter().zip(&checked) {
                    gl.push(gpu_layer(l, c.dims, gpu_projection(l.proj())?, c.k_i, c.k_o, c.offset)?);
                }
                let out_ptr = out.device("out")?.ptr();
                run_with_workspace(rt.as_ref(), |ws| gpu::kron_plans(&gl, out_ptr, ld, acc, ws))
            }
            backend => {
                let out = out.host("out")?;
                let reference = matches!(backend, Backend::CpuReference);
                for (l, c) in layers.iter().zip(&checked) {
                    let di = c.dims.d_in + c.dims.has_bias as u64;
                    let (p_in, p_out) = host_matrices(l.proj(), di, c.dims.d_out)?;
                    let (k_i, k_o) = (c.k_i as usize, c.k_o as usize);
                    let res = host_kron(l, &c.dims, &p_in, &p_out, k_i, k_o, reference)?;
                    cpu::write_columns(out, &res, k_o * k_i, ld as usize, c.offset as usize, acc);
                }
                Ok(())
            }
        }
    }

    /// The random matrix `which` of `layer` under `seed` (`k × d`, row-major f32), generated by
    /// this backend: on a GPU by the same device function the projection kernels use, on the
    /// CPU by [`materialize_projection`]; both are bit-identical. For `P_i` of a layer with a
    /// bias pass `d = d_in + 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn projection_matrix(&self, seed: u64, layer: u32, which: Which, k: u64, d: u64, dist: Distribution, out: &mut TensorMut<'_>) -> Result<()> {
        const OPM: &str = "projection_matrix";
        v::nonzero("k", k)?;
        v::nonzero("d", d)?;
        v::fits_i32("k", k)?;
        v::fits_i32("d", d)?;
        let len = v::mul("k*d", k, d)?;
        v::output("out", out, self.space(), len, OPM)?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let plan = gpu::materialize_plan(
                    out.device("out")?.ptr(),
                    stream_key(seed, layer, which),
                    entry_scale(k, dist),
                    dist == Distribution::Rademacher,
                    k,
                    d,
                )?;
                rt.launch(&plan)
            }
            _ => {
                fill_projection(seed, layer, which, k, d, dist, out.host("out")?);
                Ok(())
            }
        }
    }

    /// Influence scores of a block of training rows (MATH.md §4):
    /// `out[q, j] = beta·out + scale·f(Σ_c test[q, c]·train_block[j, c])` with `f` the
    /// [`ScoreMode`] (`Cosine`: `S/√train_self[j]`, `L2`: `S − ½·train_self[j]`).
    /// `test` f32 `[n_test, k]` (typically preconditioned), `train_block` f32 `[n_block, k]`,
    /// `train_self` f32 `[n_block]` (required for Cosine/L2, rejected for Dot), `out` f32
    /// `[n_test, n_block]`. Callers stream train blocks through a fixed buffer. On a GPU: one
    /// tiled `gemm_nt_f32` (fixed summation order, no split-K).
    #[allow(clippy::too_many_arguments)]
    pub fn influence_scores(
        &self,
        test: &Tensor<'_>,
        train_block: &Tensor<'_>,
        dims: ScoreDims,
        out: &mut TensorMut<'_>,
        mode: ScoreMode,
        train_self: Option<&Tensor<'_>>,
        acc: Accumulate,
    ) -> Result<()> {
        const OPS: &str = "influence_scores";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let space = self.space();
        let ScoreDims { n_test, n_block, k } = dims;
        for (what, x) in [("n_test", n_test), ("n_block", n_block), ("k", k)] {
            v::nonzero(what, x)?;
            v::fits_i32(what, x)?;
        }
        v::input("test", test, space, &[DType::F32], v::mul("n_test*k", n_test, k)?, OPS)?;
        v::input("train_block", train_block, space, &[DType::F32], v::mul("n_block*k", n_block, k)?, OPS)?;
        let mode_id = check_score_mode(mode, train_self, n_block, "[n_block]", space, OPS)?;
        v::output("out", out, space, v::mul("n_test*n_block", n_test, n_block)?, OPS)?;
        self.check_device_ptrs(&[("test", Some(test)), ("train_block", Some(train_block)), ("train_self", train_self)])?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let plan = gpu::gemm_nt_plan(
                    test.device("test")?.ptr(),
                    train_block.device("train_block")?.ptr(),
                    dev_ptr(train_self, "train_self")?,
                    out.device("out")?.ptr(),
                    n_test,
                    n_block,
                    k,
                    (k, k),
                    mode_id,
                    acc,
                )?;
                rt.launch(&plan)
            }
            backend => {
                let (te, tr) = (host_f32("test", test)?, host_f32("train_block", train_block)?);
                let ts = train_self.map(|s| host_f32("train_self", s)).transpose()?;
                let res = match backend {
                    Backend::CpuReference => cpu::scores_reference(te, tr, k as usize, mode, ts, false),
                    _ => cpu::scores_fast(te, tr, n_test as usize, n_block as usize, k as usize, mode, ts),
                };
                crate::cpu::apply_accumulate(out.host("out")?, &res, acc);
                Ok(())
            }
        }
    }

    /// Per-layer-group partial influence scores (MATH.md §4): `test` f32 `[n_test, row_stride]`
    /// and `train_block` f32 `[n_block, row_stride]` hold several layers' `ĝ` side by side (as
    /// [`kron_project_layers`](Self::kron_project_layers) writes them); for every group `g` of
    /// columns `groups[g]`:
    /// `out[g, q, j] = beta·out + scale·f(Σ_{c ∈ group g} test[q, c]·train_block[j, c])`, `out`
    /// f32 `[G, n_test, n_block]`, `f` the [`ScoreMode`] with the group's own
    /// `train_self[g, j]` (f32 `[G, n_block]`; required for Cosine/L2, rejected for Dot). Summing
    /// the groups of a partition gives [`influence_scores`](Self::influence_scores) on the whole
    /// rows (Dot). On a GPU: one `gemm_nt_f32` per group, reading the group's columns in place.
    #[allow(clippy::too_many_arguments)]
    pub fn influence_scores_groups(
        &self,
        test: &Tensor<'_>,
        train_block: &Tensor<'_>,
        n_test: u64,
        n_block: u64,
        row_stride: u64,
        groups: &[ColumnGroup],
        out: &mut TensorMut<'_>,
        mode: ScoreMode,
        train_self: Option<&Tensor<'_>>,
        acc: Accumulate,
    ) -> Result<()> {
        const OPS: &str = "influence_scores_groups";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let space = self.space();
        for (what, x) in [("n_test", n_test), ("n_block", n_block), ("row_stride", row_stride)] {
            v::nonzero(what, x)?;
            v::fits_i32(what, x)?;
        }
        let n_groups = groups.len() as u64;
        v::nonzero("groups", n_groups)?;
        for (g, c) in groups.iter().enumerate() {
            v::nonzero("groups[g].width", c.width)?;
            if c.offset.checked_add(c.width).map_or(true, |end| end > row_stride) {
                return Err(GhostError::InvalidArgument {
                    what: "groups",
                    reason: format!("group {g} (columns {} + {}) does not fit rows of {row_stride}", c.offset, c.width),
                });
            }
        }
        v::input("test", test, space, &[DType::F32], v::mul("n_test*row_stride", n_test, row_stride)?, OPS)?;
        v::input("train_block", train_block, space, &[DType::F32], v::mul("n_block*row_stride", n_block, row_stride)?, OPS)?;
        let mode_id = check_score_mode(mode, train_self, v::mul("G*n_block", n_groups, n_block)?, "[G, n_block]", space, OPS)?;
        let per = v::mul("n_test*n_block", n_test, n_block)?;
        v::output("out", out, space, v::mul("G*n_test*n_block", n_groups, per)?, OPS)?;
        self.check_device_ptrs(&[("test", Some(test)), ("train_block", Some(train_block)), ("train_self", train_self)])?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let (te, tr) = (test.device("test")?.ptr(), train_block.device("train_block")?.ptr());
                let ts = dev_ptr(train_self, "train_self")?;
                let o = out.device("out")?.ptr();
                for (g, c) in groups.iter().enumerate() {
                    let g = g as u64;
                    let plan = gpu::gemm_nt_plan(
                        te + 4 * c.offset,
                        tr + 4 * c.offset,
                        if ts == 0 { 0 } else { ts + 4 * g * n_block },
                        o + 4 * g * per,
                        n_test,
                        n_block,
                        c.width,
                        (row_stride, row_stride),
                        mode_id,
                        acc,
                    )?;
                    rt.launch(&plan)?;
                }
                Ok(())
            }
            backend => {
                let (te, tr) = (host_f32("test", test)?, host_f32("train_block", train_block)?);
                let ts = train_self.map(|s| host_f32("train_self", s)).transpose()?;
                let out = out.host("out")?;
                let (nt, nb, rs) = (n_test as usize, n_block as usize, row_stride as usize);
                let cols = |x: &[f32], rows: usize, c: &ColumnGroup| -> Vec<f32> {
                    let (o, w) = (c.offset as usize, c.width as usize);
                    (0..rows).flat_map(|r| x[r * rs + o..r * rs + o + w].iter().copied()).collect()
                };
                for (g, c) in groups.iter().enumerate() {
                    let (te_g, tr_g) = (cols(te, nt, c), cols(tr, nb, c));
                    let ts_g = ts.map(|s| &s[g * nb..(g + 1) * nb]);
                    let w = c.width as usize;
                    let res = match backend {
                        Backend::CpuReference => cpu::scores_reference(&te_g, &tr_g, w, mode, ts_g, false),
                        _ => cpu::scores_fast(&te_g, &tr_g, nt, nb, w, mode, ts_g),
                    };
                    crate::cpu::apply_accumulate(&mut out[g * nt * nb..(g + 1) * nt * nb], &res, acc);
                }
                Ok(())
            }
        }
    }
}

/// `Ĝ_n` of one validated layer on the CPU backends (the f64 reference or the fast path), f64
/// `[N, k_o·k_i]`, with host matrices `p_in [k_i, ·]` and `p_out [k_o, ·]` (the layer's own
/// projection spec is not read).
#[allow(clippy::too_many_arguments)]
pub(super) fn host_kron(l: &ProjectInput<'_>, d: &TrainDims, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize, reference: bool) -> Result<Vec<f64>> {
    Ok(match l {
        ProjectInput::Linear(l) => {
            let tr = cpu_train(l.shape, &l.train, d)?;
            if reference {
                cpu::kron_project_reference(&tr, p_in, p_out, k_i, k_o, false)
            } else {
                cpu::kron_project_fast(&tr, p_in, p_out, k_i, k_o)
            }
        }
        ProjectInput::Embedding(l) => {
            let tr = token_train(&l.train, d)?;
            if reference {
                cpu::kron_project_ids_reference(&tr, p_in, p_out, k_i, k_o, false)
            } else {
                cpu::kron_project_ids_fast(&tr, p_in, p_out, k_i, k_o)
            }
        }
    })
}

/// One validated layer as a kernel layer: its device factors with the device projection `proj`.
pub(super) fn gpu_layer(l: &ProjectInput<'_>, dims: TrainDims, proj: GpuProjection, k_i: u64, k_o: u64, offset: u64) -> Result<GpuProjectLayer> {
    let (a, b, mask, ids) = match l {
        ProjectInput::Linear(l) => (l.train.a.device("a")?.ptr(), l.train.b.device("b")?.ptr(), dev_ptr(l.train.mask.as_ref(), "mask")?, false),
        ProjectInput::Embedding(l) => (l.train.ids.device("ids")?.ptr(), l.train.b.device("b")?.ptr(), dev_ptr(l.train.mask.as_ref(), "mask")?, true),
    };
    let mut proj = proj;
    if let ProjectInput::Embedding(l) = l {
        proj.flags |= gpu::ids_flag(&l.train.ids);
    }
    Ok(GpuProjectLayer { dims, a, b, mask, ids, proj, k_i, k_o, offset })
}

/// The CPU view of validated token-id factors.
pub(super) fn token_train<'a>(t: &TokenFactors<'a>, d: &TrainDims) -> Result<cpu::TokenTrain<'a>> {
    Ok(cpu::TokenTrain {
        ids: host_ids(&t.ids)?,
        b: t.b.host("b")?,
        mask: host_u8("mask", t.mask.as_ref())?,
        n: d.n as usize,
        t: d.t as usize,
        vocab: d.d_in as usize,
        d_out: d.d_out as usize,
    })
}

/// Checks `train_self` against the score mode (required with `len` f32 for Cosine and L2, shaped
/// `shape` in the message; rejected for Dot) and returns the mode's kernel code.
fn check_score_mode(mode: ScoreMode, train_self: Option<&Tensor<'_>>, len: u64, shape: &str, space: v::Space, op: &'static str) -> Result<u32> {
    match (mode, train_self) {
        (ScoreMode::Dot, Some(_)) => {
            return Err(GhostError::InvalidArgument { what: "train_self", reason: "given but mode Dot does not use it".into() })
        }
        (ScoreMode::Cosine | ScoreMode::L2, None) => {
            return Err(GhostError::InvalidArgument { what: "train_self", reason: format!("mode {mode:?} needs train_self {shape}") })
        }
        (_, Some(s)) => {
            v::input("train_self", s, space, &[DType::F32], len, op)?;
        }
        _ => {}
    }
    Ok(match mode {
        ScoreMode::Dot => 0,
        ScoreMode::Cosine => 1,
        ScoreMode::L2 => 2,
    })
}
