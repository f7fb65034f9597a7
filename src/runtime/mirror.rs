//! The device check's bridge from the PTX interpreter to a real GPU: with `GHOSTGRAD_TEST_CUDA=1`
//! every launch an [`InterpRuntime`](super::interp::InterpRuntime) executes is also executed on
//! CUDA device 0 from the interpreter's exact memory state, and the two results are compared
//! buffer by buffer; with `GHOSTGRAD_GPU_TIMING=1` each launch is timed on the GPU with CUDA
//! events instead (inputs uploaded once; used by the modeled benchmark at full shapes, where
//! the interpreter executes only sampled CTAs). `scripts/gpu-check.sh` sets the switches; the
//! test bodies are unchanged, so every interpreter test becomes a GPU test.
//!
//! * Compare: before the launch, every interpreter allocation (inputs, outputs, workspace) is
//!   copied to a GPU buffer of the same size; pointer arguments are translated by allocation and
//!   offset (kernels read no pointers from memory). After both ran, every allocation is compared.
//!   Kernels without tensor-core instructions must match **bitwise** (they use explicit `fma.rn`
//!   and no float atomics); a kernel with `mma`/`wmma` instructions must match as f32 values
//!   within `2^-12 · max|interpreter value|` of the buffer (the tensor cores' accumulation order
//!   and truncation differ from the interpreter's exact products + one rounding: MATH §8's
//!   γ_K·Σ|products| with K ≤ 4096, Σ|products| taken as the buffer's largest magnitude, which
//!   holds for the tests' non-cancelling random data only). A mismatch fails the launch with
//!   [`GhostError::Interpreter`], naming the kernel, the buffer and the first differing element.
//! * Time: 2 warm-up launches, then the median of 5 event-timed launches, recorded in the
//!   launch's [`LaunchRecord`](super::interp::LaunchRecord).
//!
//! This module only runs where a GPU is present; CI (no GPU) never constructs it, so nothing
//! here has executed until `scripts/gpu-check.sh` runs on a GPU machine.

use std::collections::HashMap;

use cudarc::driver::{result, sys};

use super::cuda::CudaRuntime;
use super::{KernelArg, KernelRuntime, LaunchPlan};
use crate::error::{GhostError, Result};

/// What the mirror does with each launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorMode {
    Compare,
    Time,
}

impl MirrorMode {
    /// The mode selected by the environment (`GHOSTGRAD_TEST_CUDA=1`, `GHOSTGRAD_GPU_TIMING=1`).
    pub fn from_env() -> Option<MirrorMode> {
        let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
        if on("GHOSTGRAD_GPU_TIMING") {
            Some(MirrorMode::Time)
        } else if on("GHOSTGRAD_TEST_CUDA") {
            Some(MirrorMode::Compare)
        } else {
            None
        }
    }
}

fn cuda_err(call: &'static str) -> impl Fn(result::DriverError) -> GhostError {
    move |e| GhostError::Cuda { call, message: format!("{:?}", e.0) }
}

/// GPU copies of the interpreter's allocations and the runtime that launches on them.
pub struct CudaMirror {
    pub mode: MirrorMode,
    rt: CudaRuntime,
    /// interpreter base -> (GPU pointer, bytes)
    buffers: HashMap<u64, (u64, u64)>,
}

impl CudaMirror {
    pub fn new(mode: MirrorMode) -> Result<Self> {
        Ok(CudaMirror { mode, rt: CudaRuntime::new(0)?, buffers: HashMap::new() })
    }

    /// Whether the GPU already holds a copy of the allocation `(base, bytes)`.
    pub fn holds(&self, base: u64, bytes: u64) -> bool {
        self.buffers.get(&base).is_some_and(|b| b.1 == bytes)
    }

    /// Makes the GPU hold every allocation `(base, contents)`: all of them in compare mode, the
    /// ones not seen before in time mode.
    pub fn upload(&mut self, allocs: &[(u64, Vec<u8>)]) -> Result<()> {
        for (base, data) in allocs {
            let bytes = data.len() as u64;
            let known = self.buffers.get(base).copied();
            let ptr = match known {
                Some((p, b)) if b == bytes => {
                    if self.mode == MirrorMode::Time {
                        continue;
                    }
                    p
                }
                other => {
                    if let Some((p, _)) = other {
                        // SAFETY: a buffer this mirror allocated; no launch is in flight (synchronized).
                        unsafe { result::free_sync(p) }.map_err(cuda_err("cuMemFree"))?;
                    }
                    // SAFETY: plain device allocation of at least one byte.
                    let p = unsafe { result::malloc_sync(data.len().max(1)) }.map_err(cuda_err("cuMemAlloc"))?;
                    self.buffers.insert(*base, (p, bytes));
                    p
                }
            };
            // SAFETY: `ptr` has `bytes` bytes; synchronous copy.
            unsafe { result::memcpy_htod_sync(ptr, data) }.map_err(cuda_err("cuMemcpyHtoD"))?;
        }
        Ok(())
    }

    /// The plan with every pointer argument moved to the GPU copy of its allocation.
    fn translate(&self, plan: &LaunchPlan) -> Result<LaunchPlan> {
        let mut p = plan.clone();
        for a in p.args.iter_mut() {
            if let KernelArg::Ptr(v) = a {
                if *v == 0 {
                    continue;
                }
                let hit = self.buffers.iter().find(|(base, (_, bytes))| *v >= **base && *v <= **base + *bytes);
                let Some((base, (gpu, _))) = hit else {
                    return Err(GhostError::Internal(format!("{}: pointer {v:#x} is in no interpreter allocation", plan.kernel)));
                };
                *v = gpu + (*v - base);
            }
        }
        Ok(p)
    }

    /// Launches `plan` on the GPU; in time mode returns the median of 5 event-timed launches.
    pub fn launch(&mut self, plan: &LaunchPlan) -> Result<Option<f64>> {
        let gp = self.translate(plan)?;
        let stream = self.rt.stream();
        if self.mode == MirrorMode::Compare {
            self.rt.launch(&gp)?;
            // SAFETY: the mirror's own stream.
            unsafe { result::stream::synchronize(stream) }.map_err(cuda_err("cuStreamSynchronize"))?;
            return Ok(None);
        }
        let (start, end) = (
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(cuda_err("cuEventCreate"))?,
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(cuda_err("cuEventCreate"))?,
        );
        let mut times = Vec::new();
        for rep in 0..7 {
            // SAFETY: events and stream are alive; elapsed is read after the end event completed.
            unsafe {
                result::event::record(start, stream).map_err(cuda_err("cuEventRecord"))?;
                self.rt.launch(&gp)?;
                result::event::record(end, stream).map_err(cuda_err("cuEventRecord"))?;
                result::event::synchronize(end).map_err(cuda_err("cuEventSynchronize"))?;
                if rep >= 2 {
                    times.push(result::event::elapsed(start, end).map_err(cuda_err("cuEventElapsedTime"))? as f64 * 1e-3);
                }
            }
        }
        // SAFETY: both events were created above and are no longer used.
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        times.sort_by(f64::total_cmp);
        Ok(Some(times[times.len() / 2]))
    }

    /// Compares the GPU copy of every allocation with the interpreter's bytes after the launch.
    pub fn compare(&self, kernel: &str, tensor_cores: bool, allocs: &[(u64, Vec<u8>)]) -> Result<()> {
        for (base, want) in allocs {
            let Some(&(gpu, bytes)) = self.buffers.get(base) else { continue };
            if bytes != want.len() as u64 {
                continue;
            }
            let mut got = vec![0u8; want.len()];
            // SAFETY: `gpu` holds `bytes` bytes; the launch was synchronized.
            unsafe { result::memcpy_dtoh_sync(&mut got, gpu) }.map_err(cuda_err("cuMemcpyDtoH"))?;
            if &got == want {
                continue;
            }
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            let fail = |what: String| {
                Err(GhostError::Interpreter(format!(
                    "device check: `{kernel}` on the GPU differs from the interpreter in the buffer at {base:#x} ({bytes} B): {what}"
                )))
            };
            if !tensor_cores || want.len() % 4 != 0 {
                return fail(format!("byte {first} is {:#04x} on the GPU, {:#04x} interpreted (bitwise match required)", got[first], want[first]));
            }
            let f = |v: &[u8]| -> Vec<f32> { v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() };
            let (g, w) = (f(&got), f(want));
            let scale = w.iter().filter(|x| x.is_finite()).fold(0f32, |m, x| m.max(x.abs())) as f64;
            let tol = scale * 2f64.powi(-12);
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                let same_nan = a.is_nan() && b.is_nan();
                let diff = (*a as f64 - *b as f64).abs();
                if !same_nan && (diff.is_nan() || diff > tol) {
                    return fail(format!("f32 element {i} is {a} on the GPU, {b} interpreted (tolerance {tol:e})"));
                }
            }
        }
        Ok(())
    }
}

impl Drop for CudaMirror {
    fn drop(&mut self) {
        for (p, _) in self.buffers.values() {
            // SAFETY: buffers this mirror allocated; errors at teardown are ignored.
            let _ = unsafe { result::free_sync(*p) };
        }
    }
}
