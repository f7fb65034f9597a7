//! The host preconditioners (`ghostgrad::projection::precondition`) as Python objects; inputs
//! and outputs are host f32 arrays (checked by the Python layer).

use ghostgrad::projection::precondition;
use pyo3::prelude::*;

use crate::dlpack::View;
use crate::errors::ghost_err;
use crate::parse;

fn host_f32<'a>(v: &View) -> &'a [f32] {
    // SAFETY: a host f32 array (checked by the Python layer) alive for the call.
    unsafe { std::slice::from_raw_parts(v.ptr as *const f32, v.len as usize) }
}

fn host_f32_mut<'a>(v: &View) -> &'a mut [f32] {
    // SAFETY: a freshly allocated host f32 output, disjoint from the inputs.
    unsafe { std::slice::from_raw_parts_mut(v.ptr as *mut f32, v.len as usize) }
}

fn k_of(v: &View, n: usize) -> usize {
    if n == 0 { 0 } else { v.len as usize / n }
}

#[pyclass(module = "ghostgrad._native")]
pub struct RawFisher {
    inner: precondition::RawFisher,
    k: usize,
}

#[pymethods]
impl RawFisher {
    #[staticmethod]
    fn fit(py: Python<'_>, grads: &Bound<'_, PyAny>) -> PyResult<Self> {
        let g = parse::view(grads)?;
        let n: usize = grads.getattr("shape")?.get_item(0)?.extract()?;
        let k = k_of(&g, n);
        let inner = py.detach(|| precondition::RawFisher::fit(host_f32(&g), n, k)).map_err(|e| ghost_err(py, "RawFisher.fit", &e))?;
        Ok(RawFisher { inner, k })
    }

    #[staticmethod]
    fn from_sum(py: Python<'_>, sum: &Bound<'_, PyAny>, n: usize) -> PyResult<Self> {
        let s = parse::view(sum)?;
        let k = (s.len as f64).sqrt() as usize;
        let inner = py.detach(|| precondition::RawFisher::from_sum(host_f32(&s), k, n)).map_err(|e| ghost_err(py, "RawFisher.from_moments", &e))?;
        Ok(RawFisher { inner, k })
    }

    fn damping(&self) -> f64 {
        self.inner.damping()
    }

    fn apply(&self, py: Python<'_>, grads: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let (g, o) = (parse::view(grads)?, parse::view(out)?);
        let n = g.len as usize / self.k.max(1);
        let r = py.detach(|| self.inner.apply(host_f32(&g), n)).map_err(|e| ghost_err(py, "RawFisher.apply", &e))?;
        host_f32_mut(&o).copy_from_slice(&r);
        Ok(())
    }
}

#[pyclass(module = "ghostgrad._native")]
pub struct Kfac {
    inner: precondition::Kfac,
    k: usize,
}

#[pymethods]
impl Kfac {
    #[staticmethod]
    fn from_covariances(py: Python<'_>, c_a: &Bound<'_, PyAny>, c_b: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (a, b) = (parse::view(c_a)?, parse::view(c_b)?);
        let (k_i, k_o) = ((a.len as f64).sqrt() as usize, (b.len as f64).sqrt() as usize);
        let inner = py
            .detach(|| precondition::Kfac::from_covariances_f32(host_f32(&a), k_i, host_f32(&b), k_o))
            .map_err(|e| ghost_err(py, "Kfac.from_moments", &e))?;
        Ok(Kfac { inner, k: k_i * k_o })
    }

    fn damping(&self) -> f64 {
        self.inner.damping()
    }

    fn eigenvalues(&self) -> (Vec<f64>, Vec<f64>) {
        let (a, b) = self.inner.eigenvalues();
        (a.to_vec(), b.to_vec())
    }

    fn eigenvectors(&self) -> (Vec<f32>, Vec<f32>) {
        self.inner.eigenvectors_f32()
    }

    fn ekfac_correct(&mut self, py: Python<'_>, grads: &Bound<'_, PyAny>) -> PyResult<()> {
        let g = parse::view(grads)?;
        let n = g.len as usize / self.k.max(1);
        let inner = &mut self.inner;
        py.detach(|| inner.ekfac_correct(host_f32(&g), n)).map_err(|e| ghost_err(py, "Kfac.ekfac_correct", &e))
    }

    fn set_ekfac_sum(&mut self, py: Python<'_>, sum: &Bound<'_, PyAny>, n: usize) -> PyResult<()> {
        let s = parse::view(sum)?;
        self.inner.set_ekfac_sum(host_f32(&s), n).map_err(|e| ghost_err(py, "Kfac.set_ekfac_sum", &e))
    }

    fn apply(&self, py: Python<'_>, grads: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let (g, o) = (parse::view(grads)?, parse::view(out)?);
        let n = g.len as usize / self.k.max(1);
        let r = py.detach(|| self.inner.apply(host_f32(&g), n)).map_err(|e| ghost_err(py, "Kfac.apply", &e))?;
        host_f32_mut(&o).copy_from_slice(&r);
        Ok(())
    }
}
