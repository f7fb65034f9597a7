//! Data value embedding (DVEmb, MATH.md §5): trajectory-specific leave-one-out influence of
//! every training sample at every SGD step, from projected per-sample gradients, by one reverse
//! sweep over the training steps.
//!
//! # Contract
//! Training ran `w_{t+1} = w_t − η_t c_t Σ_{j∈B_t} ∇ℓ_j(w_t)` for steps `t = 0 … T−1`, with
//! `c_t = 1` ([`LossReduction::Sum`]) or `c_t = 1/|B_t|` ([`LossReduction::Mean`]). Per layer
//! (cross-layer terms dropped) let `G_t ∈ R^{b_t×k}` hold the projected per-sample gradients of
//! step `t` (rows of one layer's column block of the `[N, Σk]` output of
//! [`kron_project_layers`](crate::Context::kron_project_layers)), and approximate the Hessian of
//! step `t` by Gauss–Newton `H_t ≈ G_tᵀG_t`. Removing sample `z` from step `s` moves
//! `w_{s+1}` by `+η_s c_s g_z`, and to first order the final weights by `P_{s+1} η_s c_s g_z`,
//! with the propagator
//! ```text
//! P_t = (I − η_{T−1}c_{T−1} G_{T−1}ᵀG_{T−1}) ⋯ (I − η_t c_t G_tᵀG_t)     (latest step leftmost),
//! P_T = I,   P_t = P_{t+1} (I − η_t c_t G_tᵀG_t).
//! ```
//! The reverse sweep keeps `M_t = I − P_t` (k×k, not symmetric):
//! ```text
//! M ← 0                                    (M_T)
//! for t = T−1 down to 0:
//!     E_t = η_t (G_t − G_t Mᵀ)            (row z: η_t (I − M_{t+1}) g_z = η_t P_{t+1} g_z)
//!     M  ← M + c_t E_tᵀ G_t                (= M_{t+1} + η_t c_t (I − M_{t+1}) G_tᵀG_t = I − P_t)
//! ```
//! so `E_t[z] = η_t P_{t+1} g_z` is the **data value embedding** of sample z at step t, and
//! `score(z at t; test) = <g_test, E_t[z]>` with `g_test` the test gradient at the final model,
//! projected with the same seed ([`Context::dvemb_scores`]). `c_t · score` is the first-order
//! change `ℓ_test(w_T without z at t) − ℓ_test(w_T)` (removing z keeps the other samples'
//! weights `c_t`): positive = z at step t lowered the test loss.
//!
//! # Blocked form (derivation of the placement of `c`)
//! Take a block of consecutive steps `t ∈ [t0, t1)` with `R = Σ b_t` rows stacked in forward
//! order (`Gc`, `Ec`: `[R, k]`), and `M = M_{t1}` from the later steps. Inside the block,
//! `M_{t+1} = M + Σ_{t'>t} c_{t'} E_{t'}ᵀ G_{t'}`, hence
//! ```text
//! G_t M_{t+1}ᵀ = G_t Mᵀ + Σ_{t'>t} c_{t'} G_t G_{t'}ᵀ E_{t'}
//! E_t = η_t (G_t − X_t − Σ_{t'>t} c_{t'} K[t,t'] E_{t'}),   X = Gc Mᵀ,  K = Gc Gcᵀ
//! M_{t0} = M + Σ_t c_t E_tᵀ G_t = M + Ecᵀ diag(c) Gc
//! ```
//! `c` belongs to the **later** step `t'` of each `K` term (MATH.md states it with `c` implicit).
//! One step reads and writes the k×k `M` (intensity ≈ b/2 flop/byte, memory-bound); a block
//! amortizes `M` over `R` rows (intensity ≈ R/2) at the price of `≈ 4·P·k` extra flops, `P` the
//! number of row pairs of different steps (`≤ R²/2`).
//!
//! # Operation
//! [`Context::dvemb_layers`] (and the one-layer [`Context::dvemb_block`], the one-step
//! [`Context::dvemb_step`]): `grads` f32 `[R, row_stride]`, the rows of all given steps **in
//! forward (chronological) order** (step 0's `b_0` rows first); each layer reads columns
//! `offset .. offset + k` and owns a `k×k` f32 `M` (row-major, in/out: on entry `M` after every
//! later step — zeros before the sweep's first call, which is the **last** training step; on
//! exit `M` after these steps too). The steps are **processed latest first**; a sweep over a
//! long run calls the operation on chunks of steps going backwards in time. `e_out` f32
//! `[R, row_stride]` receives `E` in the same columns (other columns are never touched), so the
//! scores of all layers are one GEMM of the test gradients against `e_out`.
//!
//! Algorithm ([`Blocking`]): `PerStep` is the recursion above, one step at a time; `MaxRows(r)`
//! groups consecutive steps (from the latest backwards) into blocks of at most `r` rows (a step
//! with more rows is a block alone) and runs the blocked form; `Auto` picks `MaxRows` by `k`.
//! Both give the same result up to rounding.
//!
//! Precision: `M` is f32 on the CPU fast path and on the GPU (the reference backend also accepts
//! an f64 `M`). Each update adds one rounding of relative size `2^-24` to every entry of `M`,
//! so after `n` updates the error is at most `n·2^-24·Σ|increments|` (typically `√n` times
//! that); a blocked sweep updates `M` once per block instead of once per step, i.e. fewer
//! roundings. Over 10⁵ steps the worst-case relative error of `M` reaches ~10⁻²: for very long
//! sweeps keep the blocks large.
//!
//! Determinism: fixed reduction orders everywhere, no atomics; results are bitwise identical
//! run to run (and on the CPU whatever the thread count).

pub mod cpu;
pub(crate) mod gpu;

use crate::buffer::{Tensor, TensorMut};
use crate::context::{host_f32, Backend, Context};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::run_with_workspace;
use crate::ghost_dot::Accumulate;
use crate::projection::{OutColumns, ScoreDims, ScoreMode};
use crate::validate as v;

/// How the per-sample losses of a step are combined: the `c_t` of the update
/// `w ← w − η_t c_t Σ_j ∇ℓ_j`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReduction {
    /// `c_t = 1`.
    Sum,
    /// `c_t = 1 / b_t` (`b_t` rows in step t).
    Mean,
}

impl LossReduction {
    /// `c_t` of a step with `rows` samples.
    pub fn c(self, rows: u64) -> f64 {
        match self {
            LossReduction::Sum => 1.0,
            LossReduction::Mean => 1.0 / rows as f64,
        }
    }
}

/// The training steps of one call, in forward (chronological) order.
#[derive(Debug, Clone, Copy)]
pub struct DvembSteps<'a> {
    /// Rows (samples) of each step, `≥ 1`; `R = Σ rows`.
    pub rows: &'a [u64],
    /// Learning rate of each step (finite, also as f32).
    pub etas: &'a [f64],
    pub loss: LossReduction,
}

/// Which algorithm runs the sweep (same result up to rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// One step at a time: two GEMM-like passes over `M` per step (memory-bound).
    PerStep,
    /// Blocks of consecutive steps with at most this many rows (`≥ 1`; a larger step is a block
    /// by itself), processed with the blocked form.
    MaxRows(u64),
    /// `MaxRows(auto_block_rows(k))`.
    Auto,
}

/// Rows per block chosen by [`Blocking::Auto`] for width `k`: `clamp(k/8, 64, 512)`. A block
/// of `R` rows executes `≈ R/(2k)` more flops than the recursion (the `K` strips and the
/// triangular sweep), ~6 % here, and reads `M` once per `R` rows instead of once per step:
/// intensity `≈ R/2 ≥ 32` flop/byte, compute-bound on a GPU. On the CPU bench (k = 256, 1024)
/// this was the fastest of 32…256 rows.
pub fn auto_block_rows(k: u64) -> u64 {
    (k / 8).clamp(64, 512)
}

/// One layer of [`Context::dvemb_layers`]: columns `offset .. offset + k` of `grads` / `e_out`,
/// and its `k×k` row-major `M` (f32; the reference backend also takes f64).
#[derive(Debug)]
pub struct DvembLayer<'a, 'b> {
    pub offset: u64,
    pub k: u64,
    pub m: &'b mut TensorMut<'a>,
}

/// What a call did (per call, summed over layers).
#[derive(Debug, Clone, PartialEq)]
pub struct DvembReport {
    /// Per layer, the step ranges of its blocks (one per step for `PerStep`), latest first.
    pub blocks: Vec<Vec<std::ops::Range<usize>>>,
    /// `Σ_layers 4·R·k²`: the flops of the per-step recursion (the work any algorithm must do).
    pub recursion_flops: f64,
    /// Flops the chosen algorithm executes (adds the `K` and triangular-sweep terms).
    pub executed_flops: f64,
}

/// Step ranges `[a, b)` of the blocks, latest block first.
pub(crate) fn plan_blocks(rows: &[u64], blocking: Blocking, k: u64) -> Vec<std::ops::Range<usize>> {
    let max_rows = match blocking {
        Blocking::PerStep => 0,
        Blocking::MaxRows(r) => r,
        Blocking::Auto => auto_block_rows(k),
    };
    let mut blocks = Vec::new();
    let mut end = rows.len();
    while end > 0 {
        let mut start = end - 1;
        let mut total = rows[start];
        while start > 0 && total.saturating_add(rows[start - 1]) <= max_rows {
            start -= 1;
            total += rows[start];
        }
        blocks.push(start..end);
        end = start;
    }
    blocks
}

/// Row offsets of the steps: `starts[s]` = first row of step s, `starts[S] = R`.
pub(crate) fn row_starts(rows: &[u64]) -> Vec<u64> {
    let mut starts = Vec::with_capacity(rows.len() + 1);
    let mut acc = 0u64;
    starts.push(0);
    for &r in rows {
        acc += r;
        starts.push(acc);
    }
    starts
}

/// Flops of one block of steps of width k: `(per-step recursion, executed)`.
fn block_flops(rows: &[u64], k: u64) -> (f64, f64) {
    let r: u64 = rows.iter().sum();
    let k = k as f64;
    let base = 4.0 * r as f64 * k * k;
    // Row pairs of different steps: Σ_t b_t · (rows after t).
    let mut later = 0u64;
    let mut pairs = 0f64;
    for &b in rows.iter().rev() {
        pairs += b as f64 * later as f64;
        later += b;
    }
    (base, base + 4.0 * pairs * k)
}

/// A validated layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerCols {
    pub offset: u64,
    pub k: u64,
}

/// Validated steps: rows, row starts, f32 η and c per step.
#[derive(Debug, Clone)]
pub(crate) struct CheckedSteps {
    pub rows: Vec<u64>,
    pub starts: Vec<u64>,
    pub etas: Vec<f64>,
    pub cs: Vec<f64>,
}

impl CheckedSteps {
    pub fn total_rows(&self) -> u64 {
        *self.starts.last().expect("starts has S + 1 entries")
    }
}

fn check_steps(steps: &DvembSteps<'_>) -> Result<CheckedSteps> {
    if steps.rows.is_empty() {
        return Err(GhostError::ZeroSize { what: "steps" });
    }
    if steps.etas.len() != steps.rows.len() {
        return Err(GhostError::LengthMismatch { what: "etas", expected: steps.rows.len() as u64, got: steps.etas.len() as u64 });
    }
    let mut total = 0u64;
    for (s, (&r, &eta)) in steps.rows.iter().zip(steps.etas).enumerate() {
        if r == 0 {
            return Err(GhostError::InvalidArgument { what: "rows", reason: format!("step {s} has 0 rows (every step needs ≥ 1)") });
        }
        if !eta.is_finite() || !(eta as f32).is_finite() {
            return Err(GhostError::InvalidArgument { what: "etas", reason: format!("etas[{s}] = {eta} is not finite (in f32)") });
        }
        total = v::add("Σ rows", total, r)?;
    }
    v::fits_i32("Σ rows (R)", total)?;
    Ok(CheckedSteps {
        rows: steps.rows.to_vec(),
        starts: row_starts(steps.rows),
        etas: steps.etas.to_vec(),
        cs: steps.rows.iter().map(|&r| steps.loss.c(r)).collect(),
    })
}

fn ranges_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

impl Context {
    /// One DVEmb reverse step of one layer (MATH.md §5): `E = η(G − G Mᵀ)`, then
    /// `M ← M + c·Eᵀ G`, `c` from `loss`. `grads` f32 `[batch, cols.row_stride]`, the layer at
    /// columns `cols.offset .. + k`; `m` f32 `[k, k]`; `e_out` f32 `[batch, row_stride]` (same
    /// columns). See [`dvemb_layers`](Self::dvemb_layers).
    #[allow(clippy::too_many_arguments)]
    pub fn dvemb_step(
        &self,
        grads: &Tensor<'_>,
        cols: OutColumns,
        batch: u64,
        k: u64,
        eta: f64,
        loss: LossReduction,
        m: &mut TensorMut<'_>,
        e_out: &mut TensorMut<'_>,
    ) -> Result<DvembReport> {
        let steps = DvembSteps { rows: &[batch], etas: &[eta], loss };
        self.dvemb_block(grads, cols, k, &steps, m, e_out, Blocking::PerStep)
    }

    /// DVEmb reverse sweep of one layer over several steps (forward order, processed latest
    /// first). See [`dvemb_layers`](Self::dvemb_layers).
    #[allow(clippy::too_many_arguments)]
    pub fn dvemb_block(
        &self,
        grads: &Tensor<'_>,
        cols: OutColumns,
        k: u64,
        steps: &DvembSteps<'_>,
        m: &mut TensorMut<'_>,
        e_out: &mut TensorMut<'_>,
        blocking: Blocking,
    ) -> Result<DvembReport> {
        let mut layers = [DvembLayer { offset: cols.offset, k, m }];
        self.dvemb_layers(grads, cols.row_stride, &mut layers, steps, e_out, blocking)
    }

    /// DVEmb reverse sweep of several layers over several steps (MATH.md §5, module docs):
    /// for every layer, every step t from the last given one down to the first,
    /// `E_t = η_t (G_t − G_t Mᵀ)` into `e_out`'s rows of step t, then `M ← M + c_t E_tᵀ G_t`.
    ///
    /// `grads`, `e_out`: f32 `[R, row_stride]`, `R = Σ steps.rows`, rows in forward step order.
    /// Layers: disjoint column ranges, each with its own `M` (f32 `[k, k]`; f64 also accepted by
    /// the reference backend). Layers are independent (cross-layer terms dropped); they run one
    /// after the other. On a GPU every buffer is device memory and nothing is synchronized.
    pub fn dvemb_layers(
        &self,
        grads: &Tensor<'_>,
        row_stride: u64,
        layers: &mut [DvembLayer<'_, '_>],
        steps: &DvembSteps<'_>,
        e_out: &mut TensorMut<'_>,
        blocking: Blocking,
    ) -> Result<DvembReport> {
        const OP: &str = "dvemb";
        let space = self.space();
        let st = check_steps(steps)?;
        if let Blocking::MaxRows(0) = blocking {
            return Err(GhostError::ZeroSize { what: "Blocking::MaxRows" });
        }
        if layers.is_empty() {
            return Err(GhostError::ZeroSize { what: "layers" });
        }
        v::nonzero("row_stride", row_stride)?;
        let r = st.total_rows();
        let len = v::mul("R*row_stride", r, row_stride)?;
        v::input("grads", grads, space, &[DType::F32], len, OP)?;
        v::output("e_out", e_out, space, len, OP)?;
        let mut cols = Vec::with_capacity(layers.len());
        for l in layers.iter() {
            v::nonzero("k", l.k)?;
            v::fits_i32("k", l.k)?;
            let kk = v::mul("k*k", l.k, l.k)?;
            v::fits_i32("k*k", kk)?;
            let end = v::add("offset + k", l.offset, l.k)?;
            if end > row_stride {
                return Err(GhostError::InvalidArgument {
                    what: "layer columns",
                    reason: format!("offset {} + k {} exceeds row_stride {row_stride}", l.offset, l.k),
                });
            }
            let m_ok = match (&self.backend, l.m.dtype()) {
                (Backend::CpuReference, DType::F64) => v::output_f64("m", l.m, space, kk, OP),
                _ => v::output("m", l.m, space, kk, OP),
            };
            m_ok?;
            if let Some(other) = cols.iter().find(|c: &&LayerCols| ranges_overlap((c.offset, c.k), (l.offset, l.k))) {
                return Err(GhostError::InvalidArgument {
                    what: "layer columns",
                    reason: format!("columns {}..{} overlap {}..{}", l.offset, end, other.offset, other.offset + other.k),
                });
            }
            cols.push(LayerCols { offset: l.offset, k: l.k });
        }
        // Device buffers: known to the runtime, and no output aliases an input or another output.
        self.check_device_ptrs(&[("grads", Some(grads))])?;
        self.check_out_ptr("e_out", e_out)?;
        if let Backend::Gpu(_) = &self.backend {
            let g = grads.device("grads")?;
            let e = e_out.device("e_out")?;
            let mut spans = vec![("grads", (g.ptr(), g.len() * 4)), ("e_out", (e.ptr(), e.len() * 4))];
            for l in layers.iter() {
                self.check_out_ptr("m", l.m)?;
                let d = l.m.device("m")?;
                spans.push(("m", (d.ptr(), d.len() * 4)));
            }
            for i in 0..spans.len() {
                for j in 0..i {
                    if ranges_overlap(spans[i].1, spans[j].1) {
                        return Err(GhostError::InvalidArgument {
                            what: spans[i].0,
                            reason: format!("device memory overlaps `{}`", spans[j].0),
                        });
                    }
                }
            }
        }

        let mut report = DvembReport { blocks: Vec::new(), recursion_flops: 0.0, executed_flops: 0.0 };
        let mut per_layer_blocks = Vec::with_capacity(layers.len());
        for c in &cols {
            let blocks = plan_blocks(&st.rows, blocking, c.k);
            for b in &blocks {
                let (base, exec) = block_flops(&st.rows[b.clone()], c.k);
                report.recursion_flops += base;
                report.executed_flops += exec;
            }
            per_layer_blocks.push(blocks);
        }
        report.blocks = per_layer_blocks.clone();

        match &self.backend {
            Backend::Gpu(rt) => {
                let g = grads.device("grads")?.ptr();
                let e = e_out.device("e_out")?.ptr();
                let mut glayers = Vec::with_capacity(layers.len());
                for (l, (c, blocks)) in layers.iter().zip(cols.iter().zip(&per_layer_blocks)) {
                    glayers.push(gpu::GpuDvembLayer { cols: *c, m: l.m.device("m")?.ptr(), blocks: blocks.clone() });
                }
                run_with_workspace(rt.as_ref(), |ws| gpu::dvemb_plans(g, e, row_stride, &glayers, &st, ws))?;
            }
            Backend::CpuReference => {
                let gh = host_f32("grads", grads)?;
                let eh = e_out.host("e_out")?;
                for (l, (c, blocks)) in layers.iter_mut().zip(cols.iter().zip(&per_layer_blocks)) {
                    let mut m64: Vec<f64> = match &mut *l.m {
                        TensorMut::HostF64(m) => m.to_vec(),
                        other => other.host("m")?.iter().map(|&x| x as f64).collect(),
                    };
                    let layout = cpu::Layout { row_stride: row_stride as usize, offset: c.offset as usize, k: c.k as usize };
                    let ev = cpu::reference_sweep(gh, layout, &st, blocks, &mut m64);
                    for (row, chunk) in ev.chunks_exact(layout.k).enumerate() {
                        let dst = &mut eh[row * layout.row_stride + layout.offset..][..layout.k];
                        dst.iter_mut().zip(chunk).for_each(|(d, &x)| *d = x as f32);
                    }
                    match &mut *l.m {
                        TensorMut::HostF64(m) => m.copy_from_slice(&m64),
                        other => other.host("m")?.iter_mut().zip(&m64).for_each(|(d, &x)| *d = x as f32),
                    }
                }
            }
            Backend::CpuFast => {
                let gh = host_f32("grads", grads)?;
                let eh = e_out.host("e_out")?;
                for (l, (c, blocks)) in layers.iter_mut().zip(cols.iter().zip(&per_layer_blocks)) {
                    let layout = cpu::Layout { row_stride: row_stride as usize, offset: c.offset as usize, k: c.k as usize };
                    cpu::fast_sweep(gh, layout, &st, blocks, l.m.host("m")?, eh);
                }
            }
        }
        Ok(report)
    }

    /// DVEmb scores `out[q, r] = beta·out + scale·<test[q], e[r]>` (MATH.md §5): `test` f32
    /// `[n_test, width]` (test gradients at the final model, projected with the same seed and
    /// layout as the training gradients), `e` f32 `[n_rows, width]` (the `e_out` of
    /// [`dvemb_layers`](Self::dvemb_layers) with `row_stride = width`: the sum over layers comes
    /// for free), `out` f32 `[n_test, n_rows]`. This is
    /// [`influence_scores`](Self::influence_scores) in [`ScoreMode::Dot`].
    pub fn dvemb_scores(&self, test: &Tensor<'_>, e: &Tensor<'_>, dims: ScoreDims, out: &mut TensorMut<'_>, acc: Accumulate) -> Result<()> {
        self.influence_scores(test, e, dims, out, ScoreMode::Dot, None, acc)
    }
}
