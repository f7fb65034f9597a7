//! In-Run Data Shapley (MATH.md §2): the per-step value of every training sample of an SGD
//! batch, first and second order fused, and a float64 accumulator of values over steps.
//!
//! For one SGD step `w' = w − η Σ_{j∈batch} ∇ℓ_j` the value of training sample `n` is
//! ```text
//! φ_n = −η Σ_l <G^l_n, g_val^l>  +  (η²/2) Σ_l <G^l_n, (H_val v)^l>,   v = Σ_{j∈batch} ∇ℓ_j
//! g_val^l      = b_valᵀ a_val                      (validation gradient of layer l)
//! (H_val v)^l  = ḃᵀ a_val + b_valᵀ ȧ               (layer l's block of the exact HVP)
//! ```
//! with `ȧ, ḃ` the directional derivatives along `v` of layer l's validation activations and
//! output gradients (one forward-over-reverse JVP of the validation pass, done by the caller).
//! With a bias, the bias column of `(H_val v)^l` is `Σ_t ḃ_t` (the augmented constant 1 of the
//! activations has derivative 0), so the `(ȧ, b_val)` term carries no bias.
//!
//! Shapes per layer (row-major): `A [N, T, d_in]`, `B [N, T, d_out]` (the training factors,
//! as in [`crate::ghost_dot`]), `a_val, a_dot [T_v, d_in]`, `b_val, b_dot [T_v, d_out]`, all
//! of the training dtype; optional `val_mask [T_v]` u8 (zero = the token does not exist).
//!
//! Algorithm: three ghost-dot *pseudo-layers* per model layer, each choosing its form
//! (Gram / dense-query / materialize) by the cost model:
//! `(a_val, b_val)` (first order), `(a_val, ḃ)` and `(ȧ, b_val)` (second order, the latter
//! without bias). The first two share `a_val` and the bias column, so the fast CPU path and the
//! GPU evaluate them as **one** query `(a_val, comb)`, `comb = −η·b_val + (η²/2)·ḃ` (formed in
//! f64 and rounded once to f32), in the first-order pseudo-layer's form: two ghost-dot passes
//! per layer, `(a_val, comb)` and `(ȧ, b_val)`. On a GPU, `ghg_query_<dt>` (kernels/inrun.cu)
//! forms `comb` (and `a_val` widened to f32 for bf16 / f16 factors, so that the query is all
//! f32) in the op's workspace; the pass kernels write partial slots ordered
//! `[all combined passes | all (ȧ, b_val) passes]` and one `finalize_groups_f32` weights the two
//! groups by `1` and `η²/2` in a fixed order: deterministic, one finalize whatever the number of
//! layers. The float64 reference materializes all three pseudo-layers' gradients.

use crate::buffer::{HostSlice, Tensor, TensorMut};
use crate::context::{cpu_query, cpu_train, dev_ptr, host_u8, Backend, Context};
use crate::cpu::{self, apply_accumulate, reference};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::gpu::{self, Carve, GpuDotLayer, LayerPtrs, BLOCK};
use crate::ghost_dot::{Accumulate, FormChoice, FormRequest, LayerShape, QueryFactors, Segments, TrainFactors};
use crate::runtime::{KernelArg, LaunchPlan};
use crate::validate as v;

/// One model layer of a [`Context::ghg`] call.
#[derive(Debug, Clone, Copy)]
pub struct GhgLayer<'a> {
    pub shape: LayerShape,
    /// Per-sample factors of the training batch.
    pub train: TrainFactors<'a>,
    /// Validation activations `[T_v, d_in]`.
    pub a_val: Tensor<'a>,
    /// Validation output gradients `[T_v, d_out]`.
    pub b_val: Tensor<'a>,
    /// `ȧ`: derivative of `a_val` along `v` `[T_v, d_in]`.
    pub a_dot: Tensor<'a>,
    /// `ḃ`: derivative of `b_val` along `v` `[T_v, d_out]`.
    pub b_dot: Tensor<'a>,
    pub t_v: u64,
    /// Optional u8 `[T_v]`, zero = skip that validation token (in all four factors).
    pub val_mask: Option<Tensor<'a>>,
}

impl<'a> GhgLayer<'a> {
    fn query(&self, aq: Tensor<'a>, bq: Tensor<'a>) -> QueryFactors<'a> {
        QueryFactors { aq, bq, q: self.t_v, segments: Segments::Single, mask: self.val_mask }
    }

    /// The three pseudo-layers: first order, `(a_val, ḃ)`, `(ȧ, b_val)` (no bias).
    fn pseudo(&self) -> [(LayerShape, QueryFactors<'a>); 3] {
        [
            (self.shape, self.query(self.a_val, self.b_val)),
            (self.shape, self.query(self.a_val, self.b_dot)),
            (self.shape.with_bias(false), self.query(self.a_dot, self.b_val)),
        ]
    }
}

/// Host layer of the float64 reference ([`reference_ghg`]).
fn host_layer<'a>(l: &GhgLayer<'a>) -> Result<HostGhg<'a>> {
    Ok(HostGhg {
        a: l.train.a.host("a")?,
        b: l.train.b.host("b")?,
        mask: host_u8("mask", l.train.mask.as_ref())?,
        a_val: l.a_val.host("a_val")?,
        b_val: l.b_val.host("b_val")?,
        a_dot: l.a_dot.host("a_dot")?,
        b_dot: l.b_dot.host("b_dot")?,
        val_mask: host_u8("val_mask", l.val_mask.as_ref())?,
        n: l.train.n as usize,
        t: l.train.t as usize,
        t_v: l.t_v as usize,
        shape: l.shape,
    })
}

struct HostGhg<'a> {
    a: HostSlice<'a>,
    b: HostSlice<'a>,
    mask: Option<&'a [u8]>,
    a_val: HostSlice<'a>,
    b_val: HostSlice<'a>,
    a_dot: HostSlice<'a>,
    b_dot: HostSlice<'a>,
    val_mask: Option<&'a [u8]>,
    n: usize,
    t: usize,
    t_v: usize,
    shape: LayerShape,
}

/// The float64 reference of [`Context::ghg`] on host layers: materializes `G_n`, `g_val` and
/// `(H_val v)` per layer and returns `(first, second)` with `first[n] = Σ_l <G_n, g_val>` and
/// `second[n] = Σ_l <G_n, H_val v>`; with `abs`, the same sums over absolute values of every
/// product (the magnitude that bounds any f32 evaluation's rounding error).
pub fn reference_ghg(layers: &[GhgLayer<'_>], abs: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = layers.first().map_or(0, |l| l.train.n as usize);
    let (mut first, mut second) = (vec![0.0f64; n], vec![0.0f64; n]);
    for l in layers {
        let h = host_layer(l)?;
        let (d_in, d_out, bias) = (h.shape.d_in as usize, h.shape.d_out as usize, h.shape.has_bias);
        let di = d_in + bias as usize;
        let mat = |a: &HostSlice<'_>, b: &HostSlice<'_>, m: Option<&[u8]>, rows| {
            reference::materialize(a, b, m, rows, d_in, d_out, bias, None, abs)
        };
        let gval = mat(&h.a_val, &h.b_val, h.val_mask, 0..h.t_v);
        let mut hv = mat(&h.a_val, &h.b_dot, h.val_mask, 0..h.t_v);
        let hv2 = mat(&h.a_dot, &h.b_val, h.val_mask, 0..h.t_v);
        for (i, (x, y)) in hv.iter_mut().zip(&hv2).enumerate() {
            // ȧ's bias column is the derivative of the constant 1: zero.
            if !(bias && i % di == d_in) {
                *x += y;
            }
        }
        for s in 0..h.n {
            let g = mat(&h.a, &h.b, h.mask, s * h.t..(s + 1) * h.t);
            first[s] += g.iter().zip(&gval).map(|(x, y)| x * y).sum::<f64>();
            second[s] += g.iter().zip(&hv).map(|(x, y)| x * y).sum::<f64>();
        }
    }
    Ok((first, second))
}

/// `finalize_groups_f32` plan: `out[i] = beta·out + scale·(w0·Σ_{s<end0} p_s + w1·Σ_{end0≤s<end1} p_s)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finalize_groups_plan(
    partial: u64,
    out: u64,
    count: u64,
    end0: u64,
    end1: u64,
    w0: f32,
    w1: f32,
    acc: Accumulate,
) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "finalize_groups_f32".into(),
        grid: [v::fits_i32("finalize blocks", count.div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(partial),
            KernelArg::Ptr(out),
            KernelArg::U32(v::fits_i32("count", count)?),
            KernelArg::U32(v::fits_i32("end0", end0)?),
            KernelArg::U32(v::fits_i32("end1", end1)?),
            KernelArg::F32(w0),
            KernelArg::F32(w1),
            KernelArg::F32(acc.scale),
            KernelArg::F32(acc.beta),
        ],
    })
}

/// Device pointers and sizes of one layer's combined query (see [`ghg_query_plan`]).
struct CombLayer {
    /// The first-order pseudo-layer's pointers (`aq = a_val`, `bq = b_val`).
    ptrs: LayerPtrs,
    b_dot: u64,
    count_a: u64,
    count_b: u64,
}

/// `ghg_query_<dt>` plan: `comb[i] = w0·b_val[i] + w1·b_dot[i]` (formed in f64, rounded once to
/// f32) for `i < count_b`, and `a_f32[i] = a_val[i]` widened for `i < count_a` when `a_f32 != 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ghg_query_plan(
    dtype: DType,
    b_val: u64,
    b_dot: u64,
    comb: u64,
    count_b: u64,
    a_val: u64,
    a_f32: u64,
    count_a: u64,
    w0: f32,
    w1: f32,
) -> Result<LaunchPlan> {
    let count_a = if a_f32 != 0 { count_a } else { 0 };
    Ok(LaunchPlan {
        kernel: format!("ghg_query_{}", dtype.kernel_suffix()),
        grid: [v::fits_i32("ghg_query blocks", count_b.max(count_a).div_ceil(256))?, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(b_val),
            KernelArg::Ptr(b_dot),
            KernelArg::Ptr(comb),
            KernelArg::U64(count_b),
            KernelArg::Ptr(a_val),
            KernelArg::Ptr(a_f32),
            KernelArg::U64(count_a),
            KernelArg::F32(w0),
            KernelArg::F32(w1),
        ],
    })
}

/// `accumulate_values_f64` plan: one block, `phi[ids[k]] += values[k]` in k order.
pub(crate) fn accumulate_values_plan(values: u64, ids: u64, phi: u64, n: u64, num_ids: u64) -> Result<LaunchPlan> {
    Ok(LaunchPlan {
        kernel: "accumulate_values_f64".into(),
        grid: [1, 1, 1],
        block: BLOCK,
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(values),
            KernelArg::Ptr(ids),
            KernelArg::Ptr(phi),
            KernelArg::U32(v::fits_i32("n", n)?),
            KernelArg::U32(v::fits_i32("num_ids", num_ids)?),
        ],
    })
}

impl Context {
    /// Fused first + second order In-Run Data Shapley value of every training sample of one SGD
    /// step (MATH.md §2), summed over layers:
    /// `out[n] = beta·out + scale·(−η Σ_l <G^l_n, g_val^l> + (η²/2) Σ_l <G^l_n, (H_val v)^l>)`,
    /// `out` f32 `[N]`. See the [module docs](crate::inrun) for the factors.
    ///
    /// Returns the form chosen for every pseudo-layer, in the order
    /// `[(a_val, b_val) of layers 0..L | (a_val, ḃ), (ȧ, b_val) of layer 0, of layer 1, …]`.
    /// (The fast CPU path and the GPU evaluate `(a_val, b_val)` and `(a_val, ḃ)` of a layer as
    /// one query with `b` rows `−η·b_val + (η²/2)·ḃ`, in the first slot's form — the
    /// `(a_val, ḃ)` slot has the same sizes, so the same choice under `Auto`: two passes per
    /// layer. The float64 reference evaluates all three.)
    pub fn ghg(
        &self,
        layers: &[GhgLayer<'_>],
        eta: f32,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
        form: FormRequest,
    ) -> Result<Vec<FormChoice>> {
        const OP: &str = "ghg";
        v::finite("eta", eta)?;
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let first = layers.first().ok_or(GhostError::ZeroSize { what: "layers" })?;
        let (w0, w1) = (-eta, 0.5 * eta * eta);
        v::finite("eta²/2", w1)?;
        // Pseudo-layers in slot order: all first order, then all second order.
        let mut pseudo: Vec<(LayerShape, TrainFactors<'_>, QueryFactors<'_>)> = Vec::with_capacity(3 * layers.len());
        for l in layers {
            let [p0, _, _] = l.pseudo();
            pseudo.push((p0.0, l.train, p0.1));
        }
        for l in layers {
            let [_, p1, p2] = l.pseudo();
            pseudo.push((p1.0, l.train, p1.1));
            pseudo.push((p2.0, l.train, p2.1));
        }
        let n_first = layers.len();
        let mut validated = Vec::with_capacity(pseudo.len());
        for (shape, train, query) in &pseudo {
            if train.n != first.train.n {
                return Err(GhostError::InvalidArgument {
                    what: "layers",
                    reason: format!("all layers need the same N: {} vs {}", train.n, first.train.n),
                });
            }
            validated.push(self.validate_dot(shape, train, query)?);
        }
        let n = validated[0].0.n;
        v::output("out", out, self.space(), n, OP)?;
        self.check_out_ptr("out", out)?;
        let choices: Vec<FormChoice> =
            validated.iter().map(|(d, q)| Context::size_of(d, q).choose(form, &self.rates)).collect();
        match &self.backend {
            Backend::Gpu(rt) => {
                // Two passes per layer, as on the fast CPU path below: ghg_query_<dt>
                // (kernels/inrun.cu) forms comb = w0·b_val + w1·ḃ in f32 in the workspace (and
                // a_val widened to f32 when the factors are bf16 / f16, so the query is one f32
                // type), then the combined pass (a_val, comb) with the first-order slot's form,
                // then (ȧ, b_val) without bias. Slots: all combined passes (weight 1), then all
                // (ȧ, b_val) passes (weight w1), one grouped finalize.
                let dtype = validated[0].0.dtype;
                let widen_a = dtype != DType::F32;
                let mut comb_layers = Vec::with_capacity(layers.len());
                let mut second = Vec::with_capacity(layers.len());
                for (l, layer) in layers.iter().enumerate() {
                    let i2 = n_first + 2 * l + 1;
                    let ptrs = |(_, train, query): &(LayerShape, TrainFactors<'_>, QueryFactors<'_>)| -> Result<LayerPtrs> {
                        Ok(LayerPtrs {
                            a: train.a.device("a")?.ptr(),
                            b: train.b.device("b")?.ptr(),
                            mask: dev_ptr(train.mask.as_ref(), "mask")?,
                            aq: query.aq.device("a_val / a_dot")?.ptr(),
                            bq: query.bq.device("b_val")?.ptr(),
                            qmask: dev_ptr(query.mask.as_ref(), "val_mask")?,
                        })
                    };
                    let (d2, q2) = &validated[i2];
                    second.push(GpuDotLayer {
                        dims: *d2,
                        query: q2.clone(),
                        query_dtype: d2.dtype,
                        ptrs: ptrs(&pseudo[i2])?,
                        form: choices[i2].form,
                        pairwise: false,
                        self_only: false,
                    });
                    comb_layers.push(CombLayer {
                        ptrs: ptrs(&pseudo[l])?,
                        b_dot: layer.b_dot.device("b_dot")?.ptr(),
                        count_a: layer.t_v * layer.shape.d_in,
                        count_b: layer.t_v * layer.shape.d_out,
                    });
                }
                let out_ptr = out.device("out")?.ptr();
                gpu::run_with_workspace(rt.as_ref(), |ws| {
                    // Workspace: [comb (+ widened a_val) of every layer | ghost-dot partials and scratch].
                    let mut carve = Carve::default();
                    let mut plans = Vec::with_capacity(2 * layers.len() + 1);
                    let mut gl = Vec::with_capacity(2 * layers.len());
                    for (l, c) in comb_layers.iter().enumerate() {
                        let comb = ws + carve.take(v::product("ghg comb", &[c.count_b, 4])?)?;
                        let a_f32 = if widen_a { ws + carve.take(v::product("ghg a_val f32", &[c.count_a, 4])?)? } else { 0 };
                        plans.push(ghg_query_plan(dtype, c.ptrs.bq, c.b_dot, comb, c.count_b, c.ptrs.aq, a_f32, c.count_a, w0, w1)?);
                        let (d, q) = &validated[l];
                        let ptrs = LayerPtrs { aq: if widen_a { a_f32 } else { c.ptrs.aq }, bq: comb, ..c.ptrs };
                        gl.push(GpuDotLayer {
                            dims: *d,
                            query: q.clone(),
                            query_dtype: DType::F32,
                            ptrs,
                            form: choices[l].form,
                            pairwise: false,
                            self_only: false,
                        });
                    }
                    gl.extend(second.iter().cloned());
                    let mut p = gpu::partial_plans(rt.sm_version(), &gl, n, 1, ws + carve.bytes)?;
                    let end0: u64 = p.layer_splits[..n_first].iter().sum();
                    let end1: u64 = p.layer_splits.iter().sum();
                    plans.append(&mut p.plans);
                    plans.push(finalize_groups_plan(p.partial, out_ptr, n, end0, end1, 1.0, w1, acc)?);
                    Ok((plans, v::add("workspace", carve.bytes, p.workspace_bytes)?))
                })?;
            }
            Backend::CpuReference => {
                let (f, s) = reference_ghg(layers, false)?;
                let phi: Vec<f64> = f.iter().zip(&s).map(|(f, s)| w0 as f64 * f + w1 as f64 * s).collect();
                apply_accumulate(out.host("out")?, &phi, acc);
            }
            Backend::CpuFast => {
                // Two passes per layer instead of three: the first-order query (a_val, b_val) and
                // the (a_val, ḃ) half of H v share a_val and the bias column, so they are one
                // query with b rows w0·b_val + w1·ḃ (formed in f64, rounded once to f32) and the
                // first-order slot's form (the (a_val, ḃ) slot has the same sizes, so the same
                // choice); then (ȧ, b_val) without bias, scaled by w1.
                let out = out.host("out")?;
                let mut total = vec![0.0f64; n as usize]; // all passes in f64, rounded once
                for (l, layer) in layers.iter().enumerate() {
                    let rows = (layer.t_v * layer.shape.d_out) as usize;
                    let (mut bv, mut bd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
                    layer.b_val.host("b_val")?.copy_to_f32(0, &mut bv);
                    layer.b_dot.host("b_dot")?.copy_to_f32(0, &mut bd);
                    let comb: Vec<f32> =
                        bv.iter().zip(&bd).map(|(&v, &dv)| (w0 as f64 * v as f64 + w1 as f64 * dv as f64) as f32).collect();
                    let (shape, train, query) = &pseudo[l];
                    let (d, q) = &validated[l];
                    let tr = cpu_train(*shape, train, d)?;
                    let qr = reference::Query {
                        aq: query.aq.host("a_val")?,
                        bq: HostSlice::F32(&comb),
                        mask: host_u8("val_mask", query.mask.as_ref())?,
                        ranges: q.ranges(),
                    };
                    let r = cpu::fast::ghost_dot_f64(&tr, &qr, choices[l].form);
                    total.iter_mut().zip(&r).for_each(|(t, x)| *t += x);
                    let i2 = n_first + 2 * l + 1;
                    let (shape2, train2, query2) = &pseudo[i2];
                    let (d2, q2) = &validated[i2];
                    let tr2 = cpu_train(*shape2, train2, d2)?;
                    let qr2 = cpu_query(query2, q2)?;
                    let r = cpu::fast::ghost_dot_f64(&tr2, &qr2, choices[i2].form);
                    total.iter_mut().zip(&r).for_each(|(t, x)| *t += w1 as f64 * x);
                }
                apply_accumulate(out, &total, acc);
            }
        }
        Ok(choices)
    }

    /// Float64 value accumulation: `phi[ids[k]] += values[k]` for `k = 0..N`, in k order (ids
    /// may repeat; the result is the sequential float64 sum, on every backend, bit for bit).
    /// `values` f32 `[N]`, `ids` i32 `[N]`, `phi` f64 `[num_ids]` ([`TensorMut::HostF64`] on the
    /// CPU, a device slice of dtype [`DType::F64`] on a GPU).
    ///
    /// Ids outside `[0, num_ids)`: a typed error on the CPU backends (nothing is written); on a
    /// GPU the ids cannot be read without a synchronization, so the kernel skips them.
    pub fn accumulate_values(&self, values: &Tensor<'_>, ids: &Tensor<'_>, phi: &mut TensorMut<'_>) -> Result<()> {
        const OP: &str = "accumulate_values";
        let space = self.space();
        let n = values.len();
        v::input("values", values, space, &[DType::F32], n, OP)?;
        v::input("ids", ids, space, &[DType::I32], n, OP)?;
        let num_ids = v::nonzero("phi (num_ids)", phi.len())?;
        v::output_f64("phi", phi, space, num_ids, OP)?;
        self.check_device_ptrs(&[("values", Some(values)), ("ids", Some(ids))])?;
        self.check_out_ptr("phi", phi)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                if n == 0 {
                    return Ok(());
                }
                let plan = accumulate_values_plan(
                    values.device("values")?.ptr(),
                    ids.device("ids")?.ptr(),
                    phi.device("phi")?.ptr(),
                    n,
                    num_ids,
                )?;
                rt.launch(&plan)
            }
            _ => {
                let vals = crate::context::host_f32("values", values)?;
                let ids = match ids.host("ids")? {
                    HostSlice::I32(s) => s,
                    other => return Err(GhostError::UnsupportedDtype { what: "ids", dtype: other.dtype(), op: OP }),
                };
                if let Some((k, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id as u64 >= num_ids) {
                    return Err(GhostError::InvalidArgument {
                        what: "ids",
                        reason: format!("ids[{k}] = {id} is outside [0, num_ids = {num_ids})"),
                    });
                }
                let phi = phi.host_f64("phi")?;
                for (&x, &id) in vals.iter().zip(ids) {
                    phi[id as usize] += x as f64;
                }
                Ok(())
            }
        }
    }
}
