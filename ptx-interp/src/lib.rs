//! `ptx-interp`: a small, strict PTX interpreter with memcheck, racecheck and performance counters.
//!
//! It executes the PTX that `nvcc -O3 -lineinfo -ptx -arch=compute_80` produces for ghostgrad's
//! kernels on a CPU, one CTA after another, with per-lane program counters (lanes of a warp at the
//! same, smallest PC execute together). Every opcode form is checked against an allowlist when the
//! module is parsed; anything else is an error naming the PTX line. See `README.md` for the model
//! and for what it does not prove.
//!
//! ```no_run
//! use ptx_interp::*;
//! let m = Module::parse(include_str!("../tests/fixtures/tiled_gemm.ptx")).unwrap();
//! let mut dev = Device::new();
//! let a = dev.alloc(64).unwrap();
//! # let _ = (m, a);
//! ```

// Per-lane loops index several lane arrays at once; `for l in 0..32` is the clearest form.
#![allow(clippy::needless_range_loop)]
// `is_multiple_of`/`is_none_or` are newer than the workspace's minimum Rust version.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

mod allow;
mod alu;
mod device;
mod error;
mod ir;
mod parse;
pub mod perf;
mod report;

use std::collections::{BTreeSet, HashMap};

pub use allow::supported_opcode_forms;
pub use device::Device;
pub use error::{Diag, EmuError, ParseError};
pub use ir::OpClass;
pub use perf::{GpuSpec, KernelResources, Occupancy, PerfModel, Pipe, A100_SXM, H100_SXM};
pub use report::{Counters, InstCount, LineCount, Report, RooflineModel};

/// A parsed and decoded PTX module (one or more `.entry` kernels).
#[derive(Clone, Debug)]
pub struct Module {
    pub(crate) kernels: Vec<ir::Kernel>,
    pub(crate) files: HashMap<u32, String>,
    pub(crate) forms: Vec<String>,
}

impl Module {
    /// Parses and decodes PTX text. Fails on the first construct outside the supported subset,
    /// naming its line.
    pub fn parse(ptx: &str) -> Result<Module, ParseError> {
        let p = parse::parse_module(ptx)?;
        Ok(Module {
            kernels: p.kernels,
            files: p.files,
            forms: p.forms,
        })
    }

    /// Names of the `.entry` kernels, in file order.
    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels.iter().map(|k| k.name.clone()).collect()
    }

    /// Every full opcode form used by the module, e.g. `fma.rn.f32`, `ld.global.nc.v4.f32`.
    pub fn opcode_forms(&self) -> BTreeSet<String> {
        parse::forms_set(&self.forms)
    }

    pub(crate) fn kernel(&self, name: &str) -> Option<&ir::Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Source file name of a `.file` index.
    pub(crate) fn file_name(&self, idx: u32) -> String {
        self.files
            .get(&idx)
            .cloned()
            .unwrap_or_else(|| format!("file{idx}"))
    }
}

/// Grid and block shape of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
}

/// One kernel argument; packed according to the kernel's `.param` declarations (sizes must match).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    U64(u64),
    U32(u32),
    I32(i32),
    F32(f32),
    F64(f64),
    I64(i64),
}

/// Checker and scheduler settings for one launch.
#[derive(Clone, Debug)]
pub struct Options {
    /// Permutes CTA order, warp pick order, scheduling quanta and atomic lane order.
    pub schedule_seed: u64,
    /// The `.nc` read-only contract. (Bounds and alignment are always checked: the interpreter
    /// cannot emulate an access that faults on hardware.)
    pub memcheck: bool,
    /// Reads of never-written global (from `alloc`), shared and local bytes are errors.
    pub initcheck: bool,
    /// Shared-memory hazards between barriers (same-warp lanes are not assumed ordered).
    pub racecheck: bool,
    /// Plain accesses to the same global byte, at least one a write, from different CTAs or from
    /// threads of one CTA without a barrier / warp sync between them.
    pub global_racecheck: bool,
    /// Watchdog over the whole launch.
    pub max_warp_steps: u64,
    /// Execute only this many CTAs (chosen by the seed) and scale counters by total/executed.
    /// Memory written by a sampled launch is not meaningful.
    pub sample_ctas: Option<u32>,
    /// Permit threads to exit while others of their CTA later pass a `bar.sync` (the CUDA
    /// early-return pattern). Off by default: `.aligned` barriers require every thread.
    pub allow_exit_before_barrier: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            schedule_seed: 0,
            memcheck: true,
            initcheck: true,
            racecheck: true,
            global_racecheck: true,
            max_warp_steps: 200_000_000,
            sample_ctas: None,
            allow_exit_before_barrier: false,
        }
    }
}
