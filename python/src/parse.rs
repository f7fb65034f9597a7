//! The native call's argument tuples (built by the Python package, see `ghostgrad/_native.pyi`)
//! → plain Rust descriptions holding [`View`]s, extracted with the GIL held so that the work
//! itself can run without it.

use ghostgrad::{Distribution, Form, FormRequest, LayerKind, WeightLayout};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::dlpack::{Array, View};

pub fn view(obj: &Bound<'_, PyAny>) -> PyResult<View> {
    Ok(obj.cast::<Array>()?.get().view)
}

pub fn view_opt(obj: &Bound<'_, PyAny>) -> PyResult<Option<View>> {
    if obj.is_none() {
        Ok(None)
    } else {
        view(obj).map(Some)
    }
}

fn item<'py>(t: &Bound<'py, PyTuple>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    t.get_item(i)
}

fn tuple<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    Ok(obj.cast::<PyTuple>()?.clone())
}

#[derive(Clone, Copy)]
pub struct TrainT {
    pub d_in: u64,
    pub d_out: u64,
    pub a: View,
    pub b: View,
    pub n: u64,
    pub t: u64,
    pub mask: Option<View>,
}

/// `(d_in, d_out, a, b, n, t, mask)`.
pub fn train(obj: &Bound<'_, PyAny>) -> PyResult<TrainT> {
    let t = tuple(obj)?;
    Ok(TrainT {
        d_in: item(&t, 0)?.extract()?,
        d_out: item(&t, 1)?.extract()?,
        a: view(&item(&t, 2)?)?,
        b: view(&item(&t, 3)?)?,
        n: item(&t, 4)?.extract()?,
        t: item(&t, 5)?.extract()?,
        mask: view_opt(&item(&t, 6)?)?,
    })
}

#[derive(Clone, Copy)]
pub enum SegT {
    Single,
    Uniform(u64),
    Offsets(View),
}

/// `("single",) | ("uniform", len) | ("offsets", Array)`.
pub fn segments(obj: &Bound<'_, PyAny>) -> PyResult<SegT> {
    let t = tuple(obj)?;
    let tag: String = item(&t, 0)?.extract()?;
    Ok(match tag.as_str() {
        "single" => SegT::Single,
        "uniform" => SegT::Uniform(item(&t, 1)?.extract()?),
        "offsets" => SegT::Offsets(view(&item(&t, 1)?)?),
        other => return Err(PyValueError::new_err(format!("unknown segments kind {other:?}"))),
    })
}

#[derive(Clone, Copy)]
pub struct QueryT {
    pub x: View,
    pub b: View,
    pub q: u64,
    pub seg: SegT,
    pub mask: Option<View>,
}

/// `(x, b, q, segments, mask)`.
pub fn query(obj: &Bound<'_, PyAny>) -> PyResult<QueryT> {
    let t = tuple(obj)?;
    Ok(QueryT {
        x: view(&item(&t, 0)?)?,
        b: view(&item(&t, 1)?)?,
        q: item(&t, 2)?.extract()?,
        seg: segments(&item(&t, 3)?)?,
        mask: view_opt(&item(&t, 4)?)?,
    })
}

/// `("linear", d_in, d_out, bias, layout) | ("embedding", vocab, d) | ("norm", d, bias)`.
pub fn kind(obj: &Bound<'_, PyAny>) -> PyResult<LayerKind> {
    let t = tuple(obj)?;
    let tag: String = item(&t, 0)?.extract()?;
    Ok(match tag.as_str() {
        "linear" => LayerKind::Linear {
            d_in: item(&t, 1)?.extract()?,
            d_out: item(&t, 2)?.extract()?,
            has_bias: item(&t, 3)?.extract()?,
            layout: if item(&t, 4)?.extract::<u32>()? == 0 { WeightLayout::OutIn } else { WeightLayout::InOut },
        },
        "embedding" => LayerKind::Embedding { vocab: item(&t, 1)?.extract()?, d: item(&t, 2)?.extract()? },
        "norm" => LayerKind::Norm { d: item(&t, 1)?.extract()?, has_bias: item(&t, 2)?.extract()? },
        other => return Err(PyValueError::new_err(format!("unknown layer kind {other:?}"))),
    })
}

#[derive(Clone, Copy)]
pub struct UseT {
    pub param: u32,
    pub kind: LayerKind,
    pub x: View,
    pub b: View,
    pub t: u64,
    pub mask: Option<View>,
    /// `None` with `train_only`: the use's query side is `QuerySide::TrainOnly`; `None`
    /// otherwise: `QuerySide::Absent`.
    pub query: Option<QueryT>,
    pub train_only: bool,
}

/// `(param, kind, x, b, t, mask, query | "train_only" | None)`.
pub fn use_(obj: &Bound<'_, PyAny>) -> PyResult<UseT> {
    let t = tuple(obj)?;
    let q = item(&t, 6)?;
    let train_only = q.extract::<String>().map_or(false, |s| s == "train_only");
    Ok(UseT {
        param: item(&t, 0)?.extract()?,
        kind: kind(&item(&t, 1)?)?,
        x: view(&item(&t, 2)?)?,
        b: view(&item(&t, 3)?)?,
        t: item(&t, 4)?.extract()?,
        mask: view_opt(&item(&t, 5)?)?,
        query: if q.is_none() || train_only { None } else { Some(query(&q)?) },
        train_only,
    })
}

#[derive(Clone, Copy)]
pub struct GhgUseT {
    pub base: UseT,
    pub val: QueryT,
    pub x_dot: Option<View>,
    pub b_dot: View,
}

/// `(param, kind, x, b, t, mask, val, x_dot | None, b_dot)`.
pub fn ghg_use(obj: &Bound<'_, PyAny>) -> PyResult<GhgUseT> {
    let t = tuple(obj)?;
    let base = UseT {
        param: item(&t, 0)?.extract()?,
        kind: kind(&item(&t, 1)?)?,
        x: view(&item(&t, 2)?)?,
        b: view(&item(&t, 3)?)?,
        t: item(&t, 4)?.extract()?,
        mask: view_opt(&item(&t, 5)?)?,
        query: None,
        train_only: false,
    };
    Ok(GhgUseT { base, val: query(&item(&t, 6)?)?, x_dot: view_opt(&item(&t, 7)?)?, b_dot: view(&item(&t, 8)?)? })
}

#[derive(Clone, Copy)]
pub enum ProjKindT {
    Random { seed: u64, layer: u32, dist: Distribution },
    Dense { p_in: View, p_out: View },
}

#[derive(Clone, Copy)]
pub struct ProjT {
    pub k_i: u64,
    pub k_o: u64,
    pub kind: ProjKindT,
}

pub fn dist(s: &str) -> PyResult<Distribution> {
    match s {
        "gaussian" => Ok(Distribution::Gaussian),
        "rademacher" => Ok(Distribution::Rademacher),
        other => Err(PyValueError::new_err(format!("unknown distribution {other:?}"))),
    }
}

/// `(k_in, k_out, ("random", seed, layer, dist) | ("dense", p_in, p_out))`.
pub fn proj(obj: &Bound<'_, PyAny>) -> PyResult<ProjT> {
    let t = tuple(obj)?;
    let k = tuple(&item(&t, 2)?)?;
    let tag: String = item(&k, 0)?.extract()?;
    let kind = match tag.as_str() {
        "random" => ProjKindT::Random {
            seed: item(&k, 1)?.extract()?,
            layer: item(&k, 2)?.extract()?,
            dist: dist(&item(&k, 3)?.extract::<String>()?)?,
        },
        "dense" => ProjKindT::Dense { p_in: view(&item(&k, 1)?)?, p_out: view(&item(&k, 2)?)? },
        other => return Err(PyValueError::new_err(format!("unknown projection kind {other:?}"))),
    };
    Ok(ProjT { k_i: item(&t, 0)?.extract()?, k_o: item(&t, 1)?.extract()?, kind })
}

#[derive(Clone, Copy)]
pub struct ProjLayerT {
    pub embedding: bool,
    pub x: View,
    pub b: View,
    pub n: u64,
    pub t: u64,
    pub mask: Option<View>,
    pub bias: bool,
    pub d_in: u64,
    pub d_out: u64,
    pub proj: ProjT,
}

/// `(kind, x | ids, b, n, t, mask, bias, d_in | vocab, d_out, proj)`.
pub fn proj_layer(obj: &Bound<'_, PyAny>) -> PyResult<ProjLayerT> {
    let t = tuple(obj)?;
    Ok(ProjLayerT {
        embedding: item(&t, 0)?.extract::<String>()? == "embedding",
        x: view(&item(&t, 1)?)?,
        b: view(&item(&t, 2)?)?,
        n: item(&t, 3)?.extract()?,
        t: item(&t, 4)?.extract()?,
        mask: view_opt(&item(&t, 5)?)?,
        bias: item(&t, 6)?.extract()?,
        d_in: item(&t, 7)?.extract()?,
        d_out: item(&t, 8)?.extract()?,
        proj: proj(&item(&t, 9)?)?,
    })
}

pub fn form(code: u32) -> PyResult<FormRequest> {
    Ok(match code {
        0 => FormRequest::Auto,
        1 => FormRequest::Force(Form::Gram),
        2 => FormRequest::Force(Form::DenseQuery),
        3 => FormRequest::Force(Form::Materialize),
        other => return Err(PyValueError::new_err(format!("unknown form code {other}"))),
    })
}

pub fn list<T>(obj: &Bound<'_, PyAny>, f: impl Fn(&Bound<'_, PyAny>) -> PyResult<T>) -> PyResult<Vec<T>> {
    obj.try_iter()?.map(|x| f(&x?)).collect()
}
