//! A DLPack consumer: imports any array that speaks `__dlpack__` (torch, numpy ≥ 1.22, JAX,
//! CuPy) without copying, as an [`Array`] that keeps the producer's buffer alive and calls its
//! deleter when dropped.
//!
//! Protocol (DLPack 1.x, data-api `__dlpack__`): we ask for a versioned capsule
//! (`max_version=(1, 0)`, capsule name `"dltensor_versioned"`) and fall back to the legacy one
//! (`"dltensor"`) for producers that do not take the argument. After taking the pointer the
//! capsule is renamed `"used_…"`, so its destructor leaves the tensor to us; the deleter runs in
//! [`Drop`] (with the GIL held: Python objects are only dropped under it). Checked here: the
//! dtype (code, bits, lanes), row-major contiguity from the strides (size-1 dims may have any
//! stride), `data + byte_offset`, the device; the read-only and copied flags are recorded for
//! outputs.
//!
//! This is the only file of the bindings with `unsafe` FFI on foreign structs.

use std::ffi::{c_void, CStr};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{raise, Family};

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const FLAG_READ_ONLY: u64 = 1 << 0;
const FLAG_IS_COPIED: u64 = 1 << 1;

const LEGACY: &CStr = c"dltensor";
const LEGACY_USED: &CStr = c"used_dltensor";
const VERSIONED: &CStr = c"dltensor_versioned";
const VERSIONED_USED: &CStr = c"used_dltensor_versioned";

/// Element types the bindings understand (others are reported by name and rejected by the
/// Python layer's dtype checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    BF16,
    F16,
    F64,
    U8,
    Bool,
    I32,
    I64,
    Other { code: u8, bits: u8, lanes: u16 },
}

impl ElemType {
    fn from_dl(t: DLDataType) -> Self {
        if t.lanes != 1 {
            return ElemType::Other { code: t.code, bits: t.bits, lanes: t.lanes };
        }
        match (t.code, t.bits) {
            (2, 32) => ElemType::F32,
            (4, 16) => ElemType::BF16,
            (2, 16) => ElemType::F16,
            (2, 64) => ElemType::F64,
            (1, 8) => ElemType::U8,
            (6, 8) => ElemType::Bool,
            (0, 32) => ElemType::I32,
            (0, 64) => ElemType::I64,
            _ => ElemType::Other { code: t.code, bits: t.bits, lanes: t.lanes },
        }
    }
    pub fn name(self) -> String {
        match self {
            ElemType::F32 => "f32".into(),
            ElemType::BF16 => "bf16".into(),
            ElemType::F16 => "f16".into(),
            ElemType::F64 => "f64".into(),
            ElemType::U8 => "u8".into(),
            ElemType::Bool => "bool".into(),
            ElemType::I32 => "i32".into(),
            ElemType::I64 => "i64".into(),
            ElemType::Other { code, bits, lanes } => {
                let kind = match code {
                    0 => "i",
                    1 => "u",
                    2 => "f",
                    4 => "bf",
                    5 => "c",
                    6 => "bool",
                    _ => "code",
                };
                if lanes == 1 { format!("{kind}{bits}") } else { format!("{kind}{bits}x{lanes}") }
            }
        }
    }
    /// Bytes per element (0 for types we do not handle).
    pub fn size(self) -> u64 {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::BF16 | ElemType::F16 => 2,
            ElemType::U8 | ElemType::Bool => 1,
            ElemType::Other { .. } => 0,
        }
    }
}

enum Managed {
    Legacy(*mut DLManagedTensor),
    Versioned(*mut DLManagedTensorVersioned),
}

/// What an operation needs of an imported array: plain data, `Send`, no Python object.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub ptr: u64,
    pub len: u64,
    pub elem: ElemType,
    pub device: (i32, i32),
    pub readonly: bool,
    pub copied: bool,
}

/// An array imported through DLPack (zero copy).
#[pyclass(module = "ghostgrad._native", frozen)]
pub struct Array {
    managed: Managed,
    pub view: View,
    shape: Vec<i64>,
    name: String,
}

// SAFETY: the managed tensor is only dereferenced at import and in `Drop`, which pyo3 runs with
// the GIL held (the producer's deleter may need it); the data pointer is plain memory.
unsafe impl Send for Array {}
unsafe impl Sync for Array {}

impl Drop for Array {
    fn drop(&mut self) {
        // SAFETY: we own the managed tensor (the capsule was marked used) and drop it once.
        unsafe {
            match self.managed {
                Managed::Legacy(m) => {
                    if let Some(d) = (*m).deleter {
                        d(m)
                    }
                }
                Managed::Versioned(m) => {
                    if let Some(d) = (*m).deleter {
                        d(m)
                    }
                }
            }
        }
    }
}

fn export<'py>(obj: &Bound<'py, PyAny>, stream: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let kwargs = PyDict::new(py);
    if let Some(s) = stream {
        kwargs.set_item("stream", s)?;
    }
    kwargs.set_item("max_version", PyTuple::new(py, [1u32, 0u32])?)?;
    match obj.call_method("__dlpack__", (), Some(&kwargs)) {
        Ok(c) => Ok(c),
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            // A producer that predates DLPack 1.0 does not take max_version.
            kwargs.del_item("max_version")?;
            obj.call_method("__dlpack__", (), Some(&kwargs))
        }
        Err(e) => Err(e),
    }
}

/// Row-major contiguous (size-1 dims may carry any stride; a null `strides` means compact).
unsafe fn contiguous(t: &DLTensor, shape: &[i64]) -> bool {
    if t.strides.is_null() {
        return true;
    }
    let strides = std::slice::from_raw_parts(t.strides, shape.len());
    let mut expect = 1i64;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(n);
    }
    true
}

#[pymethods]
impl Array {
    /// Imports `obj` through `obj.__dlpack__(stream=stream, max_version=(1, 0))`.
    #[new]
    #[pyo3(signature = (obj, name, stream=None))]
    fn new(obj: &Bound<'_, PyAny>, name: String, stream: Option<i64>) -> PyResult<Self> {
        let py = obj.py();
        let capsule = export(obj, stream).map_err(|e| {
            raise(py, Family::InvalidArgument, &name, &format!("{name} could not be exported through DLPack: {e}"))
        })?;
        let cap = capsule.as_ptr();
        // SAFETY: capsule API on a live object; names are static C strings.
        let (managed, tensor, flags) = unsafe {
            if pyo3::ffi::PyCapsule_IsValid(cap, VERSIONED.as_ptr()) == 1 {
                let m = pyo3::ffi::PyCapsule_GetPointer(cap, VERSIONED.as_ptr()) as *mut DLManagedTensorVersioned;
                if m.is_null() {
                    return Err(PyErr::fetch(py));
                }
                if (*m).version.major != 1 {
                    let msg = format!("{name} is a DLPack {}.{} tensor; this consumer reads DLPack 1.x", (*m).version.major, (*m).version.minor);
                    return Err(raise(py, Family::InvalidArgument, &name, &msg));
                }
                pyo3::ffi::PyCapsule_SetName(cap, VERSIONED_USED.as_ptr());
                (Managed::Versioned(m), &(*m).dl_tensor as *const DLTensor, (*m).flags)
            } else if pyo3::ffi::PyCapsule_IsValid(cap, LEGACY.as_ptr()) == 1 {
                let m = pyo3::ffi::PyCapsule_GetPointer(cap, LEGACY.as_ptr()) as *mut DLManagedTensor;
                if m.is_null() {
                    return Err(PyErr::fetch(py));
                }
                pyo3::ffi::PyCapsule_SetName(cap, LEGACY_USED.as_ptr());
                (Managed::Legacy(m), &(*m).dl_tensor as *const DLTensor, 0)
            } else {
                let msg = format!("{name}.__dlpack__() did not return an unused DLPack capsule");
                return Err(raise(py, Family::InvalidArgument, &name, &msg));
            }
        };
        // From here on `arr` owns the tensor: an early return drops it (and calls the deleter).
        let mut arr = Array {
            managed,
            view: View { ptr: 0, len: 0, elem: ElemType::F32, device: (0, 0), readonly: false, copied: false },
            shape: Vec::new(),
            name,
        };
        // SAFETY: the producer guarantees a valid DLTensor until its deleter runs.
        unsafe {
            let t = &*tensor;
            if t.ndim < 0 {
                return Err(raise(py, Family::Shape, &arr.name, &format!("{} has ndim {}", arr.name, t.ndim)));
            }
            let shape: Vec<i64> = if t.ndim == 0 { Vec::new() } else { std::slice::from_raw_parts(t.shape, t.ndim as usize).to_vec() };
            if shape.iter().any(|&d| d < 0) {
                return Err(raise(py, Family::Shape, &arr.name, &format!("{} has a negative dimension {:?}", arr.name, shape)));
            }
            let elem = ElemType::from_dl(t.dtype);
            let len = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let Some(len) = len else {
                return Err(raise(py, Family::Shape, &arr.name, &format!("{} has {:?} elements: overflow", arr.name, shape)));
            };
            if len > 0 && !contiguous(t, &shape) {
                let strides = std::slice::from_raw_parts(t.strides, shape.len()).to_vec();
                let msg = format!(
                    "{} is not contiguous (shape {:?}, strides {:?} in elements); ghostgrad never copies on the hot path: pass a contiguous array (e.g. .contiguous() / np.ascontiguousarray)",
                    arr.name, shape, strides
                );
                return Err(raise(py, Family::InvalidArgument, &arr.name, &msg));
            }
            let ptr = (t.data as u64).wrapping_add(t.byte_offset);
            arr.view = View {
                ptr,
                len,
                elem,
                device: (t.device.device_type, t.device.device_id),
                readonly: flags & FLAG_READ_ONLY != 0,
                copied: flags & FLAG_IS_COPIED != 0,
            };
            arr.shape = shape;
        }
        Ok(arr)
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }
    #[getter]
    fn dtype(&self) -> String {
        self.view.elem.name()
    }
    #[getter]
    fn device(&self) -> (i32, i32) {
        self.view.device
    }
    #[getter]
    fn ptr(&self) -> u64 {
        self.view.ptr
    }
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn readonly(&self) -> bool {
        self.view.readonly
    }
    #[getter]
    fn nbytes(&self) -> u64 {
        self.view.len * self.view.elem.size()
    }
}
