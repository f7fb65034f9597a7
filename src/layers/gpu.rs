//! Launch plans of the model-level calls (kernels/embedding.cu, norm.cu, and the ghost
//! dot-product kernels for a Linear use's own term). Every term writes partial slots; those
//! Linear terms go through [`crate::ghost_dot::gpu::partial_plans`] (their own partial region and
//! finalize), every other term into a second region finalized after it with `beta = 1`. The
//! split counts depend only on the shapes, so every GPU returns the same bits.
//!
//! Launches per term: Linear as in `ghost_dot_layers`; cross Gram 1; scatter/gather 3
//! (sort, table, gather); norm `uses × (1 + [query])` gradient launches + 1 dot. Plus one or two
//! finalizes for the whole call.
//!
//! Query element type: a query-reading kernel takes the dtype of the query tensors, the
//! training dtype for the public calls (validated equal), f32 for `model_ghg`'s combined query
//! ([`run_ghg`]) beside any training dtype: `ghost_dot_gram_qf32_*` / `factored_grad_f32`,
//! `cross_gram_qf32_*`, `embed_table_f32`, `norm_grad_f32`.

use super::{mat_sides, seg_kind_args, LayerKind, LayerUse, Mode, Term, UseDims, UseQuery};
use crate::buffer::{DeviceSlice, Tensor};
use crate::context::dev_ptr;
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::{self as gd, Carve, GpuDotLayer, LayerPtrs, BLOCK};
use crate::ghost_dot::validate_ops::{QueryDims, SegKind, TrainDims};
use crate::ghost_dot::Accumulate;
use crate::runtime::{KernelArg, KernelRuntime, LaunchPlan};
use crate::validate::{fits_i32 as u32_of, mul, product};

const FLAG_BIAS: u32 = 1;
const FLAG_DIAG: u32 = 2;
const FLAG_RT_IDS: u32 = 4;
const FLAG_RQ_IDS: u32 = 8;
const FLAG_ACCUMULATE: u32 = 4;

/// `cross_gram_<dt>`, or `cross_gram_qf32_<dt>` for an f32 query beside bf16 / f16 training
/// factors (model_ghg's combined query).
fn cross_kernel(train: DType, query: DType) -> Result<String> {
    match (train, query) {
        (t, q) if t == q => Ok(kname("cross_gram", t)),
        (DType::BF16 | DType::F16, DType::F32) => Ok(kname("cross_gram_qf32", train)),
        _ => Err(GhostError::Internal(format!("no cross Gram kernel for {train} training factors with a {query} query"))),
    }
}

fn ptr(t: &Tensor<'_>, what: &'static str) -> Result<u64> {
    Ok(t.device(what)?.ptr())
}

fn kname(base: &str, dt: DType) -> String {
    format!("{base}_{}", dt.kernel_suffix())
}

/// The "query" operand of a term on use `j`: its query side (dot) or its training rows.
struct QueryOp<'a> {
    x: Tensor<'a>,
    b: Tensor<'a>,
    mask: u64,
    seg_ptr: u64,
    seg_len: u64,
    q: u64,
    v: u64,
    /// Segment `v` of the query pairs only with training sample `v` (the diagonal).
    diag: bool,
}

fn query_op<'a>(u: &LayerUse<'a>, d: &UseDims, n: u64, mode: Mode) -> Result<QueryOp<'a>> {
    Ok(match mode {
        Mode::Dot => {
            let q = u.query.as_ref().expect("validated");
            let qd = d.query.as_ref().expect("validated");
            let (seg_ptr, seg_len) = seg_kind_args(qd);
            QueryOp { x: q.x, b: q.b, mask: dev_ptr(q.mask.as_ref(), "query mask")?, seg_ptr, seg_len, q: qd.q, v: qd.v, diag: false }
        }
        _ => QueryOp {
            x: u.train.x,
            b: u.train.b,
            mask: dev_ptr(u.train.mask.as_ref(), "mask")?,
            seg_ptr: 0,
            seg_len: d.t,
            q: mul("n*t", n, d.t)?,
            v: n,
            diag: mode == Mode::SelfNorm,
        },
    })
}

/// Output columns per sample of the call: `V` (dot), `N` (pairwise) or 1.
fn out_cols(mode: Mode, n: u64, nv: u64) -> u64 {
    match mode {
        Mode::SelfNorm => 1,
        Mode::Pairwise => n,
        Mode::Dot => nv,
    }
}

/// Partial slots a term writes (each `N·out_cols` floats).
fn term_splits(t: &Term, n: u64, nv: u64, dims: &[UseDims], mode: Mode) -> Result<u64> {
    let cols = out_cols(mode, n, nv);
    Ok(match t {
        Term::Linear { .. } => 0,
        Term::Cross { i, .. } | Term::Gather { i, .. } => gd::token_split(dims[*i].t, mul("n*V", n, cols)?).0,
        Term::Norm { d, bias, .. } => {
            let dd = d * (1 + *bias as u64);
            gd::rows_dot_plan(0, 0, 0, n, cols, dd, mode == Mode::SelfNorm)?.1
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn cross_plan(uses: &[LayerUse<'_>], dims: &[UseDims], n: u64, mode: Mode, i: usize, j: usize, bias: bool, part: u64) -> Result<LaunchPlan> {
    let (ui, uj) = (&uses[i], &uses[j]);
    let ts = mat_sides(&ui.kind, ui.train.x, ui.train.b, bias);
    let q = query_op(uj, &dims[j], n, mode)?;
    let qs = mat_sides(&uj.kind, q.x, q.b, bias);
    let t = dims[i].t;
    let cols = if q.diag { 1 } else { q.v };
    let (s, tps) = gd::token_split(t, mul("n*V", n, cols)?);
    let side = |m: &super::MatSides<'_>, w: &'static str| -> Result<(u64, u64, u64)> {
        Ok(if m.r_ids { (0, ptr(&m.r, w)?, ptr(&m.c, w)?) } else { (ptr(&m.r, w)?, 0, ptr(&m.c, w)?) })
    };
    let (r, ids, c) = side(&ts, "x")?;
    let (rq, qids, cq) = side(&qs, "query x")?;
    let flags = (bias as u32 * FLAG_BIAS)
        | (q.diag as u32 * FLAG_DIAG)
        | (ts.r_ids as u32 * FLAG_RT_IDS)
        | (qs.r_ids as u32 * FLAG_RQ_IDS);
    Ok(LaunchPlan {
        kernel: cross_kernel(dims[i].dtype, q.b.dtype())?,
        grid: [u32_of("n*V (grid.x)", mul("n*V", n, cols)?)?, u32_of("token splits", s)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(c),
            KernelArg::Ptr(cq),
            KernelArg::Ptr(r),
            KernelArg::Ptr(rq),
            KernelArg::Ptr(ids),
            KernelArg::Ptr(qids),
            KernelArg::Ptr(q.seg_ptr),
            KernelArg::U32(u32_of("segment length", q.seg_len)?),
            KernelArg::Ptr(dev_ptr(ui.train.mask.as_ref(), "mask")?),
            KernelArg::Ptr(q.mask),
            KernelArg::Ptr(part),
            KernelArg::U32(u32_of("n", n)?),
            KernelArg::U32(u32_of("t", t)?),
            KernelArg::U32(u32_of("dc", ts.dc)?),
            KernelArg::U32(u32_of("dr", ts.dr)?),
            KernelArg::U32(u32_of("q", q.q)?),
            KernelArg::U32(u32_of("V", q.v)?),
            KernelArg::U32(u32_of("tokens per split", tps)?),
            KernelArg::U32(flags),
        ],
    })
}

/// Sort, table and gather plans of an embedding × embedding term; scratch carved from `c`.
#[allow(clippy::too_many_arguments)]
fn gather_plans(uses: &[LayerUse<'_>], dims: &[UseDims], n: u64, mode: Mode, i: usize, j: usize, part: u64, ws: u64, c: &mut Carve) -> Result<Vec<LaunchPlan>> {
    let (ui, uj) = (&uses[i], &uses[j]);
    let (vocab, d) = match ui.kind {
        LayerKind::Embedding { vocab, d } => (vocab, d),
        _ => unreachable!("gather terms are embedding × embedding"),
    };
    let q = query_op(uj, &dims[j], n, mode)?;
    let perm = ws + c.take(mul("perm bytes", q.q, 4)?)?;
    let sid = ws + c.take(mul("sid bytes", q.q, 4)?)?;
    let table = ws + c.take(product("table bytes", &[q.q, d, 4])?)?;
    let t = dims[i].t;
    let cols = if q.diag { 1 } else { q.v };
    let (s, tps) = gd::token_split(t, mul("n*V", n, cols)?);
    let dt = dims[i].dtype;
    let sort = LaunchPlan {
        kernel: "embed_sort".into(),
        grid: [u32_of("sort blocks", q.q.div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(ptr(&q.x, "query x")?),
            KernelArg::Ptr(q.mask),
            KernelArg::Ptr(q.seg_ptr),
            KernelArg::U32(u32_of("segment length", q.seg_len)?),
            KernelArg::U32(u32_of("q", q.q)?),
            KernelArg::U32(u32_of("V", q.v)?),
            KernelArg::U32(u32_of("vocab", vocab)?),
            KernelArg::Ptr(perm),
            KernelArg::Ptr(sid),
        ],
    };
    let tab = LaunchPlan {
        // Reads only the query side: its own dtype (f32 for model_ghg's combined query).
        kernel: kname("embed_table", q.b.dtype()),
        grid: [u32_of("q (grid.x)", q.q)?, u32_of("d chunks", d.div_ceil(256))?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(ptr(&q.b, "query b")?),
            KernelArg::Ptr(perm),
            KernelArg::Ptr(sid),
            KernelArg::Ptr(q.seg_ptr),
            KernelArg::U32(u32_of("segment length", q.seg_len)?),
            KernelArg::U32(u32_of("q", q.q)?),
            KernelArg::U32(u32_of("V", q.v)?),
            KernelArg::U32(u32_of("d", d)?),
            KernelArg::Ptr(table),
        ],
    };
    let gather = LaunchPlan {
        kernel: kname("embed_gather", dt),
        grid: [u32_of("n*V (grid.x)", mul("n*V", n, cols)?)?, u32_of("token splits", s)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(ptr(&ui.train.x, "x")?),
            KernelArg::Ptr(ptr(&ui.train.b, "b")?),
            KernelArg::Ptr(dev_ptr(ui.train.mask.as_ref(), "mask")?),
            KernelArg::Ptr(sid),
            KernelArg::Ptr(table),
            KernelArg::Ptr(q.seg_ptr),
            KernelArg::U32(u32_of("segment length", q.seg_len)?),
            KernelArg::Ptr(part),
            KernelArg::U32(u32_of("n", n)?),
            KernelArg::U32(u32_of("t", t)?),
            KernelArg::U32(u32_of("d", d)?),
            KernelArg::U32(u32_of("q", q.q)?),
            KernelArg::U32(u32_of("V", q.v)?),
            KernelArg::U32(u32_of("vocab", vocab)?),
            KernelArg::U32(u32_of("tokens per split", tps)?),
            KernelArg::U32(if q.diag { FLAG_DIAG } else { 0 }),
        ],
    };
    Ok(vec![sort, tab, gather])
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_grad_plan(dt: DType, x: u64, b: u64, mask: u64, seg_ptr: u64, seg_len: u64, rows: u64, groups: u64, d: u64, bias: bool, accumulate: bool, out: u64) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: kname("norm_grad", dt),
        grid: [u32_of("d chunks", d.div_ceil(256))?, u32_of("groups (grid.y)", groups)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(x),
            KernelArg::Ptr(b),
            KernelArg::Ptr(mask),
            KernelArg::Ptr(seg_ptr),
            KernelArg::U32(u32_of("segment length", seg_len)?),
            KernelArg::U32(u32_of("rows", rows)?),
            KernelArg::U32(u32_of("groups", groups)?),
            KernelArg::U32(u32_of("d", d)?),
            KernelArg::U32((bias as u32 * FLAG_BIAS) | (accumulate as u32 * FLAG_ACCUMULATE)),
            KernelArg::Ptr(out),
        ],
    })
}

#[allow(clippy::too_many_arguments)]
fn norm_plans(uses: &[LayerUse<'_>], dims: &[UseDims], n: u64, nv: u64, mode: Mode, group: &[usize], d: u64, bias: bool, part: u64, ws: u64, c: &mut Carve) -> Result<Vec<LaunchPlan>> {
    let dd = d * (1 + bias as u64);
    let gt = ws + c.take(product("norm grads", &[n, dd, 4])?)?;
    let mut plans = Vec::new();
    for (k, &u) in group.iter().enumerate() {
        let (use_, ud) = (&uses[u], &dims[u]);
        plans.push(norm_grad_plan(
            ud.dtype,
            ptr(&use_.train.x, "x")?,
            ptr(&use_.train.b, "b")?,
            dev_ptr(use_.train.mask.as_ref(), "mask")?,
            0,
            ud.t,
            mul("n*t", n, ud.t)?,
            n,
            d,
            bias,
            k > 0,
            gt,
        )?);
    }
    let gq = if mode == Mode::Dot {
        let gq = ws + c.take(product("norm query grads", &[nv, dd, 4])?)?;
        for (k, &u) in group.iter().enumerate() {
            let (use_, ud) = (&uses[u], &dims[u]);
            let q = use_.query.as_ref().expect("validated");
            let qd = ud.query.as_ref().expect("validated");
            let (seg_ptr, seg_len) = seg_kind_args(qd);
            plans.push(norm_grad_plan(
                q.b.dtype(), // f32 for model_ghg's combined query (x̂_val widened, comb)
                ptr(&q.x, "query x")?,
                ptr(&q.b, "query b")?,
                dev_ptr(q.mask.as_ref(), "query mask")?,
                seg_ptr,
                seg_len,
                qd.q,
                nv,
                d,
                bias,
                k > 0,
                gq,
            )?);
        }
        gq
    } else {
        gt
    };
    plans.push(gd::rows_dot_plan(gt, gq, part, n, out_cols(mode, n, nv), dd, mode == Mode::SelfNorm)?.0);
    Ok(plans)
}

/// The single-Linear-use terms as ghost dot-product layers.
fn linear_layers(uses: &[LayerUse<'_>], dims: &[UseDims], terms: &[Term], n: u64, mode: Mode) -> Result<Vec<GpuDotLayer>> {
    let mut gl = Vec::new();
    for t in terms {
        let Term::Linear { u, form } = t else { continue };
        let (use_, ud) = (&uses[*u], &dims[*u]);
        let shape = super::linear_shape(&use_.kind);
        let td = TrainDims { n, t: ud.t, d_in: shape.d_in, d_out: shape.d_out, has_bias: shape.has_bias, dtype: ud.dtype };
        let (a, b, mask) = (ptr(&use_.train.x, "x")?, ptr(&use_.train.b, "b")?, dev_ptr(use_.train.mask.as_ref(), "mask")?);
        let (query, ptrs, query_dtype) = match mode {
            Mode::Dot => {
                let q = use_.query.as_ref().expect("validated");
                let ptrs = LayerPtrs { a, b, mask, aq: ptr(&q.x, "query x")?, bq: ptr(&q.b, "query b")?, qmask: dev_ptr(q.mask.as_ref(), "query mask")? };
                (ud.query.clone().expect("validated"), ptrs, q.b.dtype())
            }
            Mode::Pairwise => {
                (QueryDims { q: mul("n*t", n, ud.t)?, v: n, seg: SegKind::Uniform(ud.t) }, LayerPtrs { a, b, mask, aq: a, bq: b, qmask: mask }, td.dtype)
            }
            Mode::SelfNorm => (QueryDims { q: ud.t, v: 1, seg: SegKind::Single }, LayerPtrs { a, b, mask, aq: 0, bq: 0, qmask: 0 }, td.dtype),
        };
        gl.push(GpuDotLayer { dims: td, query, query_dtype, ptrs, form: *form, pairwise: mode == Mode::Pairwise, self_only: mode == Mode::SelfNorm });
    }
    Ok(gl)
}

#[allow(clippy::too_many_arguments)]
fn build(sm: u32, ws: u64, n: u64, nv: u64, uses: &[LayerUse<'_>], dims: &[UseDims], terms: &[Term], mode: Mode, out: u64, acc: Accumulate) -> Result<(Vec<LaunchPlan>, u64)> {
    let cols = out_cols(mode, n, nv);
    let count = mul("n*V", n, cols)?;
    let gl = linear_layers(uses, dims, terms, n, mode)?;
    let (mut plans, lin_fin, base) = if gl.is_empty() {
        (Vec::new(), None, 0)
    } else {
        let p = gd::partial_plans(sm, &gl, n, cols, ws)?;
        let splits: u64 = p.layer_splits.iter().sum();
        (p.plans, Some(gd::finalize_plan(p.partial, out, count, splits, acc)?), p.workspace_bytes)
    };
    let splits: Vec<u64> = terms.iter().map(|t| term_splits(t, n, nv, dims, mode)).collect::<Result<_>>()?;
    let total: u64 = splits.iter().sum();
    let mut carve = Carve { bytes: base };
    let partial = ws + carve.take(product("partial workspace", &[total.max(1), count, 4])?)?;
    let scratch_base = carve.bytes;
    let mut scratch_max = 0u64;
    let mut slot = 0u64;
    for (t, &s) in terms.iter().zip(&splits) {
        let part = partial + slot * count * 4;
        slot += s;
        let mut c = Carve { bytes: scratch_base };
        match t {
            Term::Linear { .. } => {}
            Term::Cross { i, j, bias } => plans.push(cross_plan(uses, dims, n, mode, *i, *j, *bias, part)?),
            Term::Gather { i, j } => plans.extend(gather_plans(uses, dims, n, mode, *i, *j, part, ws, &mut c)?),
            Term::Norm { uses: g, d, bias } => plans.extend(norm_plans(uses, dims, n, nv, mode, g, *d, *bias, part, ws, &mut c)?),
        }
        scratch_max = scratch_max.max(c.bytes - scratch_base);
    }
    let after_linear = lin_fin.is_some();
    if let Some(f) = lin_fin {
        plans.push(f);
    }
    if total > 0 {
        // The Linear finalize applied `acc`; the other terms add to it.
        let a = if after_linear { Accumulate { scale: acc.scale, beta: 1.0 } } else { acc };
        plans.push(gd::finalize_plan(partial, out, count, total, a)?);
    }
    Ok((plans, scratch_base + scratch_max))
}

/// Runs a validated model-level call on a GPU runtime.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(rt: &dyn KernelRuntime, n: u64, nv: u64, uses: &[LayerUse<'_>], dims: &[UseDims], terms: &[Term], mode: Mode, out: u64, acc: Accumulate) -> Result<()> {
    gd::run_with_workspace(rt, |ws| build(rt.sm_version(), ws, n, nv, uses, dims, terms, mode, out, acc))
}

/// The model-level pass of a fused `model_ghg` on the device whose query is
/// `(x_val, comb)`, `comb = w0·b_val + w1·ḃ`, and the `(ẋ, b_val)` pass `third` (its own
/// validated uses, dims and terms; `None` when no use has `ẋ`), in one workspace:
/// `[comb (+ x_val widened to f32) of every use | combined pass | (ẋ, b_val) pass]`.
///
/// Per use, `ghg_query_<dt>` (kernels/inrun.cu) forms `comb` in f32 and, for bf16 / f16 Linear
/// and norm uses, `x_val` widened to f32 (embedding ids are read in place), so the combined
/// query is all f32; the model plans of [`build`] then pick the f32-query kernels from the
/// query tensors' dtype (`ghost_dot_gram_qf32_*`, `factored_grad_f32`, `cross_gram_qf32_*`,
/// `embed_table_f32`, `norm_grad_f32`). The combined pass finalizes with `acc`, the third with
/// `(acc.scale·w1, beta 1)`: fixed launch order, no synchronization, deterministic.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_ghg(
    rt: &dyn KernelRuntime,
    n: u64,
    nv: u64,
    uses: &[LayerUse<'_>],
    dims: &[UseDims],
    terms: &[Term],
    b_dot: &[Tensor<'_>],
    w: (f32, f32),
    third: Option<(&[LayerUse<'_>], &[UseDims], &[Term])>,
    out: u64,
    acc: Accumulate,
) -> Result<()> {
    gd::run_with_workspace(rt, |ws| {
        let mut carve = Carve::default();
        let mut plans = Vec::with_capacity(uses.len());
        let mut comb_uses = Vec::with_capacity(uses.len());
        for ((u, d), bd) in uses.iter().zip(dims).zip(b_dot) {
            let q = u.query.as_ref().expect("validated");
            let qd = d.query.as_ref().expect("validated");
            let count_b = mul("q*b width", qd.q, u.kind.b_width())?;
            let comb = ws + carve.take(mul("ghg comb bytes", count_b, 4)?)?;
            let widen = d.dtype != DType::F32 && !matches!(u.kind, LayerKind::Embedding { .. });
            let count_a = if widen { mul("q*x width", qd.q, u.kind.x_width())? } else { 0 };
            let x_f32 = if widen { ws + carve.take(mul("ghg x_val f32 bytes", count_a, 4)?)? } else { 0 };
            let x_val = if widen { ptr(&q.x, "query x")? } else { 0 };
            plans.push(crate::inrun::ghg_query_plan(d.dtype, ptr(&q.b, "query b")?, ptr(bd, "b_dot")?, comb, count_b, x_val, x_f32, count_a, w.0, w.1)?);
            // SAFETY: workspace regions of `count_*` f32 carved above; these views only carry
            // the addresses into the launch plans (nothing on the host dereferences them) and
            // the workspace outlives every launch of this op (run_with_workspace).
            let b = Tensor::Device(unsafe { DeviceSlice::from_raw_parts(comb, count_b, DType::F32) });
            let x = if widen { Tensor::Device(unsafe { DeviceSlice::from_raw_parts(x_f32, count_a, DType::F32) }) } else { q.x };
            comb_uses.push(LayerUse { query: Some(UseQuery { x, b, ..*q }), ..*u });
        }
        let base = carve.bytes;
        let (mut p, bytes) = build(rt.sm_version(), ws + base, n, nv, &comb_uses, dims, terms, Mode::Dot, out, acc)?;
        plans.append(&mut p);
        let mut total = v_add(base, bytes)?;
        if let Some((u3, d3, t3)) = third {
            let a3 = Accumulate { scale: acc.scale * w.1, beta: 1.0 };
            let (mut p, bytes) = build(rt.sm_version(), ws + total, n, nv, u3, d3, t3, Mode::Dot, out, a3)?;
            plans.append(&mut p);
            total = v_add(total, bytes)?;
        }
        Ok((plans, total))
    })
}

fn v_add(a: u64, b: u64) -> Result<u64> {
    crate::validate::add("workspace", a, b)
}
