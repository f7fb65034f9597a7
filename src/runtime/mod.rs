//! One launch path for every GPU backend.
//!
//! Each operation turns validated shapes into [`LaunchPlan`]s (grid, block, shared memory and
//! the packed argument list). A plan is executed by a [`KernelRuntime`]: the CUDA driver
//! ([`cuda::CudaRuntime`]) or the PTX interpreter ([`interp::InterpRuntime`], feature `interp`).
//! Tests run the production plans on the interpreter; nothing is re-implemented for them.

pub mod cuda;
#[cfg(feature = "interp")]
pub mod interp;
#[cfg(feature = "interp")]
pub mod mirror;

use crate::error::Result;

/// One kernel argument, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// A device address (0 for an absent optional pointer).
    Ptr(u64),
    U32(u32),
    U64(u64),
    F32(f32),
}

/// Everything needed to launch one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// Entry point, e.g. `ghost_dot_gram_bf16`.
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes (our kernels use static shared memory only: 0).
    pub shared_bytes: u32,
    pub args: Vec<KernelArg>,
}

impl LaunchPlan {
    /// Total number of CTAs.
    pub fn ctas(&self) -> u64 {
        self.grid.iter().map(|&g| g as u64).product()
    }
}

/// Hardware limits checked before a launch, so a bad shape is a typed error, not a driver failure.
pub const MAX_GRID_X: u64 = (1 << 31) - 1;
pub const MAX_GRID_YZ: u64 = 65535;

/// Executes launch plans on one stream of one device.
pub trait KernelRuntime: Send + Sync {
    /// Human-readable description (device name, stream).
    fn describe(&self) -> String;
    /// Compute capability of the device as `10·major + minor` (e.g. 80, 90): launch plans pick
    /// tensor-core kernels on 80 and above. The PTX interpreter reports the architecture of the
    /// PTX it executes (80) unless a test sets another.
    fn sm_version(&self) -> u32;
    /// Enqueues the kernel on the runtime's stream. Never synchronizes.
    fn launch(&self, plan: &LaunchPlan) -> Result<()>;
    /// Device scratch of at least `bytes`, from a per-stream cache that grows when needed (no
    /// allocation per call once warm). Valid for launches enqueued on this runtime's stream
    /// until the next call to `workspace`.
    fn workspace(&self, bytes: u64) -> Result<u64>;
    /// Checks that a caller pointer can be used by this runtime (right device, known memory).
    fn check_pointer(&self, what: &'static str, ptr: u64, bytes: u64) -> Result<()>;
    /// Held by an operation from [`workspace`](Self::workspace) until its last launch is
    /// enqueued, so operations from several threads sharing one runtime never interleave their
    /// use of the workspace on the stream.
    fn op_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>>;
}
