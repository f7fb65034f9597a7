//! Checked caller memory: descriptor and out-parameter pointers, `RawBuf` (null, alignment,
//! byte-size checks) and `Buffers`, which collects every buffer of one call, rejects outputs
//! overlapping another buffer, and only then hands out views.

use super::*;

/// Reads a caller descriptor by value (so nothing later aliases the caller's struct).
///
/// # Safety
/// `p` is NULL or points at a readable `T` (alignment is checked here).
pub(super) unsafe fn read_desc<T: Copy>(p: *const T, what: &str) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    // SAFETY: non-null and aligned (checked above); readable by the caller's contract.
    Ok(unsafe { p.read() })
}

/// Writes an out-parameter.
///
/// # Safety
/// `p` is NULL or points at writable memory for one `T` (alignment is checked here).
pub(super) unsafe fn write_out<T>(p: *mut T, what: &str, value: T) -> FfiResult {
    check_out_param(p, what)?;
    // SAFETY: non-null and aligned (checked); writable by the caller's contract.
    unsafe { p.write(value) };
    Ok(())
}

pub(super) fn check_out_param<T>(p: *mut T, what: &str) -> FfiResult {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    Ok(())
}

/// Memory space the context's buffers live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    Host,
    Device,
}

/// A checked caller buffer: non-null, aligned, with a byte size that fits the address space.
/// No reference to the memory exists yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawBuf {
    pub(super) addr: usize,
    pub(super) len: u64,
    pub(super) dtype: DType,
}

/// A checked region of caller memory, kept to reject outputs overlapping other buffers.
pub(super) struct Region {
    pub(super) what: String,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) writable: bool,
}

/// Collects the buffers of one call: checks each, then checks that no output overlaps any
/// other buffer, before any Rust reference to caller memory is created.
pub(super) struct Buffers {
    pub(super) space: Space,
    pub(super) prefix: String,
    pub(super) regions: Vec<Region>,
}

impl Buffers {
    pub(super) fn new(ctx: &Context) -> Self {
        let space = match ctx.backend() {
            Backend::Gpu(_) => Space::Device,
            Backend::CpuReference | Backend::CpuFast => Space::Host,
        };
        Buffers { space, prefix: String::new(), regions: Vec::new() }
    }

    pub(super) fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub(super) fn check(&mut self, what: &str, ptr: usize, len: u64, dtype: DType, writable: bool) -> FfiResult<RawBuf> {
        let name = self.name(what);
        if ptr == 0 {
            let detail = if len == 0 { "" } else { " (with a nonzero length)" };
            return Err(Failure::new(GG_STATUS_NULL_POINTER, format!("`{name}` is a null pointer{detail}")));
        }
        let elem = dtype.size();
        if (ptr as u64) % elem != 0 {
            return Err(Failure::new(
                GG_STATUS_MISALIGNED,
                format!("`{name}` at address {ptr:#x} is not aligned to {elem} bytes (its {dtype} element size)"),
            ));
        }
        let bytes = len
            .checked_mul(elem)
            .filter(|&b| b <= isize::MAX as u64 && (ptr as u64).checked_add(b).is_some())
            .ok_or_else(|| {
                Failure::new(
                    GG_STATUS_SHAPE_OVERFLOW,
                    format!("shape overflow: `{name}` of {len} {dtype} elements at {ptr:#x} exceeds the address space"),
                )
            })?;
        self.regions.push(Region { what: name, start: ptr, end: ptr + bytes as usize, writable });
        Ok(RawBuf { addr: ptr, len, dtype })
    }

    pub(super) fn input(&mut self, what: &str, t: &gg_tensor) -> FfiResult<RawBuf> {
        let name = self.name(what);
        let dtype = dtype_from_code(&name, t.dtype)?;
        self.check(what, t.ptr as usize, t.len, dtype, false)
    }

    pub(super) fn optional_input(&mut self, what: &str, t: &gg_tensor) -> FfiResult<Option<RawBuf>> {
        if t.ptr.is_null() && t.len == 0 {
            return Ok(None);
        }
        self.input(what, t).map(Some)
    }

    pub(super) fn output(&mut self, what: &str, t: &gg_tensor_mut) -> FfiResult<RawBuf> {
        self.check(what, t.ptr as usize, t.len, DType::F32, true)
    }

    pub(super) fn optional_output(&mut self, what: &str, t: &gg_tensor_mut) -> FfiResult<Option<RawBuf>> {
        if t.ptr.is_null() && t.len == 0 {
            return Ok(None);
        }
        self.output(what, t).map(Some)
    }

    /// Checks a host array of `count` `T` that the call fills in (`choice_out`, `choices_out`,
    /// `groups_out`), before anything runs: NULL is `None` when `optional` (else an error),
    /// otherwise it must be aligned for `T` and fit the address space. On a host context it
    /// joins the overlap check (on a GPU context the other buffers are device memory).
    pub(super) fn out_array<T>(&mut self, what: &str, p: *mut T, count: usize, optional: bool) -> FfiResult<Option<OutArray<T>>> {
        let name = self.name(what);
        if p.is_null() {
            return if optional { Ok(None) } else { Err(Failure::null(&name)) };
        }
        let align = std::mem::align_of::<T>();
        if (p as usize) % align != 0 {
            return Err(Failure::new(
                GG_STATUS_MISALIGNED,
                format!("`{name}` at {p:p} is not aligned to {align} bytes (its element type)"),
            ));
        }
        let bytes = count
            .checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize && (p as usize).checked_add(b).is_some())
            .ok_or_else(|| Failure::new(GG_STATUS_SHAPE_OVERFLOW, format!("shape overflow: `{name}` of {count} entries exceeds the address space")))?;
        if self.space == Space::Host && bytes > 0 {
            self.regions.push(Region { what: name, start: p as usize, end: p as usize + bytes, writable: true });
        }
        Ok(Some(OutArray { ptr: p, count }))
    }

    /// Rejects an output overlapping any other buffer of the call (inputs may alias each other).
    pub(super) fn check_overlaps(&self) -> FfiResult {
        for (i, w) in self.regions.iter().enumerate().filter(|(_, r)| r.writable) {
            for (j, o) in self.regions.iter().enumerate() {
                if i != j && w.start < o.end && o.start < w.end {
                    return Err(Failure::invalid(
                        &w.what,
                        format!(
                            "output [{:#x}, {:#x}) overlaps `{}` [{:#x}, {:#x}); outputs must not alias other buffers",
                            w.start, w.end, o.what, o.start, o.end
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A checked caller array of `count` writable `T` ([`Buffers::out_array`]).
#[derive(Debug)]
pub(super) struct OutArray<T> {
    ptr: *mut T,
    count: usize,
}

impl<T> OutArray<T> {
    /// Writes the first `count` items (the rest of `items` is dropped, as a too small capacity
    /// asks); returns how many were written.
    ///
    /// # Safety
    /// The caller's contract for the array: `count` writable `T`, used by nobody else during
    /// the call (non-null, aligned and not overlapping another buffer: checked).
    pub(super) unsafe fn fill(&self, items: impl IntoIterator<Item = T>) -> usize {
        let mut written = 0;
        for item in items.into_iter().take(self.count) {
            // SAFETY: written < count entries of a checked array (this function's contract).
            unsafe { self.ptr.add(written).write(item) };
            written += 1;
        }
        written
    }
}

impl RawBuf {
    /// A view of the buffer in the context's memory space.
    ///
    /// # Safety
    /// The caller's contract for inputs: `len` elements of `dtype` readable at `addr` for `'a`
    /// and not written by anyone during `'a` (host), or the contract of
    /// [`DeviceSlice::from_raw_parts`] (device). `addr` is non-null and aligned (checked).
    pub(super) unsafe fn view<'a>(self, space: Space) -> Tensor<'a> {
        let len = self.len as usize; // fits: bytes <= isize::MAX was checked
        match space {
            Space::Device => {
                // SAFETY: the caller's contract on device memory (see above).
                Tensor::Device(unsafe { DeviceSlice::from_raw_parts(self.addr as u64, self.len, self.dtype) })
            }
            // SAFETY (all arms): addr is non-null, aligned to the element type, len * size bytes
            // fit the address space (checked in Buffers::check), the memory is readable and
            // unmodified for 'a (caller's contract); every bit pattern is a valid f32, bf16, f16,
            // u8, i32 or i64.
            Space::Host => Tensor::Host(match self.dtype {
                DType::F32 => HostSlice::F32(unsafe { std::slice::from_raw_parts(self.addr as *const f32, len) }),
                DType::BF16 => HostSlice::BF16(unsafe { std::slice::from_raw_parts(self.addr as *const bf16, len) }),
                DType::F16 => HostSlice::F16(unsafe { std::slice::from_raw_parts(self.addr as *const f16, len) }),
                DType::U8 => HostSlice::U8(unsafe { std::slice::from_raw_parts(self.addr as *const u8, len) }),
                DType::I32 => HostSlice::I32(unsafe { std::slice::from_raw_parts(self.addr as *const i32, len) }),
                DType::I64 => HostSlice::I64(unsafe { std::slice::from_raw_parts(self.addr as *const i64, len) }),
                DType::F64 => unreachable!("dtype_from_code never yields F64"),
            }),
        }
    }

    /// A writable view of an f32 output.
    ///
    /// # Safety
    /// The caller's contract for outputs: `len` f32 writable at `addr` for `'a`, not read or
    /// written by anyone else during `'a`; [`Buffers::check_overlaps`] passed for this call, so
    /// no other view of the call aliases it. `addr` is non-null and 4-byte aligned (checked).
    pub(super) unsafe fn view_mut<'a>(self, space: Space) -> TensorMut<'a> {
        debug_assert_eq!(self.dtype, DType::F32);
        match space {
            // SAFETY: the caller's contract on device memory (see above).
            Space::Device => {
                TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(self.addr as u64, self.len, DType::F32) })
            }
            // SAFETY: non-null, aligned, size checked; exclusive for 'a by the caller's contract
            // and the overlap check.
            Space::Host => {
                TensorMut::Host(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f32, self.len as usize) })
            }
        }
    }
}

impl Buffers {
    /// Buffers of a call without a context: host memory (the preconditioners).
    pub(super) fn host() -> Self {
        Buffers { space: Space::Host, prefix: String::new(), regions: Vec::new() }
    }

    pub(super) fn output_f64(&mut self, what: &str, t: &gg_tensor_f64_mut) -> FfiResult<RawBuf> {
        self.check(what, t.ptr as usize, t.len, DType::F64, true)
    }
}

impl RawBuf {
    /// A writable view of an f64 output.
    ///
    /// # Safety
    /// As [`RawBuf::view_mut`], for `len` f64 (8-byte alignment checked).
    pub(super) unsafe fn view_mut_f64<'a>(self, space: Space) -> TensorMut<'a> {
        debug_assert_eq!(self.dtype, DType::F64);
        match space {
            // SAFETY: the caller's contract on device memory.
            Space::Device => {
                TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(self.addr as u64, self.len, DType::F64) })
            }
            // SAFETY: non-null, 8-byte aligned, size checked; exclusive for 'a by the caller's
            // contract and the overlap check; every bit pattern is a valid f64.
            Space::Host => {
                TensorMut::HostF64(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f64, self.len as usize) })
            }
        }
    }
}

/// Reads `n` descriptors from a caller array (null, alignment and `n > 0` checked).
///
/// # Safety
/// `p` is NULL or points at `n` readable `T`.
pub(super) unsafe fn read_array<T: Copy>(p: *const T, n: usize, what: &'static str, count: &'static str) -> FfiResult<Vec<T>> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    if n == 0 {
        return Err(GhostError::ZeroSize { what: count }.into());
    }
    // SAFETY: non-null, aligned, n readable elements (caller's contract); copied out at once.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}
