//! Launch plans of kernels/dvemb.cu. Argument lists mirror the kernel declarations.
//!
//! Per layer, per block of steps (latest block first), all on the caller's stream:
//! * one-step block (the per-step recursion, memory-bound): `dvemb_residual_f32` with `η`
//!   (`E = η(G − G Mᵀ)`), then `dvemb_update_f32` with the scalar `c` (`M += c·Eᵀ G`);
//! * multi-step block (the blocked form): `dvemb_table_f32` (one launch per 8 steps: block-
//!   relative step row starts, η per step and `c` per row into the workspace),
//!   `dvemb_residual_f32` with `η = 1` (`Y = G − G Mᵀ` into `e_out`), `dvemb_gram_f32`
//!   (`K[r, r'] = c_{r'} G_r·G_{r'}`, tiles with some `r' > r` only), **one** fused
//!   `dvemb_sweep_f32` for the whole triangular recurrence (each CTA owns 32 columns and walks
//!   the steps latest first with a barrier between steps: columns never interact, so no
//!   inter-CTA synchronization is needed), then `dvemb_update_f32` with the per-row `c`.
//!
//! The workspace (table, per-row `c`, `K`) is reused by every block: launches on one stream run
//! in order. Pointers to a block's rows are offset on the host (`row · row_stride` elements).

use std::ops::Range;

use super::{CheckedSteps, LayerCols};
use crate::error::Result;
use crate::ghost_dot::gpu::{Carve, BLOCK};
use crate::runtime::{KernelArg, LaunchPlan};
use crate::validate::{fits_i32, mul};

/// Output tile of the GEMM-like kernels (64×64, 4×4 per thread).
const TILE: u64 = 64;
/// Columns per CTA of the sweep.
const SWEEP_COLS: u64 = 32;
/// Steps per `dvemb_table_f32` launch.
const TABLE_STEPS: usize = 8;

/// One validated layer and its blocks (step ranges, latest first).
#[derive(Debug, Clone)]
pub(crate) struct GpuDvembLayer {
    pub cols: LayerCols,
    pub m: u64,
    pub blocks: Vec<Range<usize>>,
}

/// Byte address of row `r` of a `[R, ld]` f32 buffer.
fn row_ptr(base: u64, r: u64, ld: u64) -> Result<u64> {
    Ok(base + mul("row offset (bytes)", mul("row offset", r, ld)?, 4)?)
}

#[allow(clippy::too_many_arguments)]
fn residual_plan(g: u64, m: u64, e: u64, rows: u64, k: u64, ld: u64, off: u64, eta: f32) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "dvemb_residual_f32".into(),
        grid: [fits_i32("k tiles", k.div_ceil(TILE))?, fits_i32("row tiles", rows.div_ceil(TILE))?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(g),
            KernelArg::Ptr(m),
            KernelArg::Ptr(e),
            KernelArg::U32(fits_i32("rows", rows)?),
            KernelArg::U32(fits_i32("k", k)?),
            KernelArg::U64(ld),
            KernelArg::U64(off),
            KernelArg::F32(eta),
        ],
    })
}

#[allow(clippy::too_many_arguments)]
fn update_plan(e: u64, g: u64, crow: u64, c: f32, m: u64, rows: u64, k: u64, ld: u64, off: u64) -> Result<LaunchPlan> {
    let tiles = fits_i32("k tiles", k.div_ceil(TILE))?;
    Ok(LaunchPlan {
        kernel: "dvemb_update_f32".into(),
        grid: [tiles, tiles, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(e),
            KernelArg::Ptr(g),
            KernelArg::Ptr(crow),
            KernelArg::F32(c),
            KernelArg::Ptr(m),
            KernelArg::U32(fits_i32("rows", rows)?),
            KernelArg::U32(fits_i32("k", k)?),
            KernelArg::U64(ld),
            KernelArg::U64(off),
        ],
    })
}

/// Plans of every layer and block; workspace carved from `ws`.
pub(crate) fn dvemb_plans(g: u64, e: u64, ld: u64, layers: &[GpuDvembLayer], st: &CheckedSteps, ws: u64) -> Result<(Vec<LaunchPlan>, u64)> {
    // One workspace layout sized for the largest multi-step block.
    let (mut max_steps, mut max_rows) = (0u64, 0u64);
    for l in layers {
        for b in l.blocks.iter().filter(|b| b.len() > 1) {
            max_steps = max_steps.max(b.len() as u64);
            max_rows = max_rows.max(st.starts[b.end] - st.starts[b.start]);
        }
    }
    let mut carve = Carve::default();
    let begin_ws = ws + carve.take(4 * (max_steps + 1))?;
    let eta_ws = ws + carve.take(4 * max_steps)?;
    let crow_ws = ws + carve.take(4 * max_rows)?;
    let k_ws = ws + carve.take(mul("K bytes", mul("block rows²", max_rows, max_rows)?, 4)?)?;
    if max_rows > 0 {
        fits_i32("block rows²", max_rows * max_rows)?;
    }

    let mut plans = Vec::new();
    for l in layers {
        let (k, off) = (l.cols.k, l.cols.offset);
        for b in &l.blocks {
            let (r0, r1) = (st.starts[b.start], st.starts[b.end]);
            let rows = r1 - r0;
            let (gb, eb) = (row_ptr(g, r0, ld)?, row_ptr(e, r0, ld)?);
            if b.len() == 1 {
                let t = b.start;
                plans.push(residual_plan(gb, l.m, eb, rows, k, ld, off, st.etas[t] as f32)?);
                plans.push(update_plan(eb, gb, 0, st.cs[t] as f32, l.m, rows, k, ld, off)?);
                continue;
            }
            let nsteps = b.len();
            let mut first = 0usize;
            while first < nsteps {
                let count = (nsteps - first).min(TABLE_STEPS);
                let rel = |s: usize| st.starts[b.start + s] - r0;
                let chunk_end = rel(first + count);
                let mut args = vec![
                    KernelArg::Ptr(begin_ws),
                    KernelArg::Ptr(eta_ws),
                    KernelArg::Ptr(crow_ws),
                    KernelArg::U32(first as u32),
                    KernelArg::U32(count as u32),
                ];
                for s in 0..=TABLE_STEPS {
                    let v = if s < count { rel(first + s) } else { chunk_end };
                    args.push(KernelArg::U32(fits_i32("row start", v)?));
                }
                for s in 0..TABLE_STEPS {
                    args.push(KernelArg::F32(if s < count { st.etas[b.start + first + s] as f32 } else { 0.0 }));
                }
                for s in 0..TABLE_STEPS {
                    args.push(KernelArg::F32(if s < count { st.cs[b.start + first + s] as f32 } else { 0.0 }));
                }
                let span = chunk_end - rel(first);
                plans.push(LaunchPlan {
                    kernel: "dvemb_table_f32".into(),
                    grid: [fits_i32("table blocks", span.div_ceil(256).max(1))?, 1, 1],
                    block: BLOCK,
                    shared_bytes: 0,
                    args,
                });
                first += count;
            }
            plans.push(residual_plan(gb, l.m, eb, rows, k, ld, off, 1.0)?);
            let row_tiles = fits_i32("row tiles", rows.div_ceil(TILE))?;
            plans.push(LaunchPlan {
                kernel: "dvemb_gram_f32".into(),
                grid: [row_tiles, row_tiles, 1],
                block: BLOCK,
                shared_bytes: 0,
                args: vec![
                    KernelArg::Ptr(gb),
                    KernelArg::Ptr(crow_ws),
                    KernelArg::Ptr(k_ws),
                    KernelArg::U32(fits_i32("rows", rows)?),
                    KernelArg::U32(fits_i32("k", k)?),
                    KernelArg::U64(ld),
                    KernelArg::U64(off),
                ],
            });
            plans.push(LaunchPlan {
                kernel: "dvemb_sweep_f32".into(),
                grid: [fits_i32("sweep blocks", k.div_ceil(SWEEP_COLS))?, 1, 1],
                block: BLOCK,
                shared_bytes: 0,
                args: vec![
                    KernelArg::Ptr(k_ws),
                    KernelArg::Ptr(begin_ws),
                    KernelArg::Ptr(eta_ws),
                    KernelArg::Ptr(eb),
                    KernelArg::U32(fits_i32("steps", nsteps as u64)?),
                    KernelArg::U32(fits_i32("rows", rows)?),
                    KernelArg::U32(fits_i32("k", k)?),
                    KernelArg::U64(ld),
                    KernelArg::U64(off),
                ],
            });
            plans.push(update_plan(eb, gb, crow_ws, 0.0, l.m, rows, k, ld, off)?);
        }
    }
    Ok((plans, carve.bytes))
}
