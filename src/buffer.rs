//! Views of caller-owned memory: host slices for the CPU backends, device pointers for the
//! GPU backends (CUDA driver or the PTX interpreter).
//!
//! Device memory is never owned here. A [`DeviceSlice`] is built once through the `unsafe`
//! [`DeviceSlice::from_raw_parts`], whose contract the caller upholds; after that every size,
//! alignment and dtype is checked by the operation that receives it.

use std::marker::PhantomData;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{GhostError, Result};

/// A read-only host slice of one of the supported dtypes.
#[derive(Debug, Clone, Copy)]
pub enum HostSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    U8(&'a [u8]),
    I32(&'a [i32]),
    /// Token ids as frameworks hold them (torch's default integer type).
    I64(&'a [i64]),
}

impl HostSlice<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            HostSlice::F32(_) => DType::F32,
            HostSlice::BF16(_) => DType::BF16,
            HostSlice::F16(_) => DType::F16,
            HostSlice::U8(_) => DType::U8,
            HostSlice::I32(_) => DType::I32,
            HostSlice::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            HostSlice::F32(s) => s.len(),
            HostSlice::BF16(s) => s.len(),
            HostSlice::F16(s) => s.len(),
            HostSlice::U8(s) => s.len(),
            HostSlice::I32(s) => s.len(),
            HostSlice::I64(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` of a float input as f64 (exact for every float dtype).
    #[inline]
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            HostSlice::F32(s) => s[i] as f64,
            HostSlice::BF16(s) => s[i].to_f64(),
            HostSlice::F16(s) => s[i].to_f64(),
            HostSlice::U8(s) => s[i] as f64,
            HostSlice::I32(s) => s[i] as f64,
            HostSlice::I64(s) => s[i] as f64,
        }
    }
    /// Converts `len` elements starting at `start` to f32 into `dst` (exact for every float dtype).
    pub fn copy_to_f32(&self, start: usize, dst: &mut [f32]) {
        let n = dst.len();
        match self {
            HostSlice::F32(s) => dst.copy_from_slice(&s[start..start + n]),
            HostSlice::BF16(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..start + n]) {
                    *d = x.to_f32();
                }
            }
            HostSlice::F16(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..start + n]) {
                    *d = x.to_f32();
                }
            }
            HostSlice::U8(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..start + n]) {
                    *d = *x as f32;
                }
            }
            HostSlice::I32(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..start + n]) {
                    *d = *x as f32;
                }
            }
            HostSlice::I64(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..start + n]) {
                    *d = *x as f32;
                }
            }
        }
    }
}

impl<'a> HostSlice<'a> {
    /// The token ids of an `I32` or `I64` slice; `None` for other dtypes.
    pub fn ids(self) -> Option<HostIds<'a>> {
        match self {
            HostSlice::I32(s) => Some(HostIds::I32(s)),
            HostSlice::I64(s) => Some(HostIds::I64(s)),
            _ => None,
        }
    }
}

/// Host token ids of either width (`rows` of them), as the caller holds them.
#[derive(Debug, Clone, Copy)]
pub enum HostIds<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> HostIds<'a> {
    /// The id of row `r`, exact for both widths.
    #[inline]
    pub fn get(&self, r: usize) -> i64 {
        match self {
            HostIds::I32(s) => s[r] as i64,
            HostIds::I64(s) => s[r],
        }
    }
    pub fn len(&self) -> usize {
        match self {
            HostIds::I32(s) => s.len(),
            HostIds::I64(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first kept row (`mask[r] != 0`, or every row without a mask) whose id lies outside
    /// `[0, vocab)`, with that id. Masked rows are not read.
    pub fn first_out_of_range(&self, mask: Option<&[u8]>, vocab: u64) -> Option<(usize, i64)> {
        (0..self.len())
            .filter(|&r| mask.map_or(true, |m| m[r] != 0))
            .map(|r| (r, self.get(r)))
            .find(|&(_, id)| id < 0 || id as u64 >= vocab)
    }
}

impl<'a> From<&'a [f32]> for HostSlice<'a> {
    fn from(s: &'a [f32]) -> Self {
        HostSlice::F32(s)
    }
}
impl<'a> From<&'a [bf16]> for HostSlice<'a> {
    fn from(s: &'a [bf16]) -> Self {
        HostSlice::BF16(s)
    }
}
impl<'a> From<&'a [f16]> for HostSlice<'a> {
    fn from(s: &'a [f16]) -> Self {
        HostSlice::F16(s)
    }
}
impl<'a> From<&'a [u8]> for HostSlice<'a> {
    fn from(s: &'a [u8]) -> Self {
        HostSlice::U8(s)
    }
}
impl<'a> From<&'a [i32]> for HostSlice<'a> {
    fn from(s: &'a [i32]) -> Self {
        HostSlice::I32(s)
    }
}
impl<'a> From<&'a [i32]> for HostIds<'a> {
    fn from(s: &'a [i32]) -> Self {
        HostIds::I32(s)
    }
}
impl<'a> From<&'a [i64]> for HostIds<'a> {
    fn from(s: &'a [i64]) -> Self {
        HostIds::I64(s)
    }
}
impl<'a> From<&'a [i64]> for HostSlice<'a> {
    fn from(s: &'a [i64]) -> Self {
        HostSlice::I64(s)
    }
}

/// A caller-owned region of device memory holding `len` elements of `dtype`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSlice<'a> {
    ptr: u64,
    len: u64,
    dtype: DType,
    _borrow: PhantomData<&'a ()>,
}

impl DeviceSlice<'_> {
    /// Wraps device memory owned by the caller (a PyTorch/JAX/CuPy tensor, a cudarc slice, or
    /// an allocation of the PTX interpreter).
    ///
    /// # Safety
    /// - `ptr` is either 0 (rejected later with a typed error) or the address of at least
    ///   `len * dtype.size()` bytes of device memory on the device of the context it is used with;
    /// - that memory stays allocated, and is not written by anything else, while any operation
    ///   that received this view may still run on its stream (for outputs: not read or written
    ///   by anything else either);
    /// - elements are laid out contiguously, row-major, as documented by the operation.
    ///
    /// Size, alignment and dtype are checked by every operation; only the things above are not.
    pub unsafe fn from_raw_parts(ptr: u64, len: u64, dtype: DType) -> Self {
        DeviceSlice { ptr, len, dtype, _borrow: PhantomData }
    }
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// A caller-owned region of device memory that an operation writes (always f32 results).
#[derive(Debug)]
pub struct DeviceSliceMut<'a> {
    inner: DeviceSlice<'a>,
}

impl DeviceSliceMut<'_> {
    /// Wraps writable device memory owned by the caller.
    ///
    /// # Safety
    /// The contract of [`DeviceSlice::from_raw_parts`], and in addition nothing else reads or
    /// writes the memory until the operation's stream has passed the operation.
    pub unsafe fn from_raw_parts(ptr: u64, len: u64, dtype: DType) -> Self {
        DeviceSliceMut { inner: DeviceSlice::from_raw_parts(ptr, len, dtype) }
    }
    pub fn as_view(&self) -> DeviceSlice<'_> {
        self.inner
    }
    pub fn ptr(&self) -> u64 {
        self.inner.ptr
    }
    pub fn len(&self) -> u64 {
        self.inner.len
    }
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }
}

/// An operation input: host memory (CPU contexts) or device memory (GPU contexts).
#[derive(Debug, Clone, Copy)]
pub enum Tensor<'a> {
    Host(HostSlice<'a>),
    Device(DeviceSlice<'a>),
}

impl<'a> Tensor<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::Host(h) => h.dtype(),
            Tensor::Device(d) => d.dtype(),
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            Tensor::Host(h) => h.len() as u64,
            Tensor::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn space(&self) -> &'static str {
        match self {
            Tensor::Host(_) => "host",
            Tensor::Device(_) => "device",
        }
    }
    pub(crate) fn host(&self, what: &'static str) -> Result<HostSlice<'a>> {
        match self {
            Tensor::Host(h) => Ok(*h),
            Tensor::Device(_) => {
                Err(GhostError::WrongMemorySpace { what, expected: "host", got: "device" })
            }
        }
    }
    pub(crate) fn device(&self, what: &'static str) -> Result<DeviceSlice<'a>> {
        match self {
            Tensor::Device(d) => Ok(*d),
            Tensor::Host(_) => {
                Err(GhostError::WrongMemorySpace { what, expected: "device", got: "host" })
            }
        }
    }
}

impl<'a, T> From<&'a [T]> for Tensor<'a>
where
    HostSlice<'a>: From<&'a [T]>,
{
    fn from(s: &'a [T]) -> Self {
        Tensor::Host(HostSlice::from(s))
    }
}

impl<'a> From<DeviceSlice<'a>> for Tensor<'a> {
    fn from(d: DeviceSlice<'a>) -> Self {
        Tensor::Device(d)
    }
}

/// An operation output: host memory or device memory. Every operation writes f32 except
/// [`accumulate_values`](crate::Context::accumulate_values), whose float64 accumulator is a
/// [`TensorMut::HostF64`] or a device slice of dtype [`DType::F64`].
#[derive(Debug)]
pub enum TensorMut<'a> {
    Host(&'a mut [f32]),
    Device(DeviceSliceMut<'a>),
    /// Host float64 (the value accumulator).
    HostF64(&'a mut [f64]),
}

impl TensorMut<'_> {
    pub fn len(&self) -> u64 {
        match self {
            TensorMut::Host(h) => h.len() as u64,
            TensorMut::Device(d) => d.len(),
            TensorMut::HostF64(h) => h.len() as u64,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            TensorMut::Host(_) => DType::F32,
            TensorMut::Device(d) => d.dtype(),
            TensorMut::HostF64(_) => DType::F64,
        }
    }
    pub(crate) fn host(&mut self, what: &'static str) -> Result<&mut [f32]> {
        match self {
            TensorMut::Host(h) => Ok(h),
            TensorMut::Device(_) => {
                Err(GhostError::WrongMemorySpace { what, expected: "host", got: "device" })
            }
            TensorMut::HostF64(_) => Err(GhostError::UnsupportedDtype { what, dtype: DType::F64, op: "f32 output" }),
        }
    }
    pub(crate) fn host_f64(&mut self, what: &'static str) -> Result<&mut [f64]> {
        match self {
            TensorMut::HostF64(h) => Ok(h),
            TensorMut::Host(_) => Err(GhostError::DtypeMismatch { what, expected: DType::F64, got: DType::F32 }),
            TensorMut::Device(_) => {
                Err(GhostError::WrongMemorySpace { what, expected: "host", got: "device" })
            }
        }
    }
    pub(crate) fn device(&self, what: &'static str) -> Result<DeviceSlice<'_>> {
        match self {
            TensorMut::Device(d) => Ok(d.as_view()),
            TensorMut::Host(_) | TensorMut::HostF64(_) => {
                Err(GhostError::WrongMemorySpace { what, expected: "device", got: "host" })
            }
        }
    }
}

impl<'a> From<&'a mut [f32]> for TensorMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        TensorMut::Host(s)
    }
}
impl<'a> From<&'a mut [f64]> for TensorMut<'a> {
    fn from(s: &'a mut [f64]) -> Self {
        TensorMut::HostF64(s)
    }
}
impl<'a> From<DeviceSliceMut<'a>> for TensorMut<'a> {
    fn from(d: DeviceSliceMut<'a>) -> Self {
        TensorMut::Device(d)
    }
}
