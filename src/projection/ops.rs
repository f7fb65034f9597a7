//! `Context` entry points of the projection family: validate, then dispatch to the f64
//! reference, the fast CPU path or the GPU plans.

use super::generator::{entry_scale, materialize_projection, stream_key, Distribution, Which};
use super::gpu::{self, GpuProjectLayer, GpuProjection, FLAG_RADEMACHER, FLAG_RANDOM};
use super::{cpu, OutColumns, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims, ScoreMode};
use crate::buffer::{Tensor, TensorMut};
use crate::context::{cpu_train, dev_ptr, host_f32, Backend, Context};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::run_with_workspace;
use crate::ghost_dot::validate_ops::{self as vo, TrainDims};
use crate::ghost_dot::{Accumulate, LayerShape, TrainFactors};
use crate::validate as v;

const OP: &str = "kron_project";

/// A validated layer.
struct Checked {
    dims: TrainDims,
    k_i: u64,
    k_o: u64,
    offset: u64,
}

impl Context {
    pub(crate) fn check_projection(&self, shape: &LayerShape, train: &TrainFactors<'_>, proj: &ProjectionSpec<'_>) -> Result<TrainDims> {
        let space = self.space();
        let d = vo::train(OP, shape, train, space)?;
        v::nonzero("k_i", proj.k_i)?;
        v::nonzero("k_o", proj.k_o)?;
        v::fits_i32("k_i", proj.k_i)?;
        v::fits_i32("k_o", proj.k_o)?;
        v::fits_i32("k_o*k_i", v::mul("k_o*k_i", proj.k_o, proj.k_i)?)?;
        if let ProjectionKind::Dense { p_in, p_out } = &proj.kind {
            let di = d.d_in + d.has_bias as u64;
            v::input("p_in", p_in, space, &[DType::F32], v::mul("k_i*(d_in+bias)", proj.k_i, di)?, OP)?;
            v::input("p_out", p_out, space, &[DType::F32], v::mul("k_o*d_out", proj.k_o, d.d_out)?, OP)?;
            self.check_device_ptrs(&[("p_in", Some(p_in)), ("p_out", Some(p_out))])?;
        }
        self.check_device_ptrs(&[("a", Some(&train.a)), ("b", Some(&train.b)), ("mask", train.mask.as_ref())])?;
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
        let layer = ProjectLayer { shape: *shape, train: *train, proj: *proj };
        self.project_at(&[layer], &[cols.offset], cols.row_stride, out, acc)
    }

    /// Several layers into one `[N, Σ_l k_o^l·k_i^l]` output, layer `l` at column offset
    /// `Σ_{l'<l} k_o^{l'}·k_i^{l'}` (caller order). All layers need the same `N`.
    pub fn kron_project_layers(&self, layers: &[ProjectLayer<'_>], out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        let mut offsets = Vec::with_capacity(layers.len());
        let mut total = 0u64;
        for l in layers {
            offsets.push(total);
            total = v::add("Σ k_o*k_i", total, l.proj.width())?;
        }
        self.project_at(layers, &offsets, total, out, acc)
    }

    fn project_at(&self, layers: &[ProjectLayer<'_>], offsets: &[u64], ld: u64, out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let first = layers.first().ok_or(GhostError::ZeroSize { what: "layers" })?;
        let n = first.train.n;
        let mut checked = Vec::with_capacity(layers.len());
        for (l, &offset) in layers.iter().zip(offsets) {
            let dims = self.check_projection(&l.shape, &l.train, &l.proj)?;
            if dims.n != n {
                return Err(GhostError::InvalidArgument { what: "layers", reason: format!("all layers need the same N: {} vs {n}", dims.n) });
            }
            let end = v::add("offset + k_o*k_i", offset, l.proj.width())?;
            if end > ld {
                return Err(GhostError::InvalidArgument {
                    what: "out columns",
                    reason: format!("offset {offset} + k_o·k_i {} exceeds row_stride {ld}", l.proj.width()),
                });
            }
            checked.push(Checked { dims, k_i: l.proj.k_i, k_o: l.proj.k_o, offset });
        }
        v::nonzero("row_stride", ld)?;
        v::output("out", out, self.space(), v::mul("n*row_stride", n, ld)?, OP)?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let mut gl = Vec::with_capacity(layers.len());
                for (l, c) in layers.iter().zip(&checked) {
                    let proj = match &l.proj.kind {
                        ProjectionKind::Random { seed, layer, dist } => GpuProjection {
                            p_in: 0,
                            p_out: 0,
                            key_in: stream_key(*seed, *layer, Which::In),
                            key_out: stream_key(*seed, *layer, Which::Out),
                            scale_in: entry_scale(c.k_i, *dist),
                            scale_out: entry_scale(c.k_o, *dist),
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
                    };
                    gl.push(GpuProjectLayer {
                        dims: c.dims,
                        a: l.train.a.device("a")?.ptr(),
                        b: l.train.b.device("b")?.ptr(),
                        mask: dev_ptr(l.train.mask.as_ref(), "mask")?,
                        proj,
                        k_i: c.k_i,
                        k_o: c.k_o,
                        offset: c.offset,
                    });
                }
                let out_ptr = out.device("out")?.ptr();
                run_with_workspace(rt.as_ref(), |ws| gpu::kron_plans(&gl, out_ptr, ld, acc, ws))
            }
            backend => {
                let out = out.host("out")?;
                for (l, c) in layers.iter().zip(&checked) {
                    let tr = cpu_train(l.shape, &l.train, &c.dims)?;
                    let di = c.dims.d_in + c.dims.has_bias as u64;
                    let (pi, po);
                    let (p_in, p_out): (&[f32], &[f32]) = match &l.proj.kind {
                        ProjectionKind::Random { seed, layer, dist } => {
                            pi = materialize_projection(*seed, *layer, Which::In, c.k_i, di, *dist);
                            po = materialize_projection(*seed, *layer, Which::Out, c.k_o, c.dims.d_out, *dist);
                            (&pi, &po)
                        }
                        ProjectionKind::Dense { p_in, p_out } => (host_f32("p_in", p_in)?, host_f32("p_out", p_out)?),
                    };
                    let (k_i, k_o) = (c.k_i as usize, c.k_o as usize);
                    let res = match backend {
                        Backend::CpuReference => cpu::kron_project_reference(&tr, p_in, p_out, k_i, k_o, false),
                        _ => cpu::kron_project_fast(&tr, p_in, p_out, k_i, k_o),
                    };
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
                out.host("out")?.copy_from_slice(&materialize_projection(seed, layer, which, k, d, dist));
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
        match (mode, train_self) {
            (ScoreMode::Dot, Some(_)) => {
                return Err(GhostError::InvalidArgument { what: "train_self", reason: "given but mode Dot does not use it".into() })
            }
            (ScoreMode::Cosine | ScoreMode::L2, None) => {
                return Err(GhostError::InvalidArgument { what: "train_self", reason: format!("mode {mode:?} needs train_self [n_block]") })
            }
            (_, Some(s)) => {
                v::input("train_self", s, space, &[DType::F32], n_block, OPS)?;
            }
            _ => {}
        }
        v::output("out", out, space, v::mul("n_test*n_block", n_test, n_block)?, OPS)?;
        self.check_device_ptrs(&[("test", Some(test)), ("train_block", Some(train_block)), ("train_self", train_self)])?;
        self.check_out_ptr("out", out)?;
        let mode_id = match mode {
            ScoreMode::Dot => 0,
            ScoreMode::Cosine => 1,
            ScoreMode::L2 => 2,
        };
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
}
