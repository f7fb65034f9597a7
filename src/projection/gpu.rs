//! Launch plans of kernels/projection.cu. Argument lists mirror the kernel declarations.
//!
//! `kron_project_<dt>` splits tokens across CTAs exactly like the ghost dot-product plans
//! (`token_split`, a function of the shape only) and writes partial sums that
//! `kron_finalize_f32` adds in a fixed order into the caller's columns: every device returns
//! the same bits.

use crate::error::Result;
use crate::ghost_dot::gpu::{token_split, Carve, BLOCK, FLAG_BIAS};
use crate::ghost_dot::validate_ops::TrainDims;
use crate::ghost_dot::Accumulate;
use crate::runtime::{KernelArg, LaunchPlan};
use crate::validate::{fits_i32, mul, product};

/// Rows of `P_i` / `P_o` a CTA projects onto (one 64×64 tile of `Ĝ`).
pub(crate) const K_TILE: u64 = 64;
pub(crate) const FLAG_RANDOM: u32 = 2;
pub(crate) const FLAG_RADEMACHER: u32 = 4;
/// Store `Ĝ_nᵀ` (a use oriented against its parameter's storage).
pub(crate) const FLAG_TRANSPOSE: u32 = 8;
/// Ids kernels: token `t` has id `t` (the ids pointer is not read).
pub(crate) const FLAG_IOTA: u32 = 16;
/// `kron_project_ids_*` / `kfac_cov_ids_f32`: the ids are int64 (else int32).
pub(crate) const FLAG_IDS64: u32 = 32;

/// [`FLAG_IDS64`] for an int64 id buffer, else 0.
pub(crate) fn ids_flag(ids: &crate::buffer::Tensor<'_>) -> u32 {
    if ids.dtype() == crate::dtype::DType::I64 {
        FLAG_IDS64
    } else {
        0
    }
}

/// Device side of a layer's projection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuProjection {
    pub p_in: u64,
    pub p_out: u64,
    pub key_in: u64,
    pub key_out: u64,
    pub scale_in: f32,
    pub scale_out: f32,
    /// FLAG_RANDOM | FLAG_RADEMACHER bits.
    pub flags: u32,
}

/// One validated layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuProjectLayer {
    pub dims: TrainDims,
    pub a: u64,
    pub b: u64,
    pub mask: u64,
    /// `a` holds token ids (i32, or i64 with [`FLAG_IDS64`] in `proj.flags`, `[N, T]`,
    /// vocabulary `dims.d_in`): `kron_project_ids_<dt>`.
    pub ids: bool,
    pub proj: GpuProjection,
    pub k_i: u64,
    pub k_o: u64,
    pub offset: u64,
}

/// Kernel + finalize plans of every layer; partial slots carved from workspace base `ws`.
pub(crate) fn kron_plans(layers: &[GpuProjectLayer], out: u64, ld: u64, acc: Accumulate, ws: u64) -> Result<(Vec<LaunchPlan>, u64)> {
    let mut plans = Vec::new();
    let mut carve = Carve::default();
    for l in layers {
        let s = kron_splits(l)?;
        let width = mul("k_o*k_i", l.k_o, l.k_i)?;
        let partial = ws + carve.take(product("projection partials", &[s, l.dims.n, width, 4])?)?;
        plans.push(kron_kernel_plan(l, partial, 0)?);
        plans.push(kron_finalize_plan(partial, out, l.dims.n, width, s, ld, l.offset, acc)?);
    }
    Ok((plans, carve.bytes))
}

/// Partial slots (token splits) of a layer's kernel: a function of the shape only.
pub(crate) fn kron_splits(l: &GpuProjectLayer) -> Result<u64> {
    let tiles = mul("projection tiles", l.k_o.div_ceil(K_TILE), l.k_i.div_ceil(K_TILE))?;
    Ok(token_split(l.dims.t, mul("n*tiles", l.dims.n, tiles)?).0)
}

/// `kron_project[_ids]_<dt>` of one layer writing `kron_splits(l)` slots of `[N, k_o·k_i]` at
/// `partial`; `extra_flags`: [`FLAG_TRANSPOSE`] / [`FLAG_IOTA`].
pub(crate) fn kron_kernel_plan(l: &GpuProjectLayer, partial: u64, extra_flags: u32) -> Result<LaunchPlan> {
    let d = &l.dims;
    let tiles = mul("projection tiles", l.k_o.div_ceil(K_TILE), l.k_i.div_ceil(K_TILE))?;
    let (s, tps) = token_split(d.t, mul("n*tiles", d.n, tiles)?);
    let flags = l.proj.flags | extra_flags | if d.has_bias { FLAG_BIAS } else { 0 };
    Ok(LaunchPlan {
        kernel: format!("kron_project_{}{}", if l.ids { "ids_" } else { "" }, d.dtype.kernel_suffix()),
        grid: [fits_i32("n (grid.x)", d.n)?, fits_i32("token splits", s)?, fits_i32("projection tiles (grid.z)", tiles)?],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(l.a),
            KernelArg::Ptr(l.b),
            KernelArg::Ptr(l.mask),
            KernelArg::Ptr(l.proj.p_in),
            KernelArg::Ptr(l.proj.p_out),
            KernelArg::U64(l.proj.key_in),
            KernelArg::U64(l.proj.key_out),
            KernelArg::F32(l.proj.scale_in),
            KernelArg::F32(l.proj.scale_out),
            KernelArg::Ptr(partial),
            KernelArg::U32(fits_i32("n", d.n)?),
            KernelArg::U32(fits_i32("t", d.t)?),
            KernelArg::U32(fits_i32("d_in", d.d_in)?),
            KernelArg::U32(fits_i32("d_out", d.d_out)?),
            KernelArg::U32(fits_i32("k_i", l.k_i)?),
            KernelArg::U32(fits_i32("k_o", l.k_o)?),
            KernelArg::U32(fits_i32("tokens per split", tps)?),
            KernelArg::U32(flags),
        ],
    })
}

/// `kron_finalize_f32`: `out[n·ld + offset + j] = beta·out + scale·Σ_{s < splits} partial[s][n][j]`
/// (fixed order), `j < width`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kron_finalize_plan(partial: u64, out: u64, n: u64, width: u64, splits: u64, ld: u64, offset: u64, acc: Accumulate) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "kron_finalize_f32".into(),
        grid: [fits_i32("finalize blocks", mul("n*k", n, width)?.div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(partial),
            KernelArg::Ptr(out),
            KernelArg::U32(fits_i32("n", n)?),
            KernelArg::U32(fits_i32("k_o*k_i", width)?),
            KernelArg::U32(fits_i32("token splits", splits)?),
            KernelArg::U64(ld),
            KernelArg::U64(offset),
            KernelArg::F32(acc.scale),
            KernelArg::F32(acc.beta),
        ],
    })
}

/// `projection_materialize_f32` plan.
pub(crate) fn materialize_plan(out: u64, key: u64, scale: f32, rademacher: bool, rows: u64, cols: u64) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "projection_materialize_f32".into(),
        grid: [fits_i32("materialize blocks", mul("k*d", rows, cols)?.div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(out),
            KernelArg::U64(key),
            KernelArg::F32(scale),
            KernelArg::U32(FLAG_RANDOM | if rademacher { FLAG_RADEMACHER } else { 0 }),
            KernelArg::U32(fits_i32("k", rows)?),
            KernelArg::U32(fits_i32("d", cols)?),
        ],
    })
}

/// `gemm_nt_f32` plan: `C[M, N] = alpha·mode(A Bᵀ) + beta·C`, `A` rows `lda` floats apart and
/// `Bm` rows `ldb` apart (`K` for dense rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt_plan(
    a: u64,
    b: u64,
    self_norm: u64,
    c: u64,
    m: u64,
    n: u64,
    k: u64,
    (lda, ldb): (u64, u64),
    mode: u32,
    acc: Accumulate,
) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "gemm_nt_f32".into(),
        grid: [fits_i32("n tiles", n.div_ceil(64))?, fits_i32("m tiles", m.div_ceil(64))?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(a),
            KernelArg::Ptr(b),
            KernelArg::Ptr(self_norm),
            KernelArg::Ptr(c),
            KernelArg::U32(fits_i32("n_test", m)?),
            KernelArg::U32(fits_i32("n_block", n)?),
            KernelArg::U32(fits_i32("k", k)?),
            KernelArg::U32(fits_i32("lda", lda)?),
            KernelArg::U32(fits_i32("ldb", ldb)?),
            KernelArg::U32(mode),
            KernelArg::F32(acc.scale),
            KernelArg::F32(acc.beta),
        ],
    })
}

// ---------------------------------------------------------------- kernels/covariance.cu

/// Splits `count` reduction items (rows, tokens, samples) across CTAs for `tiles` output tiles:
/// `(splits, items_per_split)`, a function of the shape only.
fn reduction_split(count: u64, tiles: u64, min_per_split: u64) -> (u64, u64) {
    let max_splits = count.div_ceil(min_per_split).max(1);
    let want = 528u64.div_ceil(tiles.max(1)).max(1);
    let s = want.min(max_splits);
    let per = count.div_ceil(s);
    (count.div_ceil(per), per)
}

/// `syrk_partial_f32`: `partial[s][k×k] = Σ_{rows of split s} x xᵀ` of rows `x_r =
/// X[r·ld + offset ..][..k]`. Its partial slots are carved from workspace base `ws`: returns
/// (plan, partial, splits).
pub(crate) fn syrk_plan(x: u64, rows: u64, k: u64, ld: u64, offset: u64, ws: u64, carve: &mut Carve) -> Result<(LaunchPlan, u64, u64)> {
    let s = syrk_splits(rows, k)?;
    let partial = ws + carve.take(product("fisher partials", &[s, k, k, 4])?)?;
    Ok((syrk_plan_at(x, rows, k, ld, offset, partial)?, partial, s))
}

/// `(splits, rows per split)` of a reduction over `rows` into a `k × k` result of 64×64 tiles —
/// `syrk_partial_f32` and `kfac_cov_*` alike, so both forms of a K-FAC side have the same slots.
/// A function of the shape only.
fn square_split(rows: u64, k: u64) -> Result<(u64, u64)> {
    let tiles = k.div_ceil(K_TILE);
    Ok(token_split(rows, mul("tiles^2", tiles, tiles)?))
}

/// Row splits of `syrk_partial_f32` (a function of the shape only).
pub(crate) fn syrk_splits(rows: u64, k: u64) -> Result<u64> {
    Ok(square_split(rows, k)?.0)
}

/// [`syrk_plan`] writing its `syrk_splits(rows, k)` slots at `partial`.
pub(crate) fn syrk_plan_at(x: u64, rows: u64, k: u64, ld: u64, offset: u64, partial: u64) -> Result<LaunchPlan> {
    let (s, rps) = square_split(rows, k)?;
    let t = fits_i32("k tiles", k.div_ceil(K_TILE))?;
    Ok(LaunchPlan {
        kernel: "syrk_partial_f32".into(),
        grid: [t, t, fits_i32("row splits", s)?],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(x),
            KernelArg::Ptr(partial),
            KernelArg::U32(fits_i32("n", rows)?),
            KernelArg::U32(fits_i32("k", k)?),
            KernelArg::U64(ld),
            KernelArg::U64(offset),
            KernelArg::U32(fits_i32("rows per split", rps)?),
        ],
    })
}

/// One side of a K-FAC covariance: `Σ_{kept r} (P x_r)(P x_r)ᵀ` over `rows = N·T` tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CovSide {
    /// Rows (`Elem [rows, width]`) or token ids (`i32 [rows]`, or i64 with [`FLAG_IDS64`] in
    /// `flags`; vocabulary `width`).
    pub x: u64,
    pub ids: bool,
    pub dtype: crate::dtype::DType,
    pub mask: u64,
    /// Dense `P [k, width + bias]` (0 when random).
    pub p: u64,
    pub key: u64,
    pub scale: f32,
    /// FLAG_RANDOM | FLAG_RADEMACHER | FLAG_BIAS bits.
    pub flags: u32,
    pub rows: u64,
    pub width: u64,
    pub k: u64,
}

/// Whether a side runs in two phases (`project_rows` + `syrk_partial`): dense rows with
/// `k > 64`, where the fused `kfac_cov` would project every token tile once per pair of 64-row
/// tiles of `P` (`(k/64)²` projections instead of `k/64`). Embedding ids are a gather: fused.
fn cov_two_phase(c: &CovSide) -> bool {
    !c.ids && c.k > K_TILE
}

/// Partial slots of one covariance side (a function of the shape only; the fused and the
/// two-phase forms split the tokens alike).
pub(crate) fn cov_side_splits(c: &CovSide) -> Result<u64> {
    syrk_splits(c.rows, c.k)
}

/// Plans of one covariance side writing its `cov_side_splits(c)` slots of `[k, k]` at `partial`
/// (to be summed by one finalize); the two-phase form's scratch (`rows·k` f32) is carved from
/// `carve`.
pub(crate) fn cov_side_plans(c: &CovSide, partial: u64, ws: u64, carve: &mut Carve) -> Result<Vec<LaunchPlan>> {
    if !cov_two_phase(c) {
        return Ok(vec![kfac_cov_plan_at(c, partial)?]);
    }
    // The projected tokens [rows, k] f32 live in the workspace for the call (callers bound it by
    // streaming batches with `beta = 1`).
    let scratch = ws + carve.take(product("projected rows", &[c.rows, c.k, 4])?)?;
    let project = LaunchPlan {
        kernel: format!("project_rows_{}", c.dtype.kernel_suffix()),
        grid: [fits_i32("token tiles", c.rows.div_ceil(32))?, fits_i32("k tiles", c.k.div_ceil(K_TILE))?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(c.x),
            KernelArg::Ptr(c.mask),
            KernelArg::Ptr(c.p),
            KernelArg::U64(c.key),
            KernelArg::F32(c.scale),
            KernelArg::Ptr(scratch),
            KernelArg::U32(fits_i32("rows", c.rows)?),
            KernelArg::U32(fits_i32("width", c.width)?),
            KernelArg::U32(fits_i32("k", c.k)?),
            KernelArg::U32(c.flags),
        ],
    };
    Ok(vec![project, syrk_plan_at(scratch, c.rows, c.k, c.k, 0, partial)?])
}

/// The fused `kfac_cov_<dt>` / `kfac_cov_ids_f32` plan writing its slots at `partial`.
fn kfac_cov_plan_at(c: &CovSide, partial: u64) -> Result<LaunchPlan> {
    let (s, tps) = square_split(c.rows, c.k)?;
    let t = fits_i32("k tiles", c.k.div_ceil(K_TILE))?;
    let kernel = if c.ids { "kfac_cov_ids_f32".to_string() } else { format!("kfac_cov_{}", c.dtype.kernel_suffix()) };
    Ok(LaunchPlan {
        kernel,
        grid: [t, t, fits_i32("token splits", s)?],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(c.x),
            KernelArg::Ptr(c.mask),
            KernelArg::Ptr(c.p),
            KernelArg::U64(c.key),
            KernelArg::F32(c.scale),
            KernelArg::Ptr(partial),
            KernelArg::U32(fits_i32("n*t", c.rows)?),
            KernelArg::U32(fits_i32("width", c.width)?),
            KernelArg::U32(fits_i32("k", c.k)?),
            KernelArg::U32(fits_i32("tokens per split", tps)?),
            KernelArg::U32(c.flags),
        ],
    })
}

/// `ekfac_partial_f32` plan: `partial[s][k_o×k_i] = Σ_{n in split s} (Q_Bᵀ Ĝ_n Q_A)^{⊙2}`;
/// partials carved from workspace base `ws`: returns (plan, partial, splits). Samples are split
/// finely (each one costs two small GEMMs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ekfac_plan(g: u64, ld: u64, offset: u64, q_b: u64, q_a: u64, n: u64, k_o: u64, k_i: u64, ws: u64, carve: &mut Carve) -> Result<(LaunchPlan, u64, u64)> {
    let (ti, to) = (k_i.div_ceil(K_TILE), k_o.div_ceil(K_TILE));
    let (s, sps) = reduction_split(n, mul("tiles", ti, to)?, 4);
    let partial = ws + carve.take(product("ekfac partials", &[s, k_o, k_i, 4])?)?;
    Ok((
        LaunchPlan {
            kernel: "ekfac_partial_f32".into(),
            grid: [fits_i32("k_i tiles", ti)?, fits_i32("k_o tiles", to)?, fits_i32("sample splits", s)?],
            block: BLOCK,
            shared_bytes: 0,
            args: vec![
                KernelArg::Ptr(g),
                KernelArg::U64(ld),
                KernelArg::U64(offset),
                KernelArg::Ptr(q_b),
                KernelArg::Ptr(q_a),
                KernelArg::Ptr(partial),
                KernelArg::U32(fits_i32("n", n)?),
                KernelArg::U32(fits_i32("k_o", k_o)?),
                KernelArg::U32(fits_i32("k_i", k_i)?),
                KernelArg::U32(fits_i32("samples per split", sps)?),
            ],
        },
        partial,
        s,
    ))
}
