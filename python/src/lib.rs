//! `ghostgrad._native`: the small native module under the Python package `ghostgrad`
//! (python/ghostgrad/). It imports arrays through DLPack ([`dlpack`]), turns the package's
//! argument tuples into the core's views ([`parse`], [`bind`]) and calls the Rust API
//! ([`ghostgrad::Context`]) with the GIL released ([`context`]); errors become the
//! `ghostgrad.errors` hierarchy ([`errors`]). Shapes, names and defaults live in Python.

mod bind;
mod context;
mod dlpack;
mod errors;
mod parse;
mod precondition;

use pyo3::prelude::*;

use crate::dlpack::{ElemType, View};

/// The first kept id outside `[0, vocab)` of host ids (i32 / i64) as `(flat row, id)`; rows
/// whose `mask` (u8 / bool, same length) is zero are skipped, as the operations skip them.
#[pyfunction]
#[pyo3(signature = (ids, mask, vocab))]
fn first_bad_id(ids: &Bound<'_, PyAny>, mask: &Bound<'_, PyAny>, vocab: i64) -> PyResult<Option<(u64, i64)>> {
    let ids: View = parse::view(ids)?;
    let mask: Option<View> = parse::view_opt(mask)?;
    let keep = |i: usize| -> bool {
        // SAFETY: host arrays (checked by the caller), alive for the call, `len` elements.
        mask.as_ref().map_or(true, |m| unsafe { *(m.ptr as *const u8).add(i) } != 0)
    };
    let n = ids.len as usize;
    let check = |i: usize, id: i64| (keep(i) && (id < 0 || id >= vocab)).then_some((i as u64, id));
    // SAFETY: as above; alignment holds for arrays allocated by the frameworks (checked again by the core).
    unsafe {
        Ok(match ids.elem {
            ElemType::I32 => std::slice::from_raw_parts(ids.ptr as *const i32, n).iter().enumerate().find_map(|(i, &x)| check(i, x as i64)),
            ElemType::I64 => std::slice::from_raw_parts(ids.ptr as *const i64, n).iter().enumerate().find_map(|(i, &x)| check(i, x)),
            _ => None,
        })
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KERNELS_BUILT", ghostgrad::kernels::KERNELS_BUILT)?;
    m.add("SUPPORTS_I64", true)?;
    m.add_class::<dlpack::Array>()?;
    m.add_class::<context::NativeContext>()?;
    m.add("Context", m.getattr("NativeContext")?)?;
    m.add_class::<precondition::RawFisher>()?;
    m.add_class::<precondition::Kfac>()?;
    m.add_function(wrap_pyfunction!(first_bad_id, m)?)?;
    Ok(())
}
