//! [`Context`]: where operations run (CPU reference, fast CPU, or a GPU runtime on a stream),
//! and the public entry points of every operation. Each entry point validates, chooses an
//! algorithm, and dispatches to a backend; no backend code lives here.

use std::sync::Arc;

use crate::buffer::{HostSlice, Tensor, TensorMut};
use crate::cpu::{self, apply_accumulate, reference};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::ghost_dot::cost::{GhostDotSize, MachineRates};
use crate::ghost_dot::gpu::{self, GpuDotLayer, LayerPtrs};
use crate::ghost_dot::validate_ops::{self as vo, QueryDims, SegKind, TrainDims};
use crate::ghost_dot::{
    Accumulate, Form, FormChoice, FormRequest, GhostDotLayer, LayerShape, QueryFactors, Segments, TrainFactors,
};
use crate::runtime::cuda::CudaRuntime;
use crate::runtime::KernelRuntime;
use crate::validate::{self as v, Space};

/// Which backend a [`Context`] runs on.
#[derive(Clone)]
pub enum Backend {
    /// Float64 loops over materialized per-sample gradients: the reference every test trusts.
    CpuReference,
    /// Multi-threaded f32 CPU path (gemm crate).
    CpuFast,
    /// A GPU runtime (CUDA driver, or the PTX interpreter) bound to one stream.
    Gpu(Arc<dyn KernelRuntime>),
}

/// Where operations run, plus the cost-model settings.
#[derive(Clone)]
pub struct Context {
    pub(crate) backend: Backend,
    pub(crate) rates: MachineRates,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("backend", &self.describe()).finish()
    }
}

pub(crate) fn host_f32<'a>(what: &'static str, t: &Tensor<'a>) -> Result<&'a [f32]> {
    match t.host(what)? {
        HostSlice::F32(s) => Ok(s),
        other => Err(GhostError::UnsupportedDtype { what, dtype: other.dtype(), op: "cpu backend" }),
    }
}

pub(crate) fn host_u8<'a>(what: &'static str, t: Option<&Tensor<'a>>) -> Result<Option<&'a [u8]>> {
    t.map(|t| match t.host(what)? {
        HostSlice::U8(s) => Ok(s),
        other => Err(GhostError::UnsupportedDtype { what, dtype: other.dtype(), op: "cpu backend" }),
    })
    .transpose()
}

pub(crate) fn dev_ptr(t: Option<&Tensor<'_>>, what: &'static str) -> Result<u64> {
    Ok(match t {
        Some(t) => t.device(what)?.ptr(),
        None => 0,
    })
}

impl Context {
    /// The fast multi-threaded CPU backend.
    pub fn cpu() -> Self {
        Context { backend: Backend::CpuFast, rates: MachineRates::CPU }
    }

    /// The float64 reference backend (slow; for checking results).
    pub fn cpu_reference() -> Self {
        Context { backend: Backend::CpuReference, rates: MachineRates::CPU }
    }

    /// CUDA device `ordinal` on a new stream owned by ghostgrad.
    ///
    /// Errors: [`GhostError::KernelsNotBuilt`] when the crate was built without nvcc,
    /// [`GhostError::CudaDriverUnavailable`] on a machine without the NVIDIA driver.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(Self::with_runtime(Arc::new(CudaRuntime::new(ordinal)?)))
    }

    /// CUDA device `ordinal`, launching on the caller's stream (never synchronized by us).
    ///
    /// # Safety
    /// `stream` is a valid `CUstream` of device `ordinal`'s primary context (or null for the
    /// legacy default stream) that outlives the context.
    pub unsafe fn cuda_on_stream(ordinal: usize, stream: *mut std::ffi::c_void) -> Result<Self> {
        Ok(Self::with_runtime(Arc::new(CudaRuntime::on_stream(ordinal, stream as _)?)))
    }

    /// A context over any GPU runtime (e.g. the PTX interpreter).
    pub fn with_runtime(rt: Arc<dyn KernelRuntime>) -> Self {
        let rates = MachineRates::gpu(rt.sm_version());
        Context { backend: Backend::Gpu(rt), rates }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::CpuReference => "cpu-reference (f64)".into(),
            Backend::CpuFast => format!("cpu ({} threads)", rayon::current_num_threads()),
            Backend::Gpu(rt) => rt.describe(),
        }
    }

    /// Caps the scratch memory a form chosen by `Auto` may use (default 4 GiB).
    pub fn set_max_workspace_bytes(&mut self, bytes: u64) {
        self.rates.max_extra_bytes = bytes as f64;
    }

    pub(crate) fn space(&self) -> Space {
        match self.backend {
            Backend::Gpu(_) => Space::Device,
            _ => Space::Host,
        }
    }

    pub(crate) fn check_device_ptrs(&self, ptrs: &[(&'static str, Option<&Tensor<'_>>)]) -> Result<()> {
        if let Backend::Gpu(rt) = &self.backend {
            for (what, t) in ptrs {
                if let Some(Tensor::Device(d)) = t {
                    rt.check_pointer(what, d.ptr(), d.len() * d.dtype().size())?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn check_out_ptr(&self, what: &'static str, out: &TensorMut<'_>) -> Result<()> {
        if let (Backend::Gpu(rt), TensorMut::Device(d)) = (&self.backend, out) {
            rt.check_pointer(what, d.ptr(), d.len() * d.dtype().size())?;
        }
        Ok(())
    }

    pub(crate) fn size_of(d: &TrainDims, q: &QueryDims) -> GhostDotSize {
        GhostDotSize {
            n: d.n,
            t: d.t,
            q: q.q,
            v: q.v,
            d_in: d.d_in,
            d_out: d.d_out,
            has_bias: d.has_bias,
            elem_bytes: d.dtype.size(),
        }
    }

    pub(crate) fn validate_dot(&self, shape: &LayerShape, train: &TrainFactors<'_>, query: &QueryFactors<'_>) -> Result<(TrainDims, QueryDims)> {
        let space = self.space();
        let d = vo::train("ghost_dot", shape, train, space)?;
        let q = vo::query("ghost_dot", shape, query, space, d.dtype)?;
        let seg = match &query.segments {
            Segments::Offsets(t) => Some(t),
            _ => None,
        };
        self.check_device_ptrs(&[
            ("a", Some(&train.a)),
            ("b", Some(&train.b)),
            ("mask", train.mask.as_ref()),
            ("aq", Some(&query.aq)),
            ("bq", Some(&query.bq)),
            ("query mask", query.mask.as_ref()),
            ("segment offsets", seg),
        ])?;
        Ok((d, q))
    }

    /// Which form [`ghost_dot`](Self::ghost_dot) would use for these arguments, and why
    /// (validates but runs nothing).
    pub fn choose_form(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        query: &QueryFactors<'_>,
        form: FormRequest,
    ) -> Result<FormChoice> {
        let (d, q) = self.validate_dot(shape, train, query)?;
        Ok(Self::size_of(&d, &q).choose(form, &self.rates))
    }

    /// Ghost dot-products of one layer: `out[n, v] = beta·out + scale·<G_n, Gq_v>`, `out` f32
    /// `[N, V]` (MATH.md §1). Returns the form used and the cost model's reasons.
    pub fn ghost_dot(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        query: &QueryFactors<'_>,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
        form: FormRequest,
    ) -> Result<FormChoice> {
        let layer = GhostDotLayer { shape: *shape, train: *train, query: *query, form };
        Ok(self.ghost_dot_layers(&[layer], out, acc)?.remove(0))
    }

    /// Ghost dot-products summed over many layers (same `N` and `V`, any shapes and dtypes):
    /// `out[n, v] = beta·out + scale·Σ_l <G^l_n, Gq^l_v>`. On a GPU this is one kernel per layer
    /// writing partial sums plus one finalize, whatever the number of layers.
    pub fn ghost_dot_layers(&self, layers: &[GhostDotLayer<'_>], out: &mut TensorMut<'_>, acc: Accumulate) -> Result<Vec<FormChoice>> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let first = layers.first().ok_or(GhostError::ZeroSize { what: "layers" })?;
        let mut validated = Vec::with_capacity(layers.len());
        for l in layers {
            let (d, q) = self.validate_dot(&l.shape, &l.train, &l.query)?;
            if l.train.n != first.train.n {
                return Err(GhostError::InvalidArgument {
                    what: "layers",
                    reason: format!("all layers need the same N: {} vs {}", l.train.n, first.train.n),
                });
            }
            validated.push((d, q));
        }
        let (n, nseg) = (validated[0].0.n, validated[0].1.v);
        if let Some((_, q)) = validated.iter().find(|(_, q)| q.v != nseg) {
            return Err(GhostError::InvalidArgument {
                what: "layers",
                reason: format!("all layers need the same number of query segments V: {} vs {nseg}", q.v),
            });
        }
        v::output("out", out, self.space(), v::mul("n*V", n, nseg)?, "ghost_dot")?;
        self.check_out_ptr("out", out)?;
        let choices: Vec<FormChoice> = layers
            .iter()
            .zip(&validated)
            .map(|(l, (d, q))| Self::size_of(d, q).choose(l.form, &self.rates))
            .collect();
        match &self.backend {
            Backend::Gpu(rt) => {
                let mut gl = Vec::with_capacity(layers.len());
                for ((l, (d, q)), c) in layers.iter().zip(&validated).zip(&choices) {
                    let ptrs = LayerPtrs {
                        a: l.train.a.device("a")?.ptr(),
                        b: l.train.b.device("b")?.ptr(),
                        mask: dev_ptr(l.train.mask.as_ref(), "mask")?,
                        aq: l.query.aq.device("aq")?.ptr(),
                        bq: l.query.bq.device("bq")?.ptr(),
                        qmask: dev_ptr(l.query.mask.as_ref(), "query mask")?,
                    };
                    gl.push(GpuDotLayer { dims: *d, query: q.clone(), query_dtype: d.dtype, ptrs, form: c.form, pairwise: false, self_only: false });
                }
                let out_ptr = out.device("out")?.ptr();
                gpu::run_with_workspace(rt.as_ref(), |ws| gpu::ghost_dot_plans(rt.sm_version(), &gl, n, nseg, out_ptr, acc, ws))?;
            }
            backend => {
                // The layers' sum stays in f64 and is rounded once into `out`.
                let mut total = vec![0.0f64; (n * nseg) as usize];
                for ((l, (d, q)), c) in layers.iter().zip(&validated).zip(&choices) {
                    let train = cpu_train(l.shape, &l.train, d)?;
                    let query = cpu_query(&l.query, q)?;
                    let r = match backend {
                        Backend::CpuReference => reference::ghost_dot(&train, &query, false),
                        _ => cpu::fast::ghost_dot_f64(&train, &query, c.form),
                    };
                    total.iter_mut().zip(&r).for_each(|(t, x)| *t += x);
                }
                apply_accumulate(out.host("out")?, &total, acc);
            }
        }
        Ok(choices)
    }

    /// Dense-query ghost dot-product with a caller-given `M` (f32 `[d_out, d_in]`, plus
    /// `m_bias` f32 `[d_out]` iff the layer has a bias):
    /// `out[n] = beta·out + scale·Σ_t (b_{n,t}ᵀ M a_{n,t} + b_{n,t}·m_bias)`, `out` f32 `[N]`.
    pub fn ghost_dot_dense(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        m: &Tensor<'_>,
        m_bias: Option<&Tensor<'_>>,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
    ) -> Result<()> {
        const OP: &str = "ghost_dot_dense";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let space = self.space();
        let d = vo::train(OP, shape, train, space)?;
        v::input("m", m, space, &[DType::F32], v::mul("d_out*d_in", d.d_out, d.d_in)?, OP)?;
        match (shape.has_bias, m_bias) {
            (true, Some(mb)) => {
                v::input("m_bias", mb, space, &[DType::F32], d.d_out, OP)?;
            }
            (true, None) => {
                return Err(GhostError::InvalidArgument { what: "m_bias", reason: "the layer has a bias: pass m_bias [d_out]".into() })
            }
            (false, Some(_)) => {
                return Err(GhostError::InvalidArgument { what: "m_bias", reason: "given but the layer has no bias".into() })
            }
            (false, None) => {}
        }
        v::output("out", out, space, d.n, OP)?;
        self.check_device_ptrs(&[
            ("a", Some(&train.a)),
            ("b", Some(&train.b)),
            ("mask", train.mask.as_ref()),
            ("m", Some(m)),
            ("m_bias", m_bias),
        ])?;
        self.check_out_ptr("out", out)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let ptrs = LayerPtrs {
                    a: train.a.device("a")?.ptr(),
                    b: train.b.device("b")?.ptr(),
                    mask: dev_ptr(train.mask.as_ref(), "mask")?,
                    aq: 0,
                    bq: 0,
                    qmask: 0,
                };
                let (mp, mbp) = (m.device("m")?.ptr(), dev_ptr(m_bias, "m_bias")?);
                let out_ptr = out.device("out")?.ptr();
                gpu::run_with_workspace(rt.as_ref(), |ws| {
                    let (plan, s) = gpu::dense_plan(&d, &ptrs, mp, mbp, 1, ws)?;
                    let fin = gpu::finalize_plan(ws, out_ptr, d.n, s, acc)?;
                    Ok((vec![plan, fin], s * d.n * 4))
                })
            }
            backend => {
                let train = cpu_train(*shape, train, &d)?;
                let mh = host_f32("m", m)?;
                let mbh = m_bias.map(|t| host_f32("m_bias", t)).transpose()?;
                let out = out.host("out")?;
                match backend {
                    Backend::CpuReference => apply_accumulate(out, &reference::ghost_dot_dense(&train, mh, mbh, false), acc),
                    _ => cpu::fast::ghost_dot_dense(&train, mh, mbh, out, acc),
                }
                Ok(())
            }
        }
    }

    /// Factored weight gradient of every query segment: `out[v] = beta·out[v] + scale·Σ_{u∈v}
    /// w_u bq_u aq_uᵀ`, `out` f32 `[V, d_out, d_in]`; with a bias, `out_bias` f32 `[V, d_out]`
    /// receives `Σ w_u bq_u`. `row_weights` f32 `[Q]` is optional (1 when absent).
    pub fn factored_grad(
        &self,
        shape: &LayerShape,
        query: &QueryFactors<'_>,
        row_weights: Option<&Tensor<'_>>,
        out: &mut TensorMut<'_>,
        out_bias: Option<&mut TensorMut<'_>>,
        acc: Accumulate,
    ) -> Result<()> {
        const OP: &str = "factored_grad";
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let space = self.space();
        vo::shape(OP, shape)?;
        let dtype = query.aq.dtype();
        let q = vo::query(OP, shape, query, space, dtype)?;
        if let Some(w) = row_weights {
            v::input("row_weights", w, space, &[DType::F32], q.q, OP)?;
        }
        v::output("out", out, space, v::product("V*d_out*d_in", &[q.v, shape.d_out, shape.d_in])?, OP)?;
        match (&out_bias, shape.has_bias) {
            (Some(ob), true) => v::output("out_bias", ob, space, v::mul("V*d_out", q.v, shape.d_out)?, OP)?,
            (None, true) => {
                return Err(GhostError::InvalidArgument { what: "out_bias", reason: "the layer has a bias: pass out_bias [V, d_out]".into() })
            }
            (Some(_), false) => {
                return Err(GhostError::InvalidArgument { what: "out_bias", reason: "given but the layer has no bias".into() })
            }
            (None, false) => {}
        }
        let seg = match &query.segments {
            Segments::Offsets(t) => Some(t),
            _ => None,
        };
        self.check_device_ptrs(&[
            ("aq", Some(&query.aq)),
            ("bq", Some(&query.bq)),
            ("query mask", query.mask.as_ref()),
            ("row_weights", row_weights),
            ("segment offsets", seg),
        ])?;
        self.check_out_ptr("out", out)?;
        if let Some(ob) = &out_bias {
            self.check_out_ptr("out_bias", ob)?;
        }
        match &self.backend {
            Backend::Gpu(rt) => {
                let (seg_ptr, seg_len) = match q.seg {
                    SegKind::Single => (0, 0),
                    SegKind::Uniform(l) => (0, l),
                    SegKind::Device(p) => (p, 0),
                    SegKind::Host(_) => unreachable!(),
                };
                let ob = match &out_bias {
                    Some(o) => o.device("out_bias")?.ptr(),
                    None => 0,
                };
                let plan = gpu::factored_grad_plan(
                    dtype,
                    query.aq.device("aq")?.ptr(),
                    query.bq.device("bq")?.ptr(),
                    dev_ptr(row_weights, "row_weights")?,
                    dev_ptr(query.mask.as_ref(), "query mask")?,
                    seg_ptr,
                    seg_len,
                    out.device("out")?.ptr(),
                    ob,
                    q.q,
                    shape.d_in,
                    shape.d_out,
                    q.v,
                    shape.has_bias,
                    acc,
                )?;
                rt.launch(&plan)
            }
            backend => {
                let qh = cpu_query(query, &q)?;
                let w = row_weights.map(|t| host_f32("row_weights", t)).transpose()?;
                let (d_in, d_out) = (shape.d_in as usize, shape.d_out as usize);
                let out = out.host("out")?;
                let mut out_bias = out_bias;
                let ob = match out_bias.as_mut() {
                    Some(o) => Some(o.host("out_bias")?),
                    None => None,
                };
                match backend {
                    Backend::CpuReference => {
                        let (m, mb) = reference::factored_grad(&qh, w, d_in, d_out, shape.has_bias, false);
                        apply_accumulate(out, &m, acc);
                        if let Some(ob) = ob {
                            apply_accumulate(ob, &mb, acc);
                        }
                    }
                    _ => cpu::fast::factored_grad(&qh, w, d_in, d_out, shape.has_bias, out, ob, acc),
                }
                Ok(())
            }
        }
    }

    fn train_only(&self, op: &'static str, shape: &LayerShape, train: &TrainFactors<'_>) -> Result<TrainDims> {
        let d = vo::train(op, shape, train, self.space())?;
        self.check_device_ptrs(&[("a", Some(&train.a)), ("b", Some(&train.b)), ("mask", train.mask.as_ref())])?;
        Ok(d)
    }

    fn train_form(&self, d: &TrainDims, q: u64, v: u64, form: FormRequest) -> Result<FormChoice> {
        if form == FormRequest::Force(Form::DenseQuery) {
            return Err(GhostError::InvalidArgument {
                what: "form",
                reason: "the dense-query form needs a separate query; use gram or materialize".into(),
            });
        }
        let size = GhostDotSize { n: d.n, t: d.t, q, v, d_in: d.d_in, d_out: d.d_out, has_bias: d.has_bias, elem_bytes: d.dtype.size() };
        let mut choice = size.choose(form, &self.rates);
        if choice.form == Form::DenseQuery {
            // Not applicable train×train: take the cheaper of the other two.
            let best = choice
                .costs
                .iter()
                .filter(|c| c.form != Form::DenseQuery && (c.fits || c.form == Form::Gram))
                .min_by(|a, b| a.est_seconds.total_cmp(&b.est_seconds))
                .copied()
                .expect("gram always fits");
            choice.form = best.form;
            choice.reason = format!("{} (dense-query does not apply train×train)", best.form);
        }
        Ok(choice)
    }

    /// Pairwise train×train Gram matrix `K[n, m] = beta·K + scale·<G_n, G_m>`, `out` f32 `[N, N]`.
    pub fn ghost_gram(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
        form: FormRequest,
    ) -> Result<FormChoice> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let d = self.train_only("ghost_gram", shape, train)?;
        v::output("out", out, self.space(), v::mul("n*n", d.n, d.n)?, "ghost_gram")?;
        self.check_out_ptr("out", out)?;
        let choice = self.train_form(&d, v::mul("n*t", d.n, d.t)?, d.n, form)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let ptrs = LayerPtrs {
                    a: train.a.device("a")?.ptr(),
                    b: train.b.device("b")?.ptr(),
                    mask: dev_ptr(train.mask.as_ref(), "mask")?,
                    aq: train.a.device("a")?.ptr(),
                    bq: train.b.device("b")?.ptr(),
                    qmask: dev_ptr(train.mask.as_ref(), "mask")?,
                };
                let q = QueryDims { q: d.n * d.t, v: d.n, seg: SegKind::Uniform(d.t) };
                let layer = GpuDotLayer { dims: d, query: q, query_dtype: d.dtype, ptrs, form: choice.form, pairwise: true, self_only: false };
                let out_ptr = out.device("out")?.ptr();
                gpu::run_with_workspace(rt.as_ref(), |ws| gpu::ghost_dot_plans(rt.sm_version(), std::slice::from_ref(&layer), d.n, d.n, out_ptr, acc, ws))?;
            }
            backend => {
                let tr = cpu_train(*shape, train, &d)?;
                let out = out.host("out")?;
                match backend {
                    Backend::CpuReference => apply_accumulate(out, &reference::ghost_gram(&tr, false), acc),
                    _ => cpu::fast::ghost_gram(&tr, choice.form, out, acc),
                }
            }
        }
        Ok(choice)
    }

    /// Per-sample squared gradient norms `out[n] = beta·out + scale·‖G_n‖²`, `out` f32 `[N]`
    /// (the diagonal of [`ghost_gram`](Self::ghost_gram); ghost clipping in DP-SGD).
    pub fn ghost_sqnorm(
        &self,
        shape: &LayerShape,
        train: &TrainFactors<'_>,
        out: &mut TensorMut<'_>,
        acc: Accumulate,
        form: FormRequest,
    ) -> Result<FormChoice> {
        v::finite("scale", acc.scale)?;
        v::finite("beta", acc.beta)?;
        let d = self.train_only("ghost_sqnorm", shape, train)?;
        v::output("out", out, self.space(), d.n, "ghost_sqnorm")?;
        self.check_out_ptr("out", out)?;
        let choice = self.train_form(&d, d.t, 1, form)?;
        match &self.backend {
            Backend::Gpu(rt) => {
                let ptrs = LayerPtrs {
                    a: train.a.device("a")?.ptr(),
                    b: train.b.device("b")?.ptr(),
                    mask: dev_ptr(train.mask.as_ref(), "mask")?,
                    aq: 0,
                    bq: 0,
                    qmask: 0,
                };
                let q = QueryDims { q: d.t, v: 1, seg: SegKind::Single };
                let layer = GpuDotLayer { dims: d, query: q, query_dtype: d.dtype, ptrs, form: choice.form, pairwise: false, self_only: true };
                let out_ptr = out.device("out")?.ptr();
                gpu::run_with_workspace(rt.as_ref(), |ws| gpu::ghost_dot_plans(rt.sm_version(), std::slice::from_ref(&layer), d.n, 1, out_ptr, acc, ws))?;
            }
            backend => {
                let tr = cpu_train(*shape, train, &d)?;
                let out = out.host("out")?;
                match backend {
                    Backend::CpuReference => apply_accumulate(out, &reference::ghost_sqnorm(&tr, false), acc),
                    _ => cpu::fast::ghost_sqnorm(&tr, choice.form, out, acc),
                }
            }
        }
        Ok(choice)
    }
}

pub(crate) fn cpu_train<'a>(shape: LayerShape, t: &TrainFactors<'a>, d: &TrainDims) -> Result<reference::Train<'a>> {
    Ok(reference::Train {
        a: t.a.host("a")?,
        b: t.b.host("b")?,
        mask: host_u8("mask", t.mask.as_ref())?,
        n: d.n as usize,
        t: d.t as usize,
        d_in: shape.d_in as usize,
        d_out: shape.d_out as usize,
        has_bias: shape.has_bias,
    })
}

pub(crate) fn cpu_query<'a>(qf: &QueryFactors<'a>, q: &QueryDims) -> Result<reference::Query<'a>> {
    Ok(reference::Query {
        aq: qf.aq.host("aq")?,
        bq: qf.bq.host("bq")?,
        mask: host_u8("query mask", qf.mask.as_ref())?,
        ranges: q.ranges(),
    })
}
