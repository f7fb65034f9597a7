//! Fallible host allocations. Every host buffer whose size follows from the caller's shapes
//! (materialized projections, gradients, workspaces, fitted matrices) is reserved with
//! `try_reserve_exact`, so a request the machine cannot satisfy becomes
//! [`GhostError::OutOfMemory`] naming the buffer and its size instead of aborting the process.
//! Sizes that overflow `usize` are the same error.

use crate::error::{GhostError, Result};

/// The out-of-memory error for `len` elements of `elem` bytes.
pub(crate) fn oom(what: &str, len: u64, elem: u64) -> GhostError {
    GhostError::OutOfMemory { what: what.to_string(), bytes: len.saturating_mul(elem) }
}

/// An empty vector with room for `len` elements.
pub(crate) fn try_with_capacity<T>(what: &str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| oom(what, len as u64, std::mem::size_of::<T>() as u64))?;
    Ok(v)
}

/// `vec![value; len]`, fallible.
pub(crate) fn try_vec<T: Clone>(what: &str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// `len` as `usize` for an allocation of `what` (fails like an allocation on 32-bit hosts).
pub(crate) fn host_len(what: &str, len: u64, elem: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| oom(what, len, elem))
}

/// Checks that the host can hold the working set (`elems` elements of `elem` bytes) of a
/// computation done by a library without fallible allocation (faer's products,
/// factorizations and decompositions): reserves it once — address space only, never touched —
/// and releases it, so a working set the machine cannot hold is an error before the library
/// would abort on it.
pub(crate) fn reserve_working_set(what: &str, elems: u64, elem: u64) -> Result<()> {
    let len = elems.checked_mul(elem).and_then(|b| usize::try_from(b).ok()).ok_or_else(|| oom(what, elems, elem))?;
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(len).map_err(|_| oom(what, elems, elem))?;
    Ok(())
}
