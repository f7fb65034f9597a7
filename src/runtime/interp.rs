//! The PTX interpreter backend: executes the embedded `-O3` PTX of every kernel on the CPU
//! through the same [`LaunchPlan`]s that drive a real GPU, with memcheck, racecheck and
//! performance counters (crate `ptx-interp`). Used by the tests and benches of machines without
//! a GPU. It runs the compute_80 PTX of either embedded image set: the CUDA 13 set (nvcc) by
//! default, the CUDA 12 set (NVRTC 12.9) with [`InterpRuntime::with_images`] or the environment
//! variable `GHOSTGRAD_INTERP_IMAGES=cuda12`, so both compilers' output meets the same tests. Device memory lives in the interpreter's own address space: allocate inputs and
//! outputs with [`InterpRuntime::upload`] / [`InterpRuntime::alloc_f32`].

use std::collections::HashMap;
use std::sync::Mutex;

use ptx_interp::{Device, LaunchConfig, Module, Options, ParamValue, Report};

use super::mirror::{CudaMirror, MirrorMode};
use super::{KernelArg, KernelRuntime, LaunchPlan, MAX_GRID_X, MAX_GRID_YZ};
use crate::buffer::{DeviceSlice, DeviceSliceMut};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::kernels::{self, ImageSet};

/// The environment variable that selects the image set of [`InterpRuntime::new`].
pub const INTERP_IMAGES_ENV: &str = "GHOSTGRAD_INTERP_IMAGES";

/// One executed launch and the interpreter's report on it.
#[derive(Debug, Clone)]
pub struct LaunchRecord {
    pub plan: LaunchPlan,
    pub report: Report,
    /// GPU time of the same launch measured with CUDA events (median of 5), only under
    /// `GHOSTGRAD_GPU_TIMING=1` on a machine with a GPU (see [`super::mirror`]).
    pub gpu_time_s: Option<f64>,
}

struct State {
    device: Device,
    modules: Vec<Module>,
    kernel_module: HashMap<String, usize>,
    options: Options,
    workspace: Option<(u64, u64)>,
    allocations: HashMap<u64, u64>,
    records: Vec<LaunchRecord>,
    /// the device check's GPU copy of every launch (`GHOSTGRAD_TEST_CUDA` / `GHOSTGRAD_GPU_TIMING`)
    mirror: Option<CudaMirror>,
}

/// A [`KernelRuntime`] that runs kernels in the PTX interpreter.
pub struct InterpRuntime {
    images: ImageSet,
    state: Mutex<State>,
    op: Mutex<()>,
    sm_version: std::sync::atomic::AtomicU32,
}

fn interp_err(e: impl std::fmt::Display) -> GhostError {
    GhostError::Interpreter(e.to_string())
}

/// An allocation in the interpreter's device memory (freed when the runtime is dropped, or
/// with [`InterpRuntime::free`]).
#[derive(Debug, Clone, Copy)]
pub struct InterpBuffer {
    pub ptr: u64,
    pub len: u64,
    pub dtype: DType,
}

impl InterpBuffer {
    /// A read-only view for an operation.
    pub fn view(&self) -> DeviceSlice<'_> {
        // SAFETY: the allocation has `len` elements of `dtype` and lives as long as the runtime.
        unsafe { DeviceSlice::from_raw_parts(self.ptr, self.len, self.dtype) }
    }
    /// A writable view for an operation's output.
    pub fn view_mut(&mut self) -> DeviceSliceMut<'_> {
        // SAFETY: as above; `&mut self` makes the view exclusive.
        unsafe { DeviceSliceMut::from_raw_parts(self.ptr, self.len, self.dtype) }
    }
}

impl InterpRuntime {
    /// Parses every embedded kernel file of the image set named by `GHOSTGRAD_INTERP_IMAGES`
    /// (`cuda13`, the default, or `cuda12`). Fails with [`GhostError::KernelsNotBuilt`] when that
    /// set was not built, and with a CUDA error when `GHOSTGRAD_TEST_CUDA=1` or
    /// `GHOSTGRAD_GPU_TIMING=1` asks for a GPU mirror of every launch ([`super::mirror`]) and none
    /// can be opened.
    pub fn new() -> Result<Self> {
        let images = match std::env::var(INTERP_IMAGES_ENV) {
            Err(_) => ImageSet::Cuda13,
            Ok(v) => match v.as_str() {
                "" | "cuda13" => ImageSet::Cuda13,
                "cuda12" => ImageSet::Cuda12,
                _ => {
                    return Err(GhostError::InvalidArgument {
                        what: INTERP_IMAGES_ENV,
                        reason: format!("`{v}` is not an image set (cuda13 or cuda12)"),
                    })
                }
            },
        };
        Self::with_images(images)
    }

    /// Parses the compute_80 PTX of every kernel file of `images`. Fails with
    /// [`GhostError::KernelsNotBuilt`] when that set was not built.
    pub fn with_images(images: ImageSet) -> Result<Self> {
        if !images.built() {
            return Err(GhostError::KernelsNotBuilt);
        }
        let mut modules = Vec::new();
        let mut kernel_module = HashMap::new();
        for (name, ptx) in images.interp_ptx() {
            let m = Module::parse(ptx).map_err(|e| interp_err(format!("{name}.ptx ({images}): {e}")))?;
            for k in m.kernel_names() {
                kernel_module.insert(k, modules.len());
            }
            modules.push(m);
        }
        Ok(InterpRuntime {
            images,
            state: Mutex::new(State {
                device: Device::new(),
                modules,
                kernel_module,
                options: Options::default(),
                workspace: None,
                allocations: HashMap::new(),
                records: Vec::new(),
                mirror: MirrorMode::from_env().map(CudaMirror::new).transpose()?,
            }),
            op: Mutex::new(()),
            sm_version: std::sync::atomic::AtomicU32::new(kernels::INTERP_PTX_ARCH),
        })
    }

    /// The image set whose PTX this runtime executes.
    pub fn images(&self) -> ImageSet {
        self.images
    }

    /// The compute capability the launch plans see (default 80, the interpreter PTX's
    /// architecture). Setting 75 makes them choose the kernels of an sm_75 device (no tensor
    /// cores), which the interpreter then executes in their compute_80 PTX.
    pub fn set_sm_version(&self, sm: u32) {
        self.sm_version.store(sm, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| GhostError::Internal("interpreter lock poisoned".into()))
    }

    /// Options (schedule seed, sanitizers, sampling) for the following launches.
    pub fn set_options(&self, options: Options) -> Result<()> {
        self.lock()?.options = options;
        Ok(())
    }

    pub fn options(&self) -> Result<Options> {
        Ok(self.lock()?.options.clone())
    }

    fn alloc_bytes(st: &mut State, bytes: u64) -> Result<u64> {
        let p = st.device.alloc(bytes.max(1)).map_err(interp_err)?;
        st.allocations.insert(p, bytes);
        Ok(p)
    }

    /// Copies a host slice into new device memory.
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T], dtype: DType) -> Result<InterpBuffer> {
        if std::mem::size_of::<T>() as u64 != dtype.size() {
            return Err(GhostError::Internal(format!("upload: element size does not match {dtype}")));
        }
        let mut st = self.lock()?;
        let bytes = bytemuck::cast_slice::<T, u8>(data);
        let ptr = Self::alloc_bytes(&mut st, bytes.len() as u64)?;
        st.device.write(ptr, bytes).map_err(interp_err)?;
        Ok(InterpBuffer { ptr, len: data.len() as u64, dtype })
    }

    /// New f32 device memory filled with `fill` (tests poison outputs with NaN).
    pub fn alloc_f32(&self, len: u64, fill: f32) -> Result<InterpBuffer> {
        let v = vec![fill; len as usize];
        self.upload(&v, DType::F32)
    }

    /// Reads `len` f32 values back.
    pub fn read_f32(&self, buf: &InterpBuffer) -> Result<Vec<f32>> {
        let st = self.lock()?;
        let bytes = st.device.read(buf.ptr, buf.len * 4).map_err(interp_err)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Reads `len` f64 values back (the value accumulator).
    pub fn read_f64(&self, buf: &InterpBuffer) -> Result<Vec<f64>> {
        let st = self.lock()?;
        let bytes = st.device.read(buf.ptr, buf.len * 8).map_err(interp_err)?;
        Ok(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    /// Overwrites a buffer's contents.
    pub fn write<T: bytemuck::Pod>(&self, buf: &InterpBuffer, data: &[T]) -> Result<()> {
        let st = &mut *self.lock()?;
        st.device.write(buf.ptr, bytemuck::cast_slice(data)).map_err(interp_err)
    }

    pub fn free(&self, buf: InterpBuffer) -> Result<()> {
        let mut st = self.lock()?;
        st.allocations.remove(&buf.ptr);
        st.device.free(buf.ptr).map_err(interp_err)
    }

    /// Size of the scratch workspace allocated so far (0 before any operation needed one).
    pub fn workspace_bytes(&self) -> Result<u64> {
        Ok(self.lock()?.workspace.map_or(0, |(_, b)| b))
    }

    /// Every launch executed so far, with its report; clears the list.
    pub fn take_records(&self) -> Result<Vec<LaunchRecord>> {
        Ok(std::mem::take(&mut self.lock()?.records))
    }
}

impl KernelRuntime for InterpRuntime {
    fn describe(&self) -> String {
        format!(
            "PTX interpreter (ptx-interp) on the CPU, kernel images: {} compute_{} PTX (interpreted)",
            self.images,
            kernels::INTERP_PTX_ARCH
        )
    }

    fn sm_version(&self) -> u32 {
        self.sm_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn launch(&self, plan: &LaunchPlan) -> Result<()> {
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
        let st = &mut *self.lock()?;
        let idx = *st
            .kernel_module
            .get(&plan.kernel)
            .ok_or_else(|| GhostError::MissingKernel { name: plan.kernel.clone() })?;
        let params: Vec<ParamValue> = plan
            .args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) | KernelArg::U64(p) => ParamValue::U64(p),
                KernelArg::U32(v) => ParamValue::U32(v),
                KernelArg::F32(v) => ParamValue::F32(v),
            })
            .collect();
        let cfg = LaunchConfig { grid: plan.grid, block: plan.block, dynamic_shared_bytes: plan.shared_bytes };
        let mode = st.mirror.as_ref().map(|m| m.mode);
        let mut gpu_time_s = None;
        if let Some(m) = st.mirror.as_mut() {
            m.upload(&snapshot(&st.device, &st.allocations, |b, n| mode == Some(MirrorMode::Compare) || !m.holds(b, n))?)?;
            gpu_time_s = m.launch(plan)?;
        }
        let report = st
            .device
            .launch(&st.modules[idx], &plan.kernel, &cfg, &params, &st.options)
            .map_err(|e| interp_err(format!("{}: {e}", plan.kernel)))?;
        if let (Some(m), Some(MirrorMode::Compare), None) = (st.mirror.as_ref(), mode, st.options.sample_ctas) {
            let tensor_cores = report.counters.by_class.get(&ptx_interp::OpClass::TensorCore).is_some_and(|c| c.warp > 0);
            m.compare(&plan.kernel, tensor_cores, &snapshot(&st.device, &st.allocations, |_, _| true)?)?;
        }
        st.records.push(LaunchRecord { plan: plan.clone(), report, gpu_time_s });
        Ok(())
    }

    fn workspace(&self, bytes: u64) -> Result<u64> {
        let st = &mut *self.lock()?;
        if let Some((p, b)) = st.workspace {
            if b >= bytes {
                return Ok(p);
            }
            st.allocations.remove(&p);
            st.device.free(p).map_err(interp_err)?;
        }
        let p = Self::alloc_bytes(st, bytes)?;
        st.workspace = Some((p, bytes));
        Ok(p)
    }

    fn op_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.op.lock().map_err(|_| GhostError::Internal("operation lock poisoned".into()))
    }

    fn check_pointer(&self, what: &'static str, ptr: u64, bytes: u64) -> Result<()> {
        let st = self.lock()?;
        let ok = st.allocations.iter().any(|(&base, &len)| ptr >= base && ptr + bytes <= base + len);
        if ok {
            Ok(())
        } else {
            Err(GhostError::InvalidArgument {
                what,
                reason: format!("{ptr:#x}..+{bytes} is not inside an allocation of this interpreter device"),
            })
        }
    }
}

/// `(base, contents)` of every allocation that `want(base, bytes)` selects (the GPU mirror's view).
fn snapshot(device: &Device, allocations: &HashMap<u64, u64>, want: impl Fn(u64, u64) -> bool) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut v = Vec::new();
    for (&base, &bytes) in allocations {
        if want(base, bytes) {
            v.push((base, device.read(base, bytes).map_err(interp_err)?));
        }
    }
    Ok(v)
}
