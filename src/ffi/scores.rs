//! Influence scores (MATH.md §4): `gg_influence_scores`, `gg_influence_scores_groups`.

use super::*;

/// Score transformation of [`gg_influence_scores`].
pub type gg_score_mode = u32;

/// `S = test · trainᵀ`.
pub const GG_SCORE_DOT: gg_score_mode = 0;

/// `S / √train_self[j]` (cosine / RelatIF-style normalization by the train side).
pub const GG_SCORE_COSINE: gg_score_mode = 1;

/// `S − ½·train_self[j]`.
pub const GG_SCORE_L2: gg_score_mode = 2;

pub(super) fn score_mode_from_code(code: gg_score_mode) -> FfiResult<ScoreMode> {
    match code {
        GG_SCORE_DOT => Ok(ScoreMode::Dot),
        GG_SCORE_COSINE => Ok(ScoreMode::Cosine),
        GG_SCORE_L2 => Ok(ScoreMode::L2),
        other => Err(Failure::invalid("mode", format!("{other} is not a gg_score_mode (DOT=0, COSINE=1, L2=2)"))),
    }
}

/// Influence scores of a block of training rows (MATH.md §4):
/// `out[q, j] = beta·out + scale·f(Σ_c test[q, c]·train_block[j, c])`, `f` the `gg_score_mode`
/// `mode` (`COSINE`: `S/√train_self[j]`, `L2`: `S − ½·train_self[j]`). `test` f32 `[n_test, k]`
/// (typically preconditioned), `train_block` f32 `[n_block, k]`, `train_self` f32 `[n_block]`
/// (required for COSINE and L2, must be absent for DOT), `out` f32 `[n_test, n_block]`. Stream
/// the training set through a fixed block buffer.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, every input and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_influence_scores(
    ctx: *const gg_context,
    test: gg_tensor,
    train_block: gg_tensor,
    n_test: u64,
    n_block: u64,
    k: u64,
    train_self: gg_tensor,
    mode: gg_score_mode,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let mode = score_mode_from_code(mode)?;
        let mut bufs = Buffers::new(ctx);
        let raw_test = bufs.input("test", &test)?;
        let raw_train = bufs.input("train_block", &train_block)?;
        let raw_self = bufs.optional_input("train_self", &train_self)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (test, train, ts, mut out) = unsafe {
            (raw_test.view(space), raw_train.view(space), raw_self.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        let dims = ScoreDims { n_test, n_block, k };
        Ok(ctx.influence_scores(&test, &train, dims, &mut out, mode, ts.as_ref(), Accumulate { scale, beta })?)
    })
}

/// One group of columns of [`gg_influence_scores_groups`]: columns `offset .. offset + width`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_column_group {
    pub offset: u64,
    pub width: u64,
}

/// Per-layer-group partial influence scores: `test` f32 `[n_test, row_stride]` and `train_block`
/// f32 `[n_block, row_stride]` hold several layers' `ĝ` side by side (as
/// [`gg_kron_project_layers`] writes them); for every group g of `groups` (`n_groups` entries):
/// `out[g, q, j] = beta·out + scale·f(Σ_{c ∈ g} test[q, c]·train_block[j, c])`, `out` f32
/// `[n_groups, n_test, n_block]`, `f` the `gg_score_mode` with the group's own
/// `train_self[g, j]` (f32 `[n_groups, n_block]`; required for COSINE and L2, absent for DOT).
///
/// # Safety
/// As [`gg_influence_scores`]; `groups` points at `n_groups` readable `gg_column_group`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_influence_scores_groups(
    ctx: *const gg_context,
    test: gg_tensor,
    train_block: gg_tensor,
    n_test: u64,
    n_block: u64,
    row_stride: u64,
    groups: *const gg_column_group,
    n_groups: usize,
    train_self: gg_tensor,
    mode: gg_score_mode,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(groups, n_groups, "groups", "n_groups")?) };
        let mode = score_mode_from_code(mode)?;
        let groups: Vec<crate::projection::ColumnGroup> =
            descs.iter().map(|g| crate::projection::ColumnGroup { offset: g.offset, width: g.width }).collect();
        let mut bufs = Buffers::new(ctx);
        let raw_test = bufs.input("test", &test)?;
        let raw_train = bufs.input("train_block", &train_block)?;
        let raw_self = bufs.optional_input("train_self", &train_self)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (test, train, ts, mut out) = unsafe {
            (raw_test.view(space), raw_train.view(space), raw_self.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        Ok(ctx.influence_scores_groups(&test, &train, n_test, n_block, row_stride, &groups, &mut out, mode, ts.as_ref(), Accumulate { scale, beta })?)
    })
}
