//! Launch plans of the ghost dot-product family (kernels/ghost_gram.cu, ghost_dense.cu,
//! factored_grad.cu, reduce.cu). Each plan's argument list mirrors the kernel's declaration;
//! the interpreter tests execute exactly these plans.
//!
//! Results are made deterministic by splitting long token loops across CTAs that each write a
//! partial sum to a workspace slot, followed by `finalize_partials_f32`, which adds the slots in
//! a fixed order and applies `out = beta·out + scale·Σ`. The split count depends only on the
//! shape, never on the device, so every GPU returns the same bits.

use super::cost::Form;
use super::validate_ops::{QueryDims, SegKind, TrainDims};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::Accumulate;
use crate::runtime::{KernelArg, KernelRuntime, LaunchPlan};

/// All our kernels run 256-thread 1-D blocks with static shared memory.
pub(crate) const BLOCK: [u32; 3] = [256, 1, 1];
/// CTAs we aim for so a large GPU is busy (≈ 4 per SM on a 132-SM H100); a constant, so the
/// split (and therefore the bits of the result) never depends on the device.
const TARGET_CTAS: u64 = 528;
/// Smallest token chunk worth a CTA.
const MIN_TOKENS_PER_SPLIT: u64 = 32;

pub(crate) const FLAG_BIAS: u32 = 1;
pub(crate) const FLAG_SELF: u32 = 2;

fn u32_of(what: &str, v: u64) -> Result<u32> {
    crate::validate::fits_i32(what, v)
}

/// Splits `t` tokens over CTAs: returns (splits, tokens_per_split).
pub(crate) fn token_split(t: u64, ctas_without_split: u64) -> (u64, u64) {
    let max_splits = t.div_ceil(MIN_TOKENS_PER_SPLIT).max(1);
    let want = TARGET_CTAS.div_ceil(ctas_without_split.max(1)).max(1);
    let s = want.min(max_splits);
    let tps = t.div_ceil(s);
    (t.div_ceil(tps), tps)
}

/// Device pointers of one layer's operands (0 for absent optional ones).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerPtrs {
    pub a: u64,
    pub b: u64,
    pub mask: u64,
    pub aq: u64,
    pub bq: u64,
    pub qmask: u64,
}

fn seg_args(q: &QueryDims) -> (u64, u64) {
    match q.seg {
        SegKind::Single => (0, 0),
        SegKind::Uniform(len) => (0, len),
        SegKind::Device(p) => (p, 0),
        SegKind::Host(_) => unreachable!("host offsets never reach a GPU plan"),
    }
}

fn flags(d: &TrainDims) -> u32 {
    if d.has_bias {
        FLAG_BIAS
    } else {
        0
    }
}

fn kname(base: &str, dt: DType) -> String {
    format!("{base}_{}", dt.kernel_suffix())
}

/// Carves 256-byte-aligned regions out of one workspace allocation.
#[derive(Debug, Default)]
pub(crate) struct Carve {
    pub bytes: u64,
}

impl Carve {
    pub fn take(&mut self, bytes: u64) -> Result<u64> {
        let off = self.bytes;
        self.bytes = crate::validate::add("workspace", off, bytes.div_ceil(256) * 256)?;
        Ok(off)
    }
}

/// Smallest compute capability with `mma.sync.m16n8k16` for bf16 / f16 and `cp.async`.
pub(crate) const SM_TENSOR_CORES: u32 = 80;

/// Whether the tensor-core kernels run for factors of `dtype` on a device of compute capability
/// `sm` (bf16 / f16 on sm_80+; f32 always runs the FMA kernels).
pub(crate) fn uses_tensor_cores(dtype: DType, sm: u32) -> bool {
    matches!(dtype, DType::BF16 | DType::F16) && sm >= SM_TENSOR_CORES
}

/// Gram kernel for training factors of `train` and query factors of `query` on an `sm` device:
/// the same type (`ghost_dot_gram_mma_<dt>` on tensor cores for bf16 / f16 on sm_80+,
/// `ghost_dot_gram_<dt>` otherwise), or an f32 query beside bf16 / f16 training factors
/// (`ghost_dot_gram_qf32_<dt>`, the ghg combined query: CUDA cores, f32 arithmetic).
fn gram_kernel(train: DType, query: DType, sm: u32) -> Result<String> {
    match (train, query) {
        (t, q) if t == q && uses_tensor_cores(t, sm) => Ok(kname("ghost_dot_gram_mma", t)),
        (t, q) if t == q => Ok(kname("ghost_dot_gram", t)),
        (DType::BF16 | DType::F16, DType::F32) => Ok(kname("ghost_dot_gram_qf32", train)),
        _ => Err(GhostError::Internal(format!("no Gram kernel for {train} training factors with a {query} query"))),
    }
}

/// `ghost_dot_gram_<dt>` plan (`ghost_dot_gram_mma_<dt>` on tensor cores, `ghost_dot_gram_qf32_<dt>`
/// when `query_dtype` is f32 and the training factors are not; see [`gram_kernel`]): all three
/// share one signature, grid and partial layout, partial[s][n·V + v].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gram_plan(
    sm: u32,
    d: &TrainDims,
    query_dtype: DType,
    p: &LayerPtrs,
    seg_ptr: u64,
    seg_len: u64,
    q: u64,
    v: u64,
    self_mode: bool,
    partial: u64,
) -> Result<(LaunchPlan, u64)> {
    let nv = crate::validate::mul("n*V", d.n, v)?;
    let (s, tps) = token_split(d.t, nv);
    let plan = LaunchPlan {
        kernel: gram_kernel(d.dtype, query_dtype, sm)?,
        grid: [u32_of("n*V (grid.x)", nv)?, u32_of("token splits", s)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(p.a),
            KernelArg::Ptr(p.b),
            KernelArg::Ptr(p.aq),
            KernelArg::Ptr(p.bq),
            KernelArg::Ptr(seg_ptr),
            KernelArg::U32(u32_of("segment length", seg_len)?),
            KernelArg::Ptr(p.mask),
            KernelArg::Ptr(p.qmask),
            KernelArg::Ptr(partial),
            KernelArg::U32(u32_of("n", d.n)?),
            KernelArg::U32(u32_of("t", d.t)?),
            KernelArg::U32(u32_of("d_in", d.d_in)?),
            KernelArg::U32(u32_of("d_out", d.d_out)?),
            KernelArg::U32(u32_of("q", q)?),
            KernelArg::U32(u32_of("V", v)?),
            KernelArg::U32(u32_of("tokens per split", tps)?),
            KernelArg::U32(flags(d) | if self_mode { FLAG_SELF } else { 0 }),
        ],
    };
    Ok((plan, s))
}

/// `ghost_dot_dense_<dt>` plan for `V` dense matrices `M [V, d_out, d_in]`: partial[s][n·V + v].
pub(crate) fn dense_plan(d: &TrainDims, p: &LayerPtrs, m: u64, m_bias: u64, v: u64, partial: u64) -> Result<(LaunchPlan, u64)> {
    let nv = crate::validate::mul("n*V", d.n, v)?;
    let (s, tps) = token_split(d.t, nv);
    let plan = LaunchPlan {
        kernel: kname("ghost_dot_dense", d.dtype),
        grid: [u32_of("n*V (grid.x)", nv)?, u32_of("token splits", s)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(p.a),
            KernelArg::Ptr(p.b),
            KernelArg::Ptr(m),
            KernelArg::Ptr(m_bias),
            KernelArg::Ptr(p.mask),
            KernelArg::Ptr(partial),
            KernelArg::U32(u32_of("n", d.n)?),
            KernelArg::U32(u32_of("t", d.t)?),
            KernelArg::U32(u32_of("d_in", d.d_in)?),
            KernelArg::U32(u32_of("d_out", d.d_out)?),
            KernelArg::U32(u32_of("V", v)?),
            KernelArg::U32(u32_of("tokens per split", tps)?),
            KernelArg::U32(flags(d)),
        ],
    };
    Ok((plan, s))
}

/// `factored_grad_<dt>` plan: `out[g] = beta·out[g] + scale·Σ_{u∈g} w_u bq_u aq_uᵀ` for `batch`
/// row groups.
#[allow(clippy::too_many_arguments)]
pub(crate) fn factored_grad_plan(
    dtype: DType,
    aq: u64,
    bq: u64,
    row_weight: u64,
    mask: u64,
    seg_ptr: u64,
    seg_len: u64,
    out: u64,
    out_bias: u64,
    q: u64,
    d_in: u64,
    d_out: u64,
    batch: u64,
    has_bias: bool,
    acc: Accumulate,
) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: kname("factored_grad", dtype),
        grid: [
            u32_of("d_in tiles", d_in.div_ceil(64))?,
            u32_of("d_out tiles", d_out.div_ceil(64))?,
            u32_of("batch (grid.z)", batch)?,
        ],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(aq),
            KernelArg::Ptr(bq),
            KernelArg::Ptr(row_weight),
            KernelArg::Ptr(mask),
            KernelArg::Ptr(seg_ptr),
            KernelArg::U32(u32_of("segment length", seg_len)?),
            KernelArg::Ptr(out),
            KernelArg::Ptr(out_bias),
            KernelArg::U32(u32_of("q", q)?),
            KernelArg::U32(u32_of("d_in", d_in)?),
            KernelArg::U32(u32_of("d_out", d_out)?),
            KernelArg::U32(u32_of("batch", batch)?),
            KernelArg::U32(if has_bias { FLAG_BIAS } else { 0 }),
            KernelArg::F32(acc.scale),
            KernelArg::F32(acc.beta),
        ],
    })
}

/// `rows_dot_f32` plan: partial[s][n·V + v] = Σ_{k∈chunk s} X[n,k]·Y[v,k]; with `diag`
/// (and `v = 1`), partial[s][n] = Σ_k X[n,k]·Y[n,k].
pub(crate) fn rows_dot_plan(x: u64, y: u64, partial: u64, n: u64, v: u64, dim: u64, diag: bool) -> Result<(LaunchPlan, u64)> {
    let nv = crate::validate::mul("n*V", n, v)?;
    let want = TARGET_CTAS.div_ceil(nv.max(1)).max(1);
    let s = want.min(dim.div_ceil(1024)).max(1);
    let chunk = dim.div_ceil(s);
    let s = dim.div_ceil(chunk);
    let plan = LaunchPlan {
        kernel: "rows_dot_f32".into(),
        grid: [u32_of("n*V (grid.x)", nv)?, u32_of("splits", s)?, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(x),
            KernelArg::Ptr(y),
            KernelArg::Ptr(partial),
            KernelArg::U32(u32_of("n", n)?),
            KernelArg::U32(u32_of("V", v)?),
            KernelArg::U64(dim),
            KernelArg::U64(chunk),
            KernelArg::U32(diag as u32),
        ],
    };
    Ok((plan, s))
}

/// `finalize_partials_f32` plan: out[i] = beta·out[i] + scale·Σ_s partial[s·count + i].
pub(crate) fn finalize_plan(partial: u64, out: u64, count: u64, splits: u64, acc: Accumulate) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "finalize_partials_f32".into(),
        grid: [u32_of("finalize blocks", count.div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(partial),
            KernelArg::Ptr(out),
            KernelArg::U32(u32_of("count", count)?),
            KernelArg::U32(u32_of("splits", splits)?),
            KernelArg::F32(acc.scale),
            KernelArg::F32(acc.beta),
        ],
    })
}

/// One layer of a GPU ghost dot-product, validated.
#[derive(Clone)]
pub(crate) struct GpuDotLayer {
    pub dims: TrainDims,
    pub query: QueryDims,
    /// Element type of `aq`, `bq`: `dims.dtype`, or f32 beside bf16 / f16 training factors
    /// (ghg's combined query, formed on the device in f32); not with `pairwise` / `self_only`.
    pub query_dtype: DType,
    pub ptrs: LayerPtrs,
    pub form: Form,
    /// Pairwise train×train (query = the training samples themselves, `V = N`).
    pub pairwise: bool,
    /// Diagonal only (`‖G_n‖²`, `V = 1`).
    pub self_only: bool,
}

/// Plans for `out[n, v] = beta·out + scale·Σ_layers <G_n, Gq_v>`: per-layer kernels writing
/// partial slots, then one finalize. Returns the plans and the workspace bytes they need; the
/// plans use offsets relative to `ws` (the workspace base).
pub(crate) fn ghost_dot_plans(
    sm: u32,
    layers: &[GpuDotLayer],
    n: u64,
    v: u64,
    out: u64,
    acc: Accumulate,
    ws: u64,
) -> Result<(Vec<LaunchPlan>, u64)> {
    let nv = crate::validate::mul("n*V", n, v)?;
    let mut p = partial_plans(sm, layers, n, v, ws)?;
    let total_splits: u64 = p.layer_splits.iter().sum();
    p.plans.push(finalize_plan(p.partial, out, nv, total_splits, acc)?);
    Ok((p.plans, p.workspace_bytes))
}

/// The per-layer kernels of [`ghost_dot_plans`] without the finalize: layer `l` writes partial
/// slots `[Σ_{k<l} layer_splits[k], Σ_{k≤l} layer_splits[k])` of `partial` (`n·V` floats each).
pub(crate) struct PartialPlans {
    pub plans: Vec<LaunchPlan>,
    /// Device address of slot 0.
    pub partial: u64,
    pub layer_splits: Vec<u64>,
    pub workspace_bytes: u64,
}

/// Per-layer kernels writing partial slots, in layer order (see [`PartialPlans`]), for a device
/// of compute capability `sm` ([`KernelRuntime::sm_version`](crate::runtime::KernelRuntime::sm_version)).
pub(crate) fn partial_plans(sm: u32, layers: &[GpuDotLayer], n: u64, v: u64, ws: u64) -> Result<PartialPlans> {
    let nv = crate::validate::mul("n*V", n, v)?;
    // First pass: how many partial slots each layer writes (plans depend only on sizes).
    let mut plans = Vec::new();
    let mut carve = Carve::default();
    let mut layer_splits = Vec::new();
    for l in layers {
        if l.query_dtype != l.dims.dtype && (l.pairwise || l.self_only) {
            return Err(GhostError::Internal("a pairwise / self ghost dot has no query of its own type".into()));
        }
        let s = match l.form {
            Form::Gram => {
                let (seg, seg_len) = if l.pairwise { (0, l.dims.t) } else { seg_args(&l.query) };
                gram_plan(sm, &l.dims, l.query_dtype, &l.ptrs, seg, seg_len, l.query.q, v, l.self_only, 0)?.1
            }
            Form::DenseQuery => dense_plan(&l.dims, &l.ptrs, 0, 0, v, 0)?.1,
            Form::Materialize => {
                let dd = crate::validate::mul("d_out*d_in", l.dims.d_out, l.dims.d_in)?;
                let s1 = rows_dot_plan(0, 0, 0, n, v, dd, l.self_only)?.1;
                let s2 = if l.dims.has_bias { rows_dot_plan(0, 0, 0, n, v, l.dims.d_out, l.self_only)?.1 } else { 0 };
                s1 + s2
            }
        };
        layer_splits.push(s);
    }
    let total_splits: u64 = layer_splits.iter().sum();
    let partial_bytes = crate::validate::product("partial workspace", &[total_splits, nv, 4])?;
    let partial = ws + carve.take(partial_bytes)?;
    let scratch_base = carve.bytes;
    let mut scratch_max = 0u64;
    let mut slot = 0u64;
    for (l, &s) in layers.iter().zip(&layer_splits) {
        let part = partial + slot * nv * 4;
        slot += s;
        let d = &l.dims;
        match l.form {
            Form::Gram => {
                let (seg, seg_len) = if l.pairwise { (0, d.t) } else { seg_args(&l.query) };
                plans.push(gram_plan(sm, d, l.query_dtype, &l.ptrs, seg, seg_len, l.query.q, v, l.self_only, part)?.0);
            }
            Form::DenseQuery => {
                let mut c = Carve { bytes: scratch_base };
                let dd = crate::validate::mul("d_out*d_in", d.d_out, d.d_in)?;
                let m = ws + c.take(crate::validate::product("dense M", &[v, dd, 4])?)?;
                let mb = if d.has_bias { ws + c.take(crate::validate::product("dense M bias", &[v, d.d_out, 4])?)? } else { 0 };
                scratch_max = scratch_max.max(c.bytes - scratch_base);
                let (seg, seg_len) = seg_args(&l.query);
                plans.push(factored_grad_plan(
                    l.query_dtype,
                    l.ptrs.aq,
                    l.ptrs.bq,
                    0,
                    l.ptrs.qmask,
                    seg,
                    seg_len,
                    m,
                    mb,
                    l.query.q,
                    d.d_in,
                    d.d_out,
                    v,
                    d.has_bias,
                    Accumulate::overwrite(),
                )?);
                plans.push(dense_plan(d, &l.ptrs, m, mb, v, part)?.0);
            }
            Form::Materialize => {
                let mut c = Carve { bytes: scratch_base };
                let dd = crate::validate::mul("d_out*d_in", d.d_out, d.d_in)?;
                let g = ws + c.take(crate::validate::product("materialized G", &[n, dd, 4])?)?;
                let gb = if d.has_bias { ws + c.take(crate::validate::product("materialized G bias", &[n, d.d_out, 4])?)? } else { 0 };
                let nt = crate::validate::mul("n*t", d.n, d.t)?;
                plans.push(factored_grad_plan(
                    d.dtype,
                    l.ptrs.a,
                    l.ptrs.b,
                    0,
                    l.ptrs.mask,
                    0,
                    d.t,
                    g,
                    gb,
                    nt,
                    d.d_in,
                    d.d_out,
                    n,
                    d.has_bias,
                    Accumulate::overwrite(),
                )?);
                let (gq, gqb) = if l.pairwise || l.self_only {
                    (g, gb)
                } else {
                    let gq = ws + c.take(crate::validate::product("materialized Gq", &[v, dd, 4])?)?;
                    let gqb =
                        if d.has_bias { ws + c.take(crate::validate::product("materialized Gq bias", &[v, d.d_out, 4])?)? } else { 0 };
                    let (seg, seg_len) = seg_args(&l.query);
                    plans.push(factored_grad_plan(
                        l.query_dtype,
                        l.ptrs.aq,
                        l.ptrs.bq,
                        0,
                        l.ptrs.qmask,
                        seg,
                        seg_len,
                        gq,
                        gqb,
                        l.query.q,
                        d.d_in,
                        d.d_out,
                        v,
                        d.has_bias,
                        Accumulate::overwrite(),
                    )?);
                    (gq, gqb)
                };
                scratch_max = scratch_max.max(c.bytes - scratch_base);
                let (p1, s1) = rows_dot_plan(g, gq, part, n, v, dd, l.self_only)?;
                plans.push(p1);
                if d.has_bias {
                    plans.push(rows_dot_plan(gb, gqb, part + s1 * nv * 4, n, v, d.d_out, l.self_only)?.0);
                }
            }
        }
    }
    Ok(PartialPlans { plans, partial, layer_splits, workspace_bytes: scratch_base + scratch_max })
}

/// Runs plans built against workspace base 0 after relocating them onto the real workspace.
pub(crate) fn run_with_workspace(
    rt: &dyn KernelRuntime,
    build: impl Fn(u64) -> Result<(Vec<LaunchPlan>, u64)>,
) -> Result<()> {
    // Sizes do not depend on the base: build once to size the workspace, then for real.
    let (_, bytes) = build(0)?;
    let _serialized = rt.op_lock()?;
    let ws = if bytes > 0 { rt.workspace(bytes)? } else { 0 };
    let (plans, _) = build(ws)?;
    for p in &plans {
        rt.launch(p)?;
    }
    Ok(())
}
