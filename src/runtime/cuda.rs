//! The CUDA driver backend: loads the embedded fatbins with the driver (through cudarc's
//! dynamically loaded bindings) and launches plans on the caller's stream.
//!
//! This is the only module that calls the driver, and the only place with `unsafe` launches.
//! A machine without libcuda gets [`GhostError::CudaDriverUnavailable`] before any cudarc call
//! that could panic; a build without nvcc gets [`GhostError::KernelsNotBuilt`].

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};

use super::{KernelArg, KernelRuntime, LaunchPlan, MAX_GRID_X, MAX_GRID_YZ};
use crate::error::{GhostError, Result};
use crate::kernels;

fn driver_err(call: &'static str) -> impl Fn(result::DriverError) -> GhostError {
    // Only the CUresult's name: formatting it through the driver is avoided on purpose.
    move |e| GhostError::Cuda { call, message: format!("{:?}", e.0) }
}

/// Returns an error unless the kernels were built and a CUDA driver library can be loaded.
pub fn driver_available() -> Result<()> {
    if !kernels::KERNELS_BUILT {
        return Err(GhostError::KernelsNotBuilt);
    }
    // SAFETY: only tries to dlopen the driver library; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(GhostError::CudaDriverUnavailable(
            "libcuda (the NVIDIA driver library) could not be loaded on this machine".into(),
        ));
    }
    Ok(())
}

struct Workspace {
    ptr: sys::CUdeviceptr,
    bytes: u64,
}

/// Launches ghostgrad kernels on one stream of one CUDA device.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    owns_stream: bool,
    functions: HashMap<String, sys::CUfunction>,
    modules: Vec<sys::CUmodule>,
    workspace: Mutex<Option<Workspace>>,
    op: Mutex<()>,
    /// 10·major + minor, read once at construction.
    sm_version: u32,
}

// SAFETY: CUDA handles may be used from any thread once the context is bound, which every
// method does first; the workspace is behind a mutex.
unsafe impl Send for CudaRuntime {}
unsafe impl Sync for CudaRuntime {}

impl CudaRuntime {
    /// A runtime on device `ordinal` with a new non-blocking stream owned by ghostgrad.
    pub fn new(ordinal: usize) -> Result<Self> {
        driver_available()?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err("cuCtx (primary context)"))?;
        ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        // The stream is destroyed in Drop.
        let stream =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(driver_err("cuStreamCreate"))?;
        Self::with_stream(ctx, stream, true)
    }

    /// A runtime that launches on a stream owned by the caller (e.g. PyTorch's
    /// `torch.cuda.current_stream().cuda_stream`). The stream is never synchronized or destroyed.
    ///
    /// # Safety
    /// `stream` must be a valid `CUstream` (or null for the legacy default stream) that stays
    /// alive as long as this runtime is used.
    pub unsafe fn on_stream(ordinal: usize, stream: sys::CUstream) -> Result<Self> {
        driver_available()?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err("cuCtx (primary context)"))?;
        ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        if !stream.is_null() {
            let mut sctx: sys::CUcontext = std::ptr::null_mut();
            sys::cuStreamGetCtx(stream, &mut sctx).result().map_err(driver_err("cuStreamGetCtx"))?;
            if sctx != ctx.cu_ctx() {
                return Err(GhostError::StreamMismatch(format!(
                    "the stream belongs to another CUDA context than device {ordinal}'s primary context"
                )));
            }
        }
        Self::with_stream(ctx, stream, false)
    }

    fn with_stream(ctx: Arc<CudaContext>, stream: sys::CUstream, owns_stream: bool) -> Result<Self> {
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for file in kernels::KERNEL_FILES {
            // cuModuleLoadData reads the image until its own size field: copy to an aligned buffer.
            let mut image: Vec<u64> = vec![0; file.fatbin.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut image)[..file.fatbin.len()].copy_from_slice(file.fatbin);
            // SAFETY: `image` is a well-formed fatbin produced by nvcc at build time.
            let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                .map_err(driver_err("cuModuleLoadData"))?;
            modules.push(module);
            for name in kernels::ptx_entry_names(file.ptx) {
                let cname = CString::new(name.clone()).map_err(|e| GhostError::Internal(e.to_string()))?;
                // SAFETY: `module` was just loaded and is alive until Drop.
                let f = unsafe { result::module::get_function(module, cname) }
                    .map_err(driver_err("cuModuleGetFunction"))?;
                functions.insert(name, f);
            }
        }
        let (major, minor) = ctx.compute_capability().map_err(driver_err("cuDeviceGetAttribute (compute capability)"))?;
        let sm_version = (10 * major + minor).max(0) as u32;
        Ok(CudaRuntime {
            ctx,
            stream,
            owns_stream,
            functions,
            modules,
            workspace: Mutex::new(None),
            op: Mutex::new(()),
            sm_version,
        })
    }

    /// The raw stream this runtime launches on.
    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }
}

impl KernelRuntime for CudaRuntime {
    fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown device".into());
        format!("CUDA device {} ({name}), stream {:p}", self.ctx.ordinal(), self.stream)
    }

    fn sm_version(&self) -> u32 {
        self.sm_version
    }

    fn launch(&self, plan: &LaunchPlan) -> Result<()> {
        let f = *self
            .functions
            .get(&plan.kernel)
            .ok_or_else(|| GhostError::MissingKernel { name: plan.kernel.clone() })?;
        if plan.grid[0] as u64 > MAX_GRID_X {
            return Err(GhostError::LaunchLimit { what: "grid.x", value: plan.grid[0] as u64, limit: MAX_GRID_X });
        }
        for (what, g) in [("grid.y", plan.grid[1]), ("grid.z", plan.grid[2])] {
            if g as u64 > MAX_GRID_YZ {
                return Err(GhostError::LaunchLimit { what, value: g as u64, limit: MAX_GRID_YZ });
            }
        }
        if plan.ctas() == 0 {
            return Ok(());
        }
        // Argument storage: each value lives in its own 8-byte slot, the driver gets pointers.
        let mut slots: Vec<u64> = plan
            .args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) | KernelArg::U64(p) => p,
                KernelArg::U32(v) => v as u64,
                KernelArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        // SAFETY: `f` comes from a loaded module; the argument list matches the kernel's
        // declaration (built by the operation's plan builder, checked by the interpreter tests);
        // 32-bit values sit in the low bytes of little-endian 8-byte slots; device pointers were
        // validated by the operation and their lifetime is the caller's contract.
        unsafe {
            result::launch_kernel(
                f,
                (plan.grid[0], plan.grid[1], plan.grid[2]),
                (plan.block[0], plan.block[1], plan.block[2]),
                plan.shared_bytes,
                self.stream,
                &mut params,
            )
        }
        .map_err(driver_err("cuLaunchKernel"))
    }

    fn workspace(&self, bytes: u64) -> Result<u64> {
        let mut ws = self.workspace.lock().map_err(|_| GhostError::Internal("workspace lock poisoned".into()))?;
        if let Some(w) = ws.as_ref() {
            if w.bytes >= bytes {
                return Ok(w.ptr);
            }
        }
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        if let Some(old) = ws.take() {
            // SAFETY: stream-ordered free after every launch already enqueued that uses it.
            unsafe { result::free_async(old.ptr, self.stream) }.map_err(driver_err("cuMemFreeAsync"))?;
        }
        let grow = bytes.max(1 << 20).next_power_of_two();
        // SAFETY: stream-ordered allocation; only used by launches on the same stream.
        let ptr = unsafe { result::malloc_async(self.stream, grow as usize) }.map_err(driver_err("cuMemAllocAsync"))?;
        *ws = Some(Workspace { ptr, bytes: grow });
        Ok(ptr)
    }

    fn op_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.op.lock().map_err(|_| GhostError::Internal("operation lock poisoned".into()))
    }

    fn check_pointer(&self, what: &'static str, ptr: u64, _bytes: u64) -> Result<()> {
        let mut ordinal: i32 = -1;
        // SAFETY: cuPointerGetAttribute only inspects the pointer value.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                &mut ordinal as *mut i32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(GhostError::InvalidArgument {
                what,
                reason: format!("{ptr:#x} is not device memory known to the CUDA driver ({r:?})"),
            });
        }
        if ordinal as usize != self.ctx.ordinal() {
            return Err(GhostError::InvalidArgument {
                what,
                reason: format!("{ptr:#x} is on device {ordinal}, this context is device {}", self.ctx.ordinal()),
            });
        }
        Ok(())
    }
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: handles were created by this runtime; errors at teardown are ignored.
        unsafe {
            if let Ok(mut ws) = self.workspace.lock() {
                if let Some(w) = ws.take() {
                    let _ = result::free_async(w.ptr, self.stream);
                }
            }
            if self.owns_stream {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::stream::destroy(self.stream);
            }
            for m in self.modules.drain(..) {
                let _ = result::module::unload(m);
            }
        }
    }
}
