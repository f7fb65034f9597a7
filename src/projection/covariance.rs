//! Second moments of projected gradients, accumulated on any backend (MATH.md §4): what the
//! preconditioners of [`precondition`](super::precondition) are fitted from. Callers stream
//! batches through `Accumulate { scale, beta: 1 }` (`beta = 0` for the first batch); the small
//! eigendecompositions / Cholesky factorizations then run on the CPU
//! ([`RawFisher::from_sum`](super::precondition::RawFisher::from_sum),
//! [`Kfac::from_covariances_f32`](super::precondition::Kfac::from_covariances_f32),
//! [`Kfac::set_ekfac_sum`](super::precondition::Kfac::set_ekfac_sum)).
//!
//! On a GPU every operation is one kernel writing per-CTA partial sums (a split of the reduction
//! that depends only on the shape) plus `finalize_partials_f32`, which adds them in a fixed
//! order: bitwise identical run to run and device to device, no atomics (kernels/covariance.cu).
//! The CPU backends are the f64 reference and a GEMM-based fast path (fixed row blocks merged in
//! order in f64). Symmetric results are written in full and are exactly symmetric on every
//! backend.

use super::cpu::{self, CovRows, GradRows};
use super::gpu::{self, CovSide};
use super::ops::{gpu_projection, host_ids, host_matrices};
use super::{OutColumns, ProjectInput};
use crate::buffer::{Tensor, TensorMut};
use crate::context::{dev_ptr, host_f32, host_u8, Backend, Context};
use crate::cpu::apply_accumulate;
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::{finalize_plan, run_with_workspace, Carve, FLAG_BIAS};
use crate::ghost_dot::Accumulate;
use crate::validate as v;

impl Context {
    /// Rows `ĝ_r = grads[r·row_stride + offset ..][..k]`, `r < n`, of an f32 `[n, row_stride]`
    /// buffer (the layout [`kron_project_layers`](Self::kron_project_layers) writes).
    fn check_grad_rows(&self, grads: &Tensor<'_>, n: u64, k: u64, cols: OutColumns, op: &'static str) -> Result<()> {
        v::nonzero("n", n)?;
        v::fits_i32("n", n)?;
        v::nonzero("row_stride", cols.row_stride)?;
        let end = v::add("offset + k", cols.offset, k)?;
        if end > cols.row_stride {
            return Err(GhostError::InvalidArgument {
                what: "grad columns",
                reason: format!("offset {} + k {k} exceeds row_stride {}", cols.offset, cols.row_stride),
            });
        }
        v::input("grads", grads, self.space(), &[DType::F32], v::mul("n*row_stride", n, cols.row_stride)?, op)?;
        self.check_device_ptrs(&[("grads", Some(grads))])
    }

    /// Raw projected Fisher (MATH.md §4, SYRK): `out = beta·out + scale·Σ_{r<n} ĝ_r ĝ_rᵀ`, `out`
    /// f32 `[k, k]` written in full (exactly symmetric), `ĝ_r` the `k` values at
    /// `grads[r·row_stride + offset]`, `grads` f32 `[n, row_stride]`. With `scale = 1/N_total`
    /// over all batches this is `F`; or accumulate the plain sum and pass the count to
    /// [`RawFisher::from_sum`](super::precondition::RawFisher::from_sum). On a GPU:
    /// `syrk_partial_f32` (64×64 tiles of the upper triangle, mirrored) and the fixed-order
    /// finalize.
    pub fn projected_fisher(&self, grads: &Tensor<'_>, n: u64, k: u64, cols: OutColumns, out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        const OP: &str = "projected_fisher";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        v::nonzero("k", k)?;
        let kk = v::fits_i32("k*k", v::mul("k*k", k, k)?)? as u64;
        self.check_grad_rows(grads, n, k, cols, OP)?;
        v::output("out", out, self.space(), kk, OP)?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let (g, out_ptr) = (grads.device("grads")?.ptr(), out.device("out")?.ptr());
                run_with_workspace(rt.as_ref(), |ws| {
                    let mut carve = Carve::default();
                    let (plan, partial, s) = gpu::syrk_plan(g, n, k, cols.row_stride, cols.offset, ws, &mut carve)?;
                    Ok((vec![plan, finalize_plan(partial, out_ptr, kk, s, acc)?], carve.bytes))
                })
            }
            backend => {
                let g = GradRows { grads: host_f32("grads", grads)?, n: n as usize, ld: cols.row_stride as usize, offset: cols.offset as usize };
                let res = match backend {
                    Backend::CpuReference => cpu::fisher_reference(&g, k as usize, false),
                    _ => cpu::fisher_fast(&g, k as usize),
                };
                apply_accumulate(out.host("out")?, &res, acc);
                Ok(())
            }
        }
    }

    /// K-FAC factors of one layer (MATH.md §4), over every kept token of every sample:
    /// `c_a = beta·c_a + scale·Σ_{n,t} (P_i a_{n,t})(P_i a_{n,t})ᵀ` (f32 `[k_i, k_i]`; `a`
    /// augmented with 1 when the layer has a bias, one-hot `e_{x_{n,t}}` for an
    /// [`EmbeddingLayer`](super::EmbeddingLayer)) and
    /// `c_b = beta·c_b + scale·Σ_{n,t} (P_o b_{n,t})(P_o b_{n,t})ᵀ` (f32 `[k_o, k_o]`), both
    /// written in full, exactly symmetric. The projections are computed on the fly (in-kernel
    /// for random `P`). Embedding ids follow
    /// [`kron_project_embedding`](Self::kron_project_embedding): out of range is an error on the
    /// CPU, NaN in `c_a` on a GPU. On a GPU, per side: for `k ≤ 64` (and for embedding ids) one
    /// fused `kfac_cov_<dt>` / `kfac_cov_ids_f32`, the projected tokens never leaving shared
    /// memory; for a dense side with `k > 64`, where the fused kernel would project every token
    /// once per pair of 64-row tiles of `P`, `project_rows_<dt>` projects each token once into
    /// the workspace (`N·T·k` f32; stream large batches with `beta = 1`) and `syrk_partial_f32`
    /// forms the factor. Then one fixed-order finalize per side.
    pub fn kfac_covariances<'a>(&self, layer: impl Into<ProjectInput<'a>>, c_a: &mut TensorMut<'_>, c_b: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        const OP: &str = "kfac_covariances";
        let layer = layer.into();
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let d = match &layer {
            ProjectInput::Linear(l) => self.check_projection(&l.shape, &l.train, &l.proj)?,
            ProjectInput::Embedding(l) => self.check_embedding(l, OP)?,
        };
        let proj = *layer.proj();
        let (k_i, k_o) = (proj.k_i, proj.k_o);
        let kii = v::fits_i32("k_i*k_i", v::mul("k_i*k_i", k_i, k_i)?)? as u64;
        let koo = v::fits_i32("k_o*k_o", v::mul("k_o*k_o", k_o, k_o)?)? as u64;
        let space = self.space();
        v::output("c_a", c_a, space, kii, OP)?;
        v::output("c_b", c_b, space, koo, OP)?;
        self.check_out_ptr("c_a", c_a)?;
        self.check_out_ptr("c_b", c_b)?;
        let rows = v::mul("n*t", d.n, d.t)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let gp = gpu_projection(&proj)?;
                let (x, ids, b, mask) = match &layer {
                    ProjectInput::Linear(l) => (l.train.a.device("a")?.ptr(), false, l.train.b.device("b")?.ptr(), dev_ptr(l.train.mask.as_ref(), "mask")?),
                    ProjectInput::Embedding(l) => (l.train.ids.device("ids")?.ptr(), true, l.train.b.device("b")?.ptr(), dev_ptr(l.train.mask.as_ref(), "mask")?),
                };
                let ids_flags = match &layer {
                    ProjectInput::Embedding(l) => super::gpu::ids_flag(&l.train.ids),
                    ProjectInput::Linear(_) => 0,
                };
                let a_side = CovSide {
                    x,
                    ids,
                    dtype: d.dtype,
                    mask,
                    p: gp.p_in,
                    key: gp.key_in,
                    scale: gp.scale_in,
                    flags: gp.flags | if d.has_bias { FLAG_BIAS } else { 0 } | ids_flags,
                    rows,
                    width: d.d_in,
                    k: k_i,
                };
                let b_side = CovSide { x: b, ids: false, dtype: d.dtype, mask, p: gp.p_out, key: gp.key_out, scale: gp.scale_out, flags: gp.flags, rows, width: d.d_out, k: k_o };
                let (ca, cb) = (c_a.device("c_a")?.ptr(), c_b.device("c_b")?.ptr());
                run_with_workspace(rt.as_ref(), |ws| {
                    let mut carve = Carve::default();
                    let (mut plans, mut finals) = (Vec::new(), Vec::new());
                    for (side, out, kk) in [(&a_side, ca, kii), (&b_side, cb, koo)] {
                        let s = gpu::cov_side_splits(side)?;
                        let partial = ws + carve.take(v::mul("covariance partial bytes", v::mul("splits*k*k", s, kk)?, 4)?)?;
                        plans.extend(gpu::cov_side_plans(side, partial, ws, &mut carve)?);
                        finals.push(finalize_plan(partial, out, kk, s, acc)?);
                    }
                    plans.extend(finals);
                    Ok((plans, carve.bytes))
                })
            }
            backend => {
                let di = d.d_in + d.has_bias as u64;
                let (p_in, p_out) = host_matrices(&proj, di, d.d_out)?;
                let (x, b, mask) = match &layer {
                    ProjectInput::Linear(l) => (
                        CovRows::Dense { x: l.train.a.host("a")?, width: d.d_in as usize, ones: d.has_bias },
                        l.train.b.host("b")?,
                        host_u8("mask", l.train.mask.as_ref())?,
                    ),
                    ProjectInput::Embedding(l) => (
                        CovRows::Ids { ids: host_ids(&l.train.ids)?, vocab: d.d_in as usize },
                        l.train.b.host("b")?,
                        host_u8("mask", l.train.mask.as_ref())?,
                    ),
                };
                let y = CovRows::Dense { x: b, width: d.d_out as usize, ones: false };
                let (rows, k_i, k_o) = (rows as usize, k_i as usize, k_o as usize);
                let (ra, rb) = match backend {
                    Backend::CpuReference => (
                        cpu::kfac_cov_reference(&x, mask, rows, &p_in, k_i, false),
                        cpu::kfac_cov_reference(&y, mask, rows, &p_out, k_o, false),
                    ),
                    _ => (cpu::kfac_cov_fast(&x, mask, rows, &p_in, k_i), cpu::kfac_cov_fast(&y, mask, rows, &p_out, k_o)),
                };
                apply_accumulate(c_a.host("c_a")?, &ra, acc);
                apply_accumulate(c_b.host("c_b")?, &rb, acc);
                Ok(())
            }
        }
    }

    /// EK-FAC eigenvalue correction (MATH.md §4): `out = beta·out + scale·Σ_{r<n} (Q_Bᵀ Ĝ_r
    /// Q_A)^{⊙2}`, `out` f32 `[k_o, k_i]` (row-major, `out[o·k_i + i]`), `Ĝ_r` the row-major
    /// `k_o × k_i` matrix `grads[r·row_stride + offset ..][..k_o·k_i]`, `q_b` f32 `[k_o, k_o]`
    /// and `q_a` f32 `[k_i, k_i]` row-major with the eigenvectors as columns (from
    /// [`Kfac::eigenvectors_f32`](super::precondition::Kfac::eigenvectors_f32)). Accumulate
    /// the sum and pass it with the count to
    /// [`Kfac::set_ekfac_sum`](super::precondition::Kfac::set_ekfac_sum). On a GPU: one fused
    /// `ekfac_partial_f32` (both rotations of a 64×64 tile in shared memory, squared and summed
    /// over a split of the samples) + the fixed-order finalize.
    #[allow(clippy::too_many_arguments)]
    pub fn ekfac_eigen_correction(
        &self,
        grads: &Tensor<'_>,
        n: u64,
        k_o: u64,
        k_i: u64,
        cols: OutColumns,
        q_b: &Tensor<'_>,
        q_a: &Tensor<'_>,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
    ) -> Result<()> {
        const OP: &str = "ekfac_eigen_correction";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        v::nonzero("k_o", k_o)?;
        v::nonzero("k_i", k_i)?;
        let k = v::fits_i32("k_o*k_i", v::mul("k_o*k_i", k_o, k_i)?)? as u64;
        let space = self.space();
        self.check_grad_rows(grads, n, k, cols, OP)?;
        v::input("q_b", q_b, space, &[DType::F32], v::fits_i32("k_o*k_o", v::mul("k_o*k_o", k_o, k_o)?)? as u64, OP)?;
        v::input("q_a", q_a, space, &[DType::F32], v::fits_i32("k_i*k_i", v::mul("k_i*k_i", k_i, k_i)?)? as u64, OP)?;
        self.check_device_ptrs(&[("q_b", Some(q_b)), ("q_a", Some(q_a))])?;
        v::output("out", out, space, k, OP)?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let (g, qb, qa) = (grads.device("grads")?.ptr(), q_b.device("q_b")?.ptr(), q_a.device("q_a")?.ptr());
                let out_ptr = out.device("out")?.ptr();
                run_with_workspace(rt.as_ref(), |ws| {
                    let mut carve = Carve::default();
                    let (plan, partial, s) = gpu::ekfac_plan(g, cols.row_stride, cols.offset, qb, qa, n, k_o, k_i, ws, &mut carve)?;
                    Ok((vec![plan, finalize_plan(partial, out_ptr, k, s, acc)?], carve.bytes))
                })
            }
            backend => {
                let g = GradRows { grads: host_f32("grads", grads)?, n: n as usize, ld: cols.row_stride as usize, offset: cols.offset as usize };
                let (qb, qa) = (host_f32("q_b", q_b)?, host_f32("q_a", q_a)?);
                let res = match backend {
                    Backend::CpuReference => cpu::ekfac_reference(&g, k_o as usize, k_i as usize, qb, qa, false),
                    _ => cpu::ekfac_fast(&g, k_o as usize, k_i as usize, qb, qa),
                };
                apply_accumulate(out.host("out")?, &res, acc);
                Ok(())
            }
        }
    }
}
