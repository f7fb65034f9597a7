//! Data value embeddings (MATH.md §5, `crate::dvemb`): `gg_dvemb_layers`.

use super::*;

/// `c_t` of a training step's loss: `GG_LOSS_SUM` (`c = 1`) or `GG_LOSS_MEAN` (`c = 1/rows`).
pub type gg_loss_reduction = u32;

pub const GG_LOSS_SUM: gg_loss_reduction = 0;

pub const GG_LOSS_MEAN: gg_loss_reduction = 1;

/// How [`gg_dvemb_layers`] sweeps: `GG_BLOCKING_AUTO` (blocks of `clamp(k/8, 64, 512)` rows),
/// `GG_BLOCKING_PER_STEP` (one step at a time, memory-bound), `GG_BLOCKING_MAX_ROWS` (blocks of
/// at most `max_rows` rows, `max_rows ≥ 1`).
pub type gg_blocking = u32;

pub const GG_BLOCKING_AUTO: gg_blocking = 0;

pub const GG_BLOCKING_PER_STEP: gg_blocking = 1;

pub const GG_BLOCKING_MAX_ROWS: gg_blocking = 2;

/// One layer of [`gg_dvemb_layers`]: columns `offset .. offset + k` of `grads` / `e_out`, and its
/// `k×k` row-major f32 `M` (read and updated in place; zeros before the latest step).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_dvemb_layer {
    pub offset: u64,
    pub k: u64,
    pub m: gg_tensor_mut,
}

/// Data value embedding reverse sweep (MATH.md §5) of `n_layers` layers over `n_steps` training
/// steps: for every layer and every step t from the LAST down to the first,
/// `E_t = eta_t (G_t − G_t Mᵀ)` into `e_out`'s rows of step t, then `M ← M + c_t E_tᵀ G_t`.
/// `grads` and `e_out` f32 `[R, row_stride]`, `R = Σ step_rows`, rows in FORWARD step order
/// (the `[N, Σk]` layout of [`gg_kron_project_layers`]); columns outside the layers are never
/// written. `step_rows` (u64, each ≥ 1) and `step_etas` (f64, finite) hold `n_steps` entries.
/// A long run is swept by calling on consecutive chunks of steps backwards in time, carrying
/// each layer's `M`. Score a sample z of step t against a test gradient projected with the same
/// seed with [`gg_influence_scores`] (`GG_SCORE_DOT`) on the rows of `e_out`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `grads`, `e_out` and every layer's `m`; `layers` points at
/// `n_layers` readable `gg_dvemb_layer`; `step_rows` and `step_etas` at `n_steps` readable
/// elements each.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_dvemb_layers(
    ctx: *const gg_context,
    grads: gg_tensor,
    row_stride: u64,
    layers: *const gg_dvemb_layer,
    n_layers: usize,
    step_rows: *const u64,
    step_etas: *const f64,
    n_steps: usize,
    loss: gg_loss_reduction,
    e_out: gg_tensor_mut,
    blocking: gg_blocking,
    max_rows: u64,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        if n_steps == 0 {
            return Err(GhostError::ZeroSize { what: "n_steps" }.into());
        }
        // SAFETY: forwarded from this function's contract (n_steps ≥ 1 readable elements each).
        let (rows, etas) = unsafe { (read_array(step_rows, n_steps, "step_rows", "n_steps")?, read_array(step_etas, n_steps, "step_etas", "n_steps")?) };
        let loss = match loss {
            GG_LOSS_SUM => LossReduction::Sum,
            GG_LOSS_MEAN => LossReduction::Mean,
            other => return Err(Failure::invalid("loss", format!("unknown gg_loss_reduction {other}"))),
        };
        let blocking = match blocking {
            GG_BLOCKING_AUTO => Blocking::Auto,
            GG_BLOCKING_PER_STEP => Blocking::PerStep,
            GG_BLOCKING_MAX_ROWS => Blocking::MaxRows(max_rows),
            other => return Err(Failure::invalid("blocking", format!("unknown gg_blocking {other}"))),
        };
        let mut bufs = Buffers::new(ctx);
        let raw_grads = bufs.input("grads", &grads)?;
        let mut raw_m = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            raw_m.push(bufs.output(&format!("layers[{i}].m"), &l.m)?);
        }
        let raw_e = bufs.output("e_out", &e_out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing (check_overlaps), valid for the call.
        let (grads, mut e) = unsafe { (raw_grads.view(space), raw_e.view_mut(space)) };
        // SAFETY: as above, each M is a distinct checked output.
        let mut ms: Vec<TensorMut<'_>> = raw_m.into_iter().map(|r| unsafe { r.view_mut(space) }).collect();
        let mut layers: Vec<DvembLayer<'_, '_>> =
            descs.iter().zip(ms.iter_mut()).map(|(d, m)| DvembLayer { offset: d.offset, k: d.k, m }).collect();
        let steps = DvembSteps { rows: &rows, etas: &etas, loss };
        ctx.dvemb_layers(&grads, row_stride, &mut layers, &steps, &mut e, blocking)?;
        Ok(())
    })
}
