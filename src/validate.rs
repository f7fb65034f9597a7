//! Shared argument checks: every size is u64 with checked arithmetic, every buffer is checked
//! for memory space, dtype, null pointer, alignment and length before anything runs.

use crate::buffer::{Tensor, TensorMut};
use crate::dtype::DType;
use crate::error::{GhostError, Result};

/// Where the operation's buffers must live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Host,
    Device,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Host => "host",
            Space::Device => "device",
        }
    }
}

/// `a * b` with an error naming the product on overflow.
pub fn mul(what: &str, a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| GhostError::ShapeOverflow { what: what.to_string(), limit: "u64" })
}

/// `a + b` with an error naming the sum on overflow.
pub fn add(what: &str, a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| GhostError::ShapeOverflow { what: what.to_string(), limit: "u64" })
}

/// Product of several sizes, checked.
pub fn product(what: &str, xs: &[u64]) -> Result<u64> {
    xs.iter().try_fold(1u64, |acc, &x| mul(what, acc, x))
}

pub fn nonzero(what: &'static str, v: u64) -> Result<u64> {
    if v == 0 {
        Err(GhostError::ZeroSize { what })
    } else {
        Ok(v)
    }
}

/// Kernels index with 32-bit sizes and 64-bit offsets: every size and every element count of a
/// single buffer must stay below 2^31.
pub fn fits_i32(what: &str, v: u64) -> Result<u32> {
    if v >= (1u64 << 31) {
        Err(GhostError::ShapeOverflow { what: what.to_string(), limit: "2^31 - 1 (kernel index range)" })
    } else {
        Ok(v as u32)
    }
}

fn check_space_ptr_len(
    what: &'static str,
    space: Space,
    got_space: &'static str,
    ptr: Option<u64>,
    elem: u64,
    len: u64,
    expected: u64,
) -> Result<()> {
    if got_space != space.name() {
        return Err(GhostError::WrongMemorySpace { what, expected: space.name(), got: got_space });
    }
    if let Some(p) = ptr {
        if p == 0 {
            return Err(GhostError::NullPointer { what });
        }
        if p % elem != 0 {
            return Err(GhostError::Misaligned { what, addr: p, align: elem });
        }
    }
    if len != expected {
        return Err(GhostError::LengthMismatch { what, expected, got: len });
    }
    Ok(())
}

/// Checks an input buffer: memory space, dtype among `allowed`, non-null, aligned, exact length.
pub fn input(
    what: &'static str,
    t: &Tensor<'_>,
    space: Space,
    allowed: &[DType],
    expected_len: u64,
    op: &'static str,
) -> Result<DType> {
    let dtype = t.dtype();
    if !allowed.contains(&dtype) {
        return Err(GhostError::UnsupportedDtype { what, dtype, op });
    }
    let ptr = match t {
        Tensor::Device(d) => Some(d.ptr()),
        Tensor::Host(_) => None,
    };
    check_space_ptr_len(what, space, t.space(), ptr, dtype.size(), t.len(), expected_len)?;
    Ok(dtype)
}

/// Checks an output buffer (f32): memory space, dtype, non-null, aligned, exact length.
pub fn output(what: &'static str, t: &TensorMut<'_>, space: Space, expected_len: u64, op: &'static str) -> Result<()> {
    let (got_space, ptr) = match t {
        TensorMut::Host(_) | TensorMut::HostF64(_) => ("host", None),
        TensorMut::Device(d) => ("device", Some(d.ptr())),
    };
    if t.dtype() != DType::F32 {
        return Err(GhostError::UnsupportedDtype { what, dtype: t.dtype(), op });
    }
    check_space_ptr_len(what, space, got_space, ptr, 4, t.len(), expected_len)
}

/// Checks a float64 output buffer (the value accumulator): space, dtype, non-null, aligned,
/// exact length.
pub fn output_f64(what: &'static str, t: &TensorMut<'_>, space: Space, expected_len: u64, op: &'static str) -> Result<()> {
    let (got_space, ptr) = match t {
        TensorMut::Host(_) | TensorMut::HostF64(_) => ("host", None),
        TensorMut::Device(d) => ("device", Some(d.ptr())),
    };
    if t.dtype() != DType::F64 {
        return Err(GhostError::UnsupportedDtype { what, dtype: t.dtype(), op });
    }
    check_space_ptr_len(what, space, got_space, ptr, 8, t.len(), expected_len)
}

/// Two inputs that must share a dtype.
pub fn same_dtype(what: &'static str, expected: DType, got: DType) -> Result<()> {
    if expected != got {
        Err(GhostError::DtypeMismatch { what, expected, got })
    } else {
        Ok(())
    }
}

/// A finite scalar parameter (NaN/Inf scale or beta would silently poison every output).
pub fn finite(what: &'static str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(GhostError::InvalidArgument { what, reason: format!("must be finite, got {v}") })
    }
}
