//! Imported arrays → the core's [`Tensor`] / [`TensorMut`] views for one call, on the
//! context's memory space: host slices (CPU contexts), device slices (CUDA), or, for the
//! `interp` test backend, copies of the host arrays in the PTX interpreter's memory (outputs are
//! copied back by [`Bind::finish`]). Also rejects outputs that are read-only, copies made by the
//! producer, or overlap another argument of the call.

use std::sync::Arc;

use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};
use ghostgrad::{DType, DeviceSlice, DeviceSliceMut, GhostError, HostSlice, Tensor, TensorMut};
use half::{bf16, f16};

use crate::dlpack::{ElemType, View};

/// Where a context's operations read and write.
pub enum Space {
    Host,
    Cuda,
    Interp(Arc<InterpRuntime>),
}

fn bad(reason: String) -> GhostError {
    GhostError::InvalidArgument { what: "array", reason }
}

pub fn dtype(e: ElemType) -> Result<DType, GhostError> {
    Ok(match e {
        ElemType::F32 => DType::F32,
        ElemType::BF16 => DType::BF16,
        ElemType::F16 => DType::F16,
        ElemType::U8 | ElemType::Bool => DType::U8,
        ElemType::I32 => DType::I32,
        ElemType::F64 => DType::F64,
        ElemType::I64 => DType::I64,
        other => return Err(bad(format!("dtype {} is not supported by ghostgrad", other.name()))),
    })
}

/// One call's views. Everything it hands out is valid while the Python caller holds the
/// imported arrays, i.e. for the duration of the native call.
pub struct Bind<'s> {
    space: &'s Space,
    inputs: Vec<(u64, u64)>,
    outputs: Vec<(u64, u64)>,
    uploads: Vec<InterpBuffer>,
    writebacks: Vec<(InterpBuffer, View)>,
}

impl<'s> Bind<'s> {
    pub fn new(space: &'s Space) -> Self {
        Bind { space, inputs: Vec::new(), outputs: Vec::new(), uploads: Vec::new(), writebacks: Vec::new() }
    }

    fn range(v: &View) -> (u64, u64) {
        (v.ptr, v.ptr + v.len * v.elem.size())
    }

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    fn host_bytes(v: &View) -> &'static [u8] {
        // SAFETY: the array is alive for the call (the caller holds it) and has len·size bytes.
        unsafe { std::slice::from_raw_parts(v.ptr as *const u8, (v.len * v.elem.size()) as usize) }
    }

    fn upload(&mut self, rt: &InterpRuntime, v: &View, dt: DType) -> Result<InterpBuffer, GhostError> {
        let bytes = Self::host_bytes(v);
        let buf = match v.elem.size() {
            1 => rt.upload(bytes, dt)?,
            2 => rt.upload(&bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(), dt)?,
            4 => rt.upload(&bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dt)?,
            _ => rt.upload(&bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dt)?,
        };
        self.uploads.push(buf);
        Ok(buf)
    }

    fn aligned(v: &View) -> Result<(), GhostError> {
        let size = v.elem.size().max(1);
        if v.ptr % size != 0 {
            return Err(GhostError::Misaligned { what: "array", addr: v.ptr, align: size });
        }
        Ok(())
    }

    /// A read-only input.
    pub fn input<'a>(&mut self, v: &View) -> Result<Tensor<'a>, GhostError> {
        let dt = dtype(v.elem)?;
        let r = Self::range(v);
        if let Some(o) = self.outputs.iter().find(|o| Self::overlaps(**o, r)) {
            return Err(bad(format!("an input at {:#x} overlaps an output at {:#x} of the same call", r.0, o.0)));
        }
        self.inputs.push(r);
        Ok(match self.space {
            Space::Host => {
                Self::aligned(v)?;
                let n = v.len as usize;
                let p = v.ptr as *const u8;
                // SAFETY: aligned, `n` elements of the dtype, alive for the call (see the type doc).
                unsafe {
                    Tensor::Host(match v.elem {
                        ElemType::F32 => HostSlice::F32(std::slice::from_raw_parts(p as *const f32, n)),
                        ElemType::BF16 => HostSlice::BF16(std::slice::from_raw_parts(p as *const bf16, n)),
                        ElemType::F16 => HostSlice::F16(std::slice::from_raw_parts(p as *const f16, n)),
                        ElemType::U8 | ElemType::Bool => HostSlice::U8(std::slice::from_raw_parts(p, n)),
                        ElemType::I32 => HostSlice::I32(std::slice::from_raw_parts(p as *const i32, n)),
                        ElemType::I64 => HostSlice::I64(std::slice::from_raw_parts(p as *const i64, n)),
                        other => return Err(bad(format!("dtype {} is not an input dtype", other.name()))),
                    })
                }
            }
            // SAFETY: a CUDA array's memory lives on the context's device for the call; checked by the core.
            Space::Cuda => Tensor::Device(unsafe { DeviceSlice::from_raw_parts(v.ptr, v.len, dt) }),
            Space::Interp(rt) => {
                let rt = rt.clone();
                let b = self.upload(&rt, v, dt)?;
                // SAFETY: the interpreter allocation lives until `finish` / drop.
                Tensor::Device(unsafe { DeviceSlice::from_raw_parts(b.ptr, b.len, dt) })
            }
        })
    }

    pub fn input_opt<'a>(&mut self, v: &Option<View>) -> Result<Option<Tensor<'a>>, GhostError> {
        v.as_ref().map(|v| self.input(v)).transpose()
    }

    /// An output (f32, or f64 for the value accumulator).
    pub fn output<'a>(&mut self, v: &View) -> Result<TensorMut<'a>, GhostError> {
        if v.readonly {
            return Err(bad("an output is read-only".into()));
        }
        if v.copied {
            return Err(bad("an output was exported as a copy by its producer (results would be lost)".into()));
        }
        let dt = dtype(v.elem)?;
        let r = Self::range(v);
        if self.inputs.iter().chain(&self.outputs).any(|o| Self::overlaps(*o, r)) {
            return Err(bad(format!("an output at {:#x} overlaps another argument of the same call", r.0)));
        }
        self.outputs.push(r);
        Ok(match self.space {
            Space::Host => {
                Self::aligned(v)?;
                let n = v.len as usize;
                // SAFETY: writable (not read-only), aligned, disjoint from every other argument, alive for the call.
                unsafe {
                    match v.elem {
                        ElemType::F32 => TensorMut::Host(std::slice::from_raw_parts_mut(v.ptr as *mut f32, n)),
                        ElemType::F64 => TensorMut::HostF64(std::slice::from_raw_parts_mut(v.ptr as *mut f64, n)),
                        other => return Err(bad(format!("dtype {} is not an output dtype", other.name()))),
                    }
                }
            }
            Space::Cuda => TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(v.ptr, v.len, dt) }),
            Space::Interp(rt) => {
                let rt = rt.clone();
                let b = self.upload(&rt, v, dt)?;
                self.writebacks.push((b, *v));
                TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(b.ptr, b.len, dt) })
            }
        })
    }

    pub fn output_opt<'a>(&mut self, v: &Option<View>) -> Result<Option<TensorMut<'a>>, GhostError> {
        v.as_ref().map(|v| self.output(v)).transpose()
    }

    /// Interp: copies the outputs back to the caller's host arrays and frees the copies.
    pub fn finish(mut self) -> Result<(), GhostError> {
        if let Space::Interp(rt) = self.space {
            for (buf, v) in std::mem::take(&mut self.writebacks) {
                let n = v.len as usize;
                // SAFETY: the caller's host output, writable and disjoint (checked in `output`).
                unsafe {
                    match v.elem {
                        ElemType::F64 => std::slice::from_raw_parts_mut(v.ptr as *mut f64, n).copy_from_slice(&rt.read_f64(&buf)?),
                        _ => std::slice::from_raw_parts_mut(v.ptr as *mut f32, n).copy_from_slice(&rt.read_f32(&buf)?),
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Bind<'_> {
    fn drop(&mut self) {
        if let Space::Interp(rt) = self.space {
            for b in self.uploads.drain(..) {
                let _ = rt.free(b);
            }
        }
    }
}
