//! Error types: parse errors carry the PTX line; runtime errors carry a full [`Diag`].

use std::fmt;

/// A PTX text that could not be parsed or decoded (including opcodes outside the allowlist).
#[derive(Debug, Clone, thiserror::Error)]
#[error("PTX line {line}: {reason}\n    | {text}")]
pub struct ParseError {
    pub line: u32,
    pub text: String,
    pub reason: String,
}

/// Where a runtime error happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diag {
    pub kernel: String,
    pub cta: [u32; 3],
    pub thread: [u32; 3],
    pub warp: u32,
    pub lane: u32,
    /// 1-based line in the PTX text (0 if not tied to an instruction)
    pub ptx_line: u32,
    pub ptx_text: String,
    /// CUDA source `file:line` from `.loc`, with `(inlined at file:line)` when inlined
    pub source: Option<String>,
    /// CUDA source file and line of the outermost (user) frame, for programmatic checks
    pub source_file: Option<String>,
    pub source_line: Option<u32>,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel `{}` CTA ({},{},{}) thread ({},{},{}) warp {} lane {}\n    at PTX line {}: {}",
            self.kernel,
            self.cta[0],
            self.cta[1],
            self.cta[2],
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.warp,
            self.lane,
            self.ptx_line,
            self.ptx_text.trim()
        )?;
        match &self.source {
            Some(s) => write!(f, "\n    source: {s}"),
            None => write!(f, "\n    source: (no .loc information)"),
        }
    }
}

/// Errors from the fake device: API misuse, sanitizer findings and unsupported features.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmuError {
    #[error("out-of-bounds {access} of {size} B at {space} address {addr:#x}: {detail}\n  {diag}")]
    OutOfBounds {
        access: &'static str,
        space: &'static str,
        addr: u64,
        size: u32,
        detail: String,
        diag: Box<Diag>,
    },
    #[error("misaligned {access} of {size} B at {space} address {addr:#x} (needs {size}-B alignment)\n  {diag}")]
    Misaligned {
        access: &'static str,
        space: &'static str,
        addr: u64,
        size: u32,
        diag: Box<Diag>,
    },
    #[error("read of uninitialised {space} memory at {addr:#x} ({size} B)\n  {diag}")]
    UninitRead {
        space: &'static str,
        addr: u64,
        size: u32,
        diag: Box<Diag>,
    },
    #[error("`.nc` contract violated at global address {addr:#x}: {detail}\n  {diag}")]
    NcWrite {
        addr: u64,
        detail: String,
        diag: Box<Diag>,
    },
    #[error("shared-memory race ({kind}) at shared offset {addr:#x}: {detail}\n  {diag}")]
    SharedRace {
        kind: &'static str,
        addr: u64,
        detail: String,
        diag: Box<Diag>,
    },
    #[error("global-memory race ({kind}) between CTAs at {addr:#x}: {detail}\n  {diag}")]
    GlobalRace {
        kind: &'static str,
        addr: u64,
        detail: String,
        diag: Box<Diag>,
    },
    #[error("cp.async destination accessed before its wait_group at shared offset {addr:#x}: {detail}\n  {diag}")]
    CpAsyncPending {
        addr: u64,
        detail: String,
        diag: Box<Diag>,
    },
    #[error("barrier divergence: {detail}\n  {diag}")]
    BarrierDivergence { detail: String, diag: Box<Diag> },
    #[error("divergent warp collective: {detail}\n  {diag}")]
    DivergentCollective { detail: String, diag: Box<Diag> },
    #[error("deadlock in kernel `{kernel}` CTA ({},{},{}):\n{detail}", cta[0], cta[1], cta[2])]
    Deadlock {
        kernel: String,
        cta: [u32; 3],
        detail: String,
    },
    #[error("`bra.uni` is divergent: {detail}\n  {diag}")]
    NonUniformBranch { detail: String, diag: Box<Diag> },
    #[error("integer division by zero\n  {diag}")]
    DivByZero { diag: Box<Diag> },
    #[error("unsupported: {detail}")]
    Unsupported {
        detail: String,
        diag: Option<Box<Diag>>,
    },
    #[error("bad kernel parameters: {0}")]
    BadParams(String),
    #[error("bad launch configuration: {0}")]
    BadLaunch(String),
    #[error("no kernel named `{0}` in the module")]
    NoSuchKernel(String),
    #[error("watchdog: more than {limit} warp steps in kernel `{kernel}`; CTA ({},{},{}) was at:\n{detail}", cta[0], cta[1], cta[2])]
    Watchdog {
        kernel: String,
        limit: u64,
        cta: [u32; 3],
        detail: String,
    },
    #[error("device memory error: {0}")]
    Memory(String),
}

impl EmuError {
    /// The diagnostic context, when the error is tied to a thread and an instruction.
    pub fn diag(&self) -> Option<&Diag> {
        match self {
            EmuError::OutOfBounds { diag, .. }
            | EmuError::Misaligned { diag, .. }
            | EmuError::UninitRead { diag, .. }
            | EmuError::NcWrite { diag, .. }
            | EmuError::SharedRace { diag, .. }
            | EmuError::GlobalRace { diag, .. }
            | EmuError::CpAsyncPending { diag, .. }
            | EmuError::BarrierDivergence { diag, .. }
            | EmuError::DivergentCollective { diag, .. }
            | EmuError::NonUniformBranch { diag, .. }
            | EmuError::DivByZero { diag } => Some(diag),
            EmuError::Unsupported { diag, .. } => diag.as_deref(),
            _ => None,
        }
    }
}
