//! `ghostgrad._native.Context`: one core [`Context`] (CPU, f64 reference, CUDA device + caller
//! stream, or the PTX interpreter) and one method per operation. Each method extracts its
//! arguments with the GIL held ([`crate::parse`]), then releases the GIL while ghostgrad works
//! (views built by [`Bind`], errors mapped by [`crate::errors`], panics caught).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ghostgrad::runtime::interp::InterpRuntime;
use ghostgrad::{
    Accumulate, Blocking, ColumnGroup, Context, DvembLayer, DvembSteps, EmbeddingForm, EmbeddingLayer, FormChoice, GhgUse, GhostDotLayer,
    GhostError, LayerShape, LayerUse, LossReduction, ModelForms, OutColumns, ParamProjection, ProjectInput, ProjectLayer, ProjectionKind,
    ProjectionSpec, QueryFactors, QuerySide, ScoreDims, ScoreMode, Segments, TermChoice, TokenFactors, TrainFactors, UseQuery, UseTrain, Which,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::bind::{Bind, Space};
use crate::errors::{ghost_err, raise_op, Family};
use crate::parse::{self, GhgUseT, ProjLayerT, ProjT, QueryT, SegT, TrainT, UseT};

type GResult<T> = Result<T, GhostError>;
type ChoiceT = (String, bool, String, Vec<(String, f64, f64, f64, f64, bool)>);

fn form_name(f: ghostgrad::Form) -> String {
    f.to_string().replace('-', "_")
}

fn choice(c: &FormChoice) -> ChoiceT {
    let costs = c.costs.iter().map(|k| (form_name(k.form), k.flops, k.bytes, k.extra_bytes, k.est_seconds, k.fits)).collect();
    (form_name(c.form), c.forced, c.reason.clone(), costs)
}

fn terms(ts: &[TermChoice]) -> Vec<(u32, usize, usize, String)> {
    ts.iter().map(|t| (t.param, t.uses.0, t.uses.1, t.method.clone())).collect()
}

fn acc(scale: f32, beta: f32) -> Accumulate {
    Accumulate { scale, beta }
}

fn train<'a>(b: &mut Bind<'_>, t: &TrainT) -> GResult<TrainFactors<'a>> {
    Ok(TrainFactors { a: b.input(&t.a)?, b: b.input(&t.b)?, n: t.n, t: t.t, mask: b.input_opt(&t.mask)? })
}

fn segments<'a>(b: &mut Bind<'_>, s: &SegT) -> GResult<Segments<'a>> {
    Ok(match s {
        SegT::Single => Segments::Single,
        SegT::Uniform(l) => Segments::Uniform(*l),
        SegT::Offsets(v) => Segments::Offsets(b.input(v)?),
    })
}

fn query<'a>(b: &mut Bind<'_>, q: &QueryT) -> GResult<QueryFactors<'a>> {
    Ok(QueryFactors { aq: b.input(&q.x)?, bq: b.input(&q.b)?, q: q.q, segments: segments(b, &q.seg)?, mask: b.input_opt(&q.mask)? })
}

fn use_query<'a>(b: &mut Bind<'_>, q: &QueryT) -> GResult<UseQuery<'a>> {
    Ok(UseQuery { x: b.input(&q.x)?, b: b.input(&q.b)?, q: q.q, segments: segments(b, &q.seg)?, mask: b.input_opt(&q.mask)? })
}

fn layer_use<'a>(b: &mut Bind<'_>, u: &UseT) -> GResult<LayerUse<'a>> {
    let train = UseTrain { x: b.input(&u.x)?, b: b.input(&u.b)?, t: u.t, mask: b.input_opt(&u.mask)? };
    let query = match &u.query {
        Some(q) => QuerySide::Factors(use_query(b, q)?),
        None if u.train_only => QuerySide::TrainOnly,
        None => QuerySide::Absent,
    };
    Ok(LayerUse { param: u.param, kind: u.kind, train, query })
}

fn proj_spec<'a>(b: &mut Bind<'_>, p: &ProjT) -> GResult<ProjectionSpec<'a>> {
    let kind = match p.kind {
        parse::ProjKindT::Random { seed, layer, dist } => ProjectionKind::Random { seed, layer, dist },
        parse::ProjKindT::Dense { p_in, p_out } => ProjectionKind::Dense { p_in: b.input(&p_in)?, p_out: b.input(&p_out)? },
    };
    Ok(ProjectionSpec { k_i: p.k_i, k_o: p.k_o, kind })
}

fn project_input<'a>(b: &mut Bind<'_>, l: &ProjLayerT) -> GResult<ProjectInput<'a>> {
    let proj = proj_spec(b, &l.proj)?;
    let shape = LayerShape::new(l.d_in, l.d_out).with_bias(l.bias);
    let (x, bb, mask) = (b.input(&l.x)?, b.input(&l.b)?, b.input_opt(&l.mask)?);
    Ok(if l.embedding {
        ProjectInput::Embedding(EmbeddingLayer { shape, train: TokenFactors { ids: x, b: bb, n: l.n, t: l.t, mask }, proj })
    } else {
        ProjectInput::Linear(ProjectLayer { shape, train: TrainFactors { a: x, b: bb, n: l.n, t: l.t, mask }, proj })
    })
}

fn model_forms(linear: u32, embedding: u32) -> PyResult<ModelForms> {
    let embedding = match embedding {
        0 => None,
        1 => Some(EmbeddingForm::MaskedGram),
        2 => Some(EmbeddingForm::ScatterGather),
        other => return Err(PyValueError::new_err(format!("unknown embedding form code {other}"))),
    };
    Ok(ModelForms { linear: parse::form(linear)?, embedding })
}

fn score_mode(s: &str) -> PyResult<ScoreMode> {
    match s {
        "dot" => Ok(ScoreMode::Dot),
        "cosine" => Ok(ScoreMode::Cosine),
        "l2" => Ok(ScoreMode::L2),
        other => Err(PyValueError::new_err(format!("unknown score mode {other:?}"))),
    }
}

/// A native context.
#[pyclass(module = "ghostgrad._native", frozen)]
pub struct NativeContext {
    ctx: Context,
    space: Space,
}

impl NativeContext {
    /// Runs `f` without the GIL, with this call's [`Bind`]; maps errors and panics.
    fn run<T: Send>(&self, py: Python<'_>, op: &str, f: impl FnOnce(&Context, &mut Bind<'_>) -> GResult<T> + Send) -> PyResult<T> {
        let res = py.detach(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut bind = Bind::new(&self.space);
                let r = f(&self.ctx, &mut bind)?;
                bind.finish()?;
                Ok(r)
            }))
        });
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ghost_err(py, op, &e)),
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                Err(raise_op(py, Family::Internal, Some(op), None, &format!("{op}: internal error (a bug in ghostgrad): panic: {msg}")))
            }
        }
    }
}

#[pymethods]
impl NativeContext {
    /// The fast multi-threaded CPU backend.
    #[staticmethod]
    fn cpu() -> Self {
        NativeContext { ctx: Context::cpu(), space: Space::Host }
    }

    /// The float64 reference backend.
    #[staticmethod]
    fn reference() -> Self {
        NativeContext { ctx: Context::cpu_reference(), space: Space::Host }
    }

    /// The CUDA kernels on the PTX interpreter (host arrays copied in and out: tests only).
    #[staticmethod]
    fn interp(py: Python<'_>) -> PyResult<Self> {
        let rt = Arc::new(InterpRuntime::new().map_err(|e| ghost_err(py, "Context.interp", &e))?);
        Ok(NativeContext { ctx: Context::with_runtime(rt.clone()), space: Space::Interp(rt) })
    }

    /// CUDA device `ordinal`, launching on the caller's `stream` (a `CUstream` handle; 0 = the
    /// legacy default stream), never synchronized.
    #[staticmethod]
    fn cuda(py: Python<'_>, ordinal: usize, stream: u64) -> PyResult<Self> {
        // SAFETY: the stream is the framework's current stream of `ordinal` (or one the caller
        // named), which outlives the cached context as long as the framework keeps it.
        let ctx = unsafe { Context::cuda_on_stream(ordinal, stream as *mut std::ffi::c_void) }.map_err(|e| ghost_err(py, "Context.cuda", &e))?;
        Ok(NativeContext { ctx, space: Space::Cuda })
    }

    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn ghost_dot_layers(&self, py: Python<'_>, layers: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, scale: f32, beta: f32) -> PyResult<Vec<ChoiceT>> {
        let ls = parse::list(layers, |l| {
            let t = l.cast::<pyo3::types::PyTuple>()?;
            Ok((parse::train(&t.get_item(0)?)?, parse::query(&t.get_item(1)?)?, t.get_item(2)?.extract::<bool>()?, parse::form(t.get_item(3)?.extract()?)?))
        })?;
        let out = parse::view(out)?;
        self.run(py, "ghost_dot", move |ctx, b| {
            let mut layers = Vec::with_capacity(ls.len());
            for (tr, q, bias, form) in &ls {
                let shape = LayerShape::new(tr.d_in, tr.d_out).with_bias(*bias);
                layers.push(GhostDotLayer { shape, train: train(b, tr)?, query: query(b, q)?, form: *form });
            }
            let mut o = b.output(&out)?;
            Ok(ctx.ghost_dot_layers(&layers, &mut o, acc(scale, beta))?.iter().map(choice).collect())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ghost_dot_dense(&self, py: Python<'_>, tr: &Bound<'_, PyAny>, m: &Bound<'_, PyAny>, m_bias: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, scale: f32, beta: f32) -> PyResult<()> {
        let (tr, m, mb, out) = (parse::train(tr)?, parse::view(m)?, parse::view_opt(m_bias)?, parse::view(out)?);
        self.run(py, "ghost_dot_dense", move |ctx, b| {
            let shape = LayerShape::new(tr.d_in, tr.d_out).with_bias(mb.is_some());
            let t = train(b, &tr)?;
            let (m, mb) = (b.input(&m)?, b.input_opt(&mb)?);
            let mut o = b.output(&out)?;
            ctx.ghost_dot_dense(&shape, &t, &m, mb.as_ref(), &mut o, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn factored_grad(
        &self,
        py: Python<'_>,
        d_in: u64,
        d_out: u64,
        bias: bool,
        q: &Bound<'_, PyAny>,
        row_weights: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        out_bias: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let (q, w, out, ob) = (parse::query(q)?, parse::view_opt(row_weights)?, parse::view(out)?, parse::view_opt(out_bias)?);
        self.run(py, "factored_grad", move |ctx, b| {
            let shape = LayerShape::new(d_in, d_out).with_bias(bias);
            let qf = query(b, &q)?;
            let w = b.input_opt(&w)?;
            let mut o = b.output(&out)?;
            let mut ob = b.output_opt(&ob)?;
            ctx.factored_grad(&shape, &qf, w.as_ref(), &mut o, ob.as_mut(), acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ghost_gram(&self, py: Python<'_>, tr: &Bound<'_, PyAny>, bias: bool, out: &Bound<'_, PyAny>, scale: f32, beta: f32, form: u32) -> PyResult<ChoiceT> {
        let (tr, out, form) = (parse::train(tr)?, parse::view(out)?, parse::form(form)?);
        self.run(py, "ghost_gram", move |ctx, b| {
            let t = train(b, &tr)?;
            let mut o = b.output(&out)?;
            Ok(choice(&ctx.ghost_gram(&LayerShape::new(tr.d_in, tr.d_out).with_bias(bias), &t, &mut o, acc(scale, beta), form)?))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ghost_sqnorm(&self, py: Python<'_>, tr: &Bound<'_, PyAny>, bias: bool, out: &Bound<'_, PyAny>, scale: f32, beta: f32, form: u32) -> PyResult<ChoiceT> {
        let (tr, out, form) = (parse::train(tr)?, parse::view(out)?, parse::form(form)?);
        self.run(py, "ghost_sqnorm", move |ctx, b| {
            let t = train(b, &tr)?;
            let mut o = b.output(&out)?;
            Ok(choice(&ctx.ghost_sqnorm(&LayerShape::new(tr.d_in, tr.d_out).with_bias(bias), &t, &mut o, acc(scale, beta), form)?))
        })
    }

    /// `op` = "model_dot" | "model_gram" | "model_sqnorm".
    #[allow(clippy::too_many_arguments)]
    fn model(
        &self,
        py: Python<'_>,
        op: &str,
        n: u64,
        uses: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
        linear_form: u32,
        embedding_form: u32,
    ) -> PyResult<Vec<(u32, usize, usize, String)>> {
        let us = parse::list(uses, parse::use_)?;
        let (out, forms) = (parse::view(out)?, model_forms(linear_form, embedding_form)?);
        let which = match op {
            "model_dot" => 0,
            "model_gram" => 1,
            "model_sqnorm" => 2,
            other => return Err(PyValueError::new_err(format!("unknown model op {other:?}"))),
        };
        let op_name: &'static str = ["model_dot", "model_gram", "model_sqnorm"][which];
        self.run(py, op_name, move |ctx, b| {
            let uses = us.iter().map(|u| layer_use(b, u)).collect::<GResult<Vec<_>>>()?;
            let mut o = b.output(&out)?;
            let a = acc(scale, beta);
            let r = match which {
                0 => ctx.model_dot(n, &uses, &mut o, a, forms)?,
                1 => ctx.model_gram(n, &uses, &mut o, a, forms)?,
                _ => ctx.model_sqnorm(n, &uses, &mut o, a, forms)?,
            };
            Ok(terms(&r))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn model_ghg(
        &self,
        py: Python<'_>,
        n: u64,
        uses: &Bound<'_, PyAny>,
        eta: f32,
        out: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
        linear_form: u32,
        embedding_form: u32,
    ) -> PyResult<Vec<(u32, usize, usize, String)>> {
        let us: Vec<GhgUseT> = parse::list(uses, parse::ghg_use)?;
        let (out, forms) = (parse::view(out)?, model_forms(linear_form, embedding_form)?);
        self.run(py, "model_ghg", move |ctx, b| {
            let mut uses = Vec::with_capacity(us.len());
            for u in &us {
                let base = layer_use(b, &u.base)?;
                uses.push(GhgUse {
                    param: base.param,
                    kind: base.kind,
                    train: base.train,
                    val: use_query(b, &u.val)?,
                    x_dot: b.input_opt(&u.x_dot)?,
                    b_dot: b.input(&u.b_dot)?,
                });
            }
            let mut o = b.output(&out)?;
            Ok(terms(&ctx.model_ghg(n, &uses, eta, &mut o, acc(scale, beta), forms)?))
        })
    }

    fn kron_project_layers(&self, py: Python<'_>, layers: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, scale: f32, beta: f32) -> PyResult<()> {
        let ls = parse::list(layers, parse::proj_layer)?;
        let out = parse::view(out)?;
        self.run(py, "kron_project", move |ctx, b| {
            let layers = ls.iter().map(|l| project_input(b, l)).collect::<GResult<Vec<_>>>()?;
            let mut o = b.output(&out)?;
            ctx.kron_project_layers(&layers, &mut o, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn kron_project_model(
        &self,
        py: Python<'_>,
        n: u64,
        uses: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<Vec<(u64, u64)>> {
        let us = parse::list(uses, parse::use_)?;
        let ps = parse::list(params, |p| Ok((p.get_item(0)?.extract::<u32>()?, parse::proj(&p.get_item(1)?)?)))?;
        let out = parse::view(out)?;
        self.run(py, "kron_project_model", move |ctx, b| {
            let uses = us.iter().map(|u| layer_use(b, u)).collect::<GResult<Vec<_>>>()?;
            let params = ps.iter().map(|(id, p)| Ok(ParamProjection { param: *id, proj: proj_spec(b, p)? })).collect::<GResult<Vec<_>>>()?;
            let mut o = b.output(&out)?;
            let groups = ctx.kron_project_model(n, &uses, &params, &mut o, acc(scale, beta))?;
            Ok(groups.iter().map(|g| (g.offset, g.width)).collect())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn projection_matrix(&self, py: Python<'_>, seed: u64, layer: u32, which: &str, k: u64, d: u64, dist: &str, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let which = if which == "in" { Which::In } else { Which::Out };
        let (dist, out) = (parse::dist(dist)?, parse::view(out)?);
        self.run(py, "projection_matrix", move |ctx, b| {
            let mut o = b.output(&out)?;
            ctx.projection_matrix(seed, layer, which, k, d, dist, &mut o)
        })
    }

    fn kfac_covariances(&self, py: Python<'_>, layer: &Bound<'_, PyAny>, c_a: &Bound<'_, PyAny>, c_b: &Bound<'_, PyAny>, scale: f32, beta: f32) -> PyResult<()> {
        let (l, ca, cb) = (parse::proj_layer(layer)?, parse::view(c_a)?, parse::view(c_b)?);
        self.run(py, "kfac_covariances", move |ctx, b| {
            let layer = project_input(b, &l)?;
            let (mut a, mut bb) = (b.output(&ca)?, b.output(&cb)?);
            ctx.kfac_covariances(layer, &mut a, &mut bb, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn kfac_covariances_model(
        &self,
        py: Python<'_>,
        n: u64,
        uses: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
        c_rows: &Bound<'_, PyAny>,
        c_cols: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let us = parse::list(uses, parse::use_)?;
        let ps = parse::list(params, |p| Ok((p.get_item(0)?.extract::<u32>()?, parse::proj(&p.get_item(1)?)?)))?;
        let (rows, cols) = (parse::list(c_rows, parse::view)?, parse::list(c_cols, parse::view)?);
        self.run(py, "kfac_covariances_model", move |ctx, b| {
            let uses = us.iter().map(|u| layer_use(b, u)).collect::<GResult<Vec<_>>>()?;
            let params = ps.iter().map(|(id, p)| Ok(ParamProjection { param: *id, proj: proj_spec(b, p)? })).collect::<GResult<Vec<_>>>()?;
            let mut r = rows.iter().map(|v| b.output(v)).collect::<GResult<Vec<_>>>()?;
            let mut c = cols.iter().map(|v| b.output(v)).collect::<GResult<Vec<_>>>()?;
            ctx.kfac_covariances_model(n, &uses, &params, &mut r, &mut c, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn projected_fisher(
        &self,
        py: Python<'_>,
        grads: &Bound<'_, PyAny>,
        n: u64,
        k: u64,
        offset: u64,
        row_stride: u64,
        out: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let (g, out) = (parse::view(grads)?, parse::view(out)?);
        self.run(py, "projected_fisher", move |ctx, b| {
            let g = b.input(&g)?;
            let mut o = b.output(&out)?;
            ctx.projected_fisher(&g, n, k, OutColumns { offset, row_stride }, &mut o, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ekfac_eigen_correction(
        &self,
        py: Python<'_>,
        grads: &Bound<'_, PyAny>,
        n: u64,
        k_o: u64,
        k_i: u64,
        offset: u64,
        row_stride: u64,
        q_b: &Bound<'_, PyAny>,
        q_a: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let (g, qb, qa, out) = (parse::view(grads)?, parse::view(q_b)?, parse::view(q_a)?, parse::view(out)?);
        self.run(py, "ekfac_eigen_correction", move |ctx, b| {
            let (g, qb, qa) = (b.input(&g)?, b.input(&qb)?, b.input(&qa)?);
            let mut o = b.output(&out)?;
            ctx.ekfac_eigen_correction(&g, n, k_o, k_i, OutColumns { offset, row_stride }, &qb, &qa, &mut o, acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn influence_scores(
        &self,
        py: Python<'_>,
        test: &Bound<'_, PyAny>,
        train_block: &Bound<'_, PyAny>,
        n_test: u64,
        n_block: u64,
        k: u64,
        out: &Bound<'_, PyAny>,
        mode: &str,
        train_self: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let (te, tr, out, ts, mode) = (parse::view(test)?, parse::view(train_block)?, parse::view(out)?, parse::view_opt(train_self)?, score_mode(mode)?);
        self.run(py, "influence_scores", move |ctx, b| {
            let (te, tr, ts) = (b.input(&te)?, b.input(&tr)?, b.input_opt(&ts)?);
            let mut o = b.output(&out)?;
            ctx.influence_scores(&te, &tr, ScoreDims { n_test, n_block, k }, &mut o, mode, ts.as_ref(), acc(scale, beta))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn influence_scores_groups(
        &self,
        py: Python<'_>,
        test: &Bound<'_, PyAny>,
        train_block: &Bound<'_, PyAny>,
        n_test: u64,
        n_block: u64,
        row_stride: u64,
        groups: Vec<(u64, u64)>,
        out: &Bound<'_, PyAny>,
        mode: &str,
        train_self: &Bound<'_, PyAny>,
        scale: f32,
        beta: f32,
    ) -> PyResult<()> {
        let (te, tr, out, ts, mode) = (parse::view(test)?, parse::view(train_block)?, parse::view(out)?, parse::view_opt(train_self)?, score_mode(mode)?);
        let groups: Vec<ColumnGroup> = groups.into_iter().map(|(offset, width)| ColumnGroup { offset, width }).collect();
        self.run(py, "influence_scores_groups", move |ctx, b| {
            let (te, tr, ts) = (b.input(&te)?, b.input(&tr)?, b.input_opt(&ts)?);
            let mut o = b.output(&out)?;
            ctx.influence_scores_groups(&te, &tr, n_test, n_block, row_stride, &groups, &mut o, mode, ts.as_ref(), acc(scale, beta))
        })
    }

    /// `blocking`: -1 auto, 0 per step, r > 0 rows per block.
    #[allow(clippy::too_many_arguments)]
    fn dvemb_layers(
        &self,
        py: Python<'_>,
        grads: &Bound<'_, PyAny>,
        row_stride: u64,
        layers: &Bound<'_, PyAny>,
        rows: Vec<u64>,
        etas: Vec<f64>,
        loss: &str,
        e_out: &Bound<'_, PyAny>,
        blocking: i64,
    ) -> PyResult<(Vec<Vec<(usize, usize)>>, f64, f64)> {
        let g = parse::view(grads)?;
        let ls = parse::list(layers, |l| Ok((l.get_item(0)?.extract::<u64>()?, l.get_item(1)?.extract::<u64>()?, parse::view(&l.get_item(2)?)?)))?;
        let e = parse::view(e_out)?;
        let loss = if loss == "sum" { LossReduction::Sum } else { LossReduction::Mean };
        let blocking = match blocking {
            b if b < 0 => Blocking::Auto,
            0 => Blocking::PerStep,
            b => Blocking::MaxRows(b as u64),
        };
        self.run(py, "dvemb_layers", move |ctx, b| {
            let g = b.input(&g)?;
            let mut ms = ls.iter().map(|(_, _, m)| b.output(m)).collect::<GResult<Vec<_>>>()?;
            let mut e = b.output(&e)?;
            let mut layers: Vec<DvembLayer<'_, '_>> = ls.iter().zip(ms.iter_mut()).map(|((off, k, _), m)| DvembLayer { offset: *off, k: *k, m }).collect();
            let steps = DvembSteps { rows: &rows, etas: &etas, loss };
            let r = ctx.dvemb_layers(&g, row_stride, &mut layers, &steps, &mut e, blocking)?;
            let blocks = r.blocks.iter().map(|bl| bl.iter().map(|x| (x.start, x.end)).collect()).collect();
            Ok((blocks, r.recursion_flops, r.executed_flops))
        })
    }

    fn accumulate_values(&self, py: Python<'_>, values: &Bound<'_, PyAny>, ids: &Bound<'_, PyAny>, phi: &Bound<'_, PyAny>) -> PyResult<()> {
        let (v, i, p) = (parse::view(values)?, parse::view(ids)?, parse::view(phi)?);
        self.run(py, "accumulate_values", move |ctx, b| {
            let (v, i) = (b.input(&v)?, b.input(&i)?);
            let mut p = b.output(&p)?;
            ctx.accumulate_values(&v, &i, &mut p)
        })
    }
}
