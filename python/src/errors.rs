//! GhostError → the Python exception hierarchy of `ghostgrad.errors` (one class per family),
//! with the operation and the argument's name as attributes.

use ghostgrad::GhostError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};

/// The exception classes of `ghostgrad/errors.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    InvalidArgument,
    Shape,
    DType,
    Device,
    KernelsNotBuilt,
    Cuda,
    OutOfMemory,
    Internal,
    Base,
}

impl Family {
    fn class(self) -> &'static str {
        match self {
            Family::InvalidArgument => "InvalidArgument",
            Family::Shape => "ShapeError",
            Family::DType => "DTypeError",
            Family::Device => "DeviceError",
            Family::KernelsNotBuilt => "KernelsNotBuilt",
            Family::Cuda => "CudaError",
            Family::OutOfMemory => "OutOfMemory",
            Family::Internal => "InternalError",
            Family::Base => "Error",
        }
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An exception of `family` with `message`, `what` and `op` set.
pub fn raise_op(py: Python<'_>, family: Family, op: Option<&str>, what: Option<&str>, message: &str) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = ERRORS.get_or_try_init(py, || PyModule::import(py, "ghostgrad.errors").map(|m| m.unbind()))?;
        let cls = module.bind(py).getattr(family.class())?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("what", what)?;
        kwargs.set_item("op", op)?;
        Ok(PyErr::from_value(cls.call((message,), Some(&kwargs))?))
    };
    build().unwrap_or_else(|e| e)
}

pub fn raise(py: Python<'_>, family: Family, what: &str, message: &str) -> PyErr {
    raise_op(py, family, None, Some(what), message)
}

/// The family of a core error and the argument it names.
pub fn classify(e: &GhostError) -> (Family, Option<String>) {
    use GhostError as G;
    match e {
        G::NullPointer { what } | G::Misaligned { what, .. } | G::InvalidArgument { what, .. } => (Family::InvalidArgument, Some(what.to_string())),
        G::LengthMismatch { what, .. } | G::ZeroSize { what } | G::LaunchLimit { what, .. } => (Family::Shape, Some(what.to_string())),
        G::ShapeOverflow { what, .. } => (Family::Shape, Some(what.clone())),
        G::DtypeMismatch { what, .. } | G::UnsupportedDtype { what, .. } => (Family::DType, Some(what.to_string())),
        G::WrongMemorySpace { what, .. } => (Family::Device, Some(what.to_string())),
        G::StreamMismatch(_) => (Family::Device, None),
        G::KernelsNotBuilt => (Family::KernelsNotBuilt, None),
        G::OutOfMemory { what, .. } => (Family::OutOfMemory, Some(what.clone())),
        G::Cuda { message, .. } if message.contains("OUT_OF_MEMORY") => (Family::OutOfMemory, None),
        G::CudaDriverUnavailable(_) | G::Cuda { .. } => (Family::Cuda, None),
        G::MissingKernel { .. } | G::Interpreter(_) | G::Internal(_) => (Family::Internal, None),
        // Variants added later (the enum is non-exhaustive): allocation failures by name, else the base class.
        other => {
            let dbg = format!("{other:?}");
            if dbg.contains("Alloc") || dbg.contains("OutOfMemory") {
                (Family::OutOfMemory, None)
            } else {
                (Family::Base, None)
            }
        }
    }
}

/// `op: <message>` as the family's exception.
pub fn ghost_err(py: Python<'_>, op: &str, e: &GhostError) -> PyErr {
    let (family, what) = classify(e);
    raise_op(py, family, Some(op), what.as_deref(), &format!("{op}: {e}"))
}
