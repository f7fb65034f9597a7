//! The kernel images embedded at build time (see build.rs): two sets of the same kernels.
//!
//! * [`ImageSet::Cuda13`] — [`KERNEL_FILES`]: one nvcc 13 fatbin per file (SASS for every
//!   architecture in [`CUDA_ARCHS`] + PTX of the lowest), loaded by R580+ drivers; plus
//!   compute_80 PTX for the interpreter.
//! * [`ImageSet::Cuda12`] — [`CUDA12_FILES`]: per file one NVRTC 12.9 / ptxas 12.9 cubin per
//!   architecture in [`CUDA12_ARCHS`] and the PTX (ISA 8.8) of the lowest, loaded by R525+
//!   drivers; plus compute_80 PTX for the interpreter.
//!
//! Which set and which code a device gets is [`select::choose_image`].

pub mod select;

/// One compiled `kernels/*.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File stem, e.g. `ghost_gram`.
    pub name: &'static str,
    /// `-O3 -lineinfo` PTX for the interpreter.
    pub ptx: &'static str,
    /// Fatbin with SASS for every architecture in [`CUDA_ARCHS`] plus PTX for the lowest.
    pub fatbin: &'static [u8],
}

/// One compiled `kernels/*.cu` file of the CUDA 12 set.
#[derive(Debug, Clone, Copy)]
pub struct Cuda12File {
    /// File stem, e.g. `ghost_gram`.
    pub name: &'static str,
    /// PTX (ISA 8.8) of the lowest architecture, which the driver JIT-compiles for devices with
    /// no matching cubin, and that architecture.
    pub jit_ptx: (&'static str, u32),
    /// compute_80 PTX for the interpreter.
    pub interp_ptx: &'static str,
    /// `(sm, cubin)` for every architecture of [`CUDA12_ARCHS`].
    pub cubins: &'static [(u32, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// The two embedded image sets, by the CUDA toolchain that built them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageSet {
    /// nvcc 13: needs a driver for CUDA 13 (R580+).
    Cuda13,
    /// NVRTC + ptxas 12.9: cubins load on any CUDA 12 driver (R525+).
    Cuda12,
}

impl ImageSet {
    /// Whether this build embeds the set.
    pub fn built(self) -> bool {
        match self {
            ImageSet::Cuda13 => KERNELS_BUILT,
            ImageSet::Cuda12 => CUDA12_BUILT,
        }
    }

    /// The compute_80 PTX of every file of the set, by file stem (what the interpreter runs).
    pub fn interp_ptx(self) -> Vec<(&'static str, &'static str)> {
        match self {
            ImageSet::Cuda13 => KERNEL_FILES.iter().map(|f| (f.name, f.ptx)).collect(),
            ImageSet::Cuda12 => CUDA12_FILES.iter().map(|f| (f.name, f.interp_ptx)).collect(),
        }
    }
}

impl std::fmt::Display for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageSet::Cuda13 => "cuda13",
            ImageSet::Cuda12 => "cuda12",
        })
    }
}

/// The PTX ISA version of a PTX text (its `.version` line), e.g. `(8, 8)`.
pub fn ptx_isa_version(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx.lines().map(str::trim).find(|l| l.starts_with(".version"))?;
    let (major, minor) = line.strip_prefix(".version")?.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.trim().parse().ok()?))
}

/// The target of a PTX text (its `.target` line), e.g. `sm_80`.
pub fn ptx_target(ptx: &str) -> Option<&str> {
    let line = ptx.lines().map(str::trim).find(|l| l.starts_with(".target"))?;
    line.strip_prefix(".target")?.split([',', ' ']).find(|s| !s.is_empty())
}

/// The SM a CUDA cubin (ELF, `EM_CUDA`) was assembled for, from its ELF header: `e_flags` holds
/// it in bits 0–7 for ELF ABI version 7 and in bits 8–15 for ABI version 8 (CUDA ≥ 12.8 for
/// sm_100 and newer).
pub fn cubin_sm(elf: &[u8]) -> Result<u32, String> {
    const EM_CUDA: u16 = 190;
    if elf.len() < 52 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let machine = u16::from_le_bytes([elf[18], elf[19]]);
    if machine != EM_CUDA {
        return Err(format!("ELF machine {machine}, not EM_CUDA ({EM_CUDA})"));
    }
    let flags = u32::from_le_bytes(elf[48..52].try_into().expect("4 bytes"));
    match elf[8] {
        0..=7 => Ok(flags & 0xff),
        8 => Ok((flags >> 8) & 0xff),
        v => Err(format!("unknown CUDA ELF ABI version {v}")),
    }
}

/// Kernel entry points (`.entry` names) in a PTX text.
pub fn ptx_entry_names(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(".visible .entry ").or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split(['(', ' ']).next()?.to_string())
        })
        .collect()
}

/// Every kernel entry point of every embedded file.
pub fn all_kernel_names() -> Vec<String> {
    KERNEL_FILES.iter().flat_map(|f| ptx_entry_names(f.ptx)).collect()
}

/// One entry of a fatbin container.
#[derive(Debug, Clone)]
pub struct FatbinEntry {
    /// 1 = PTX, 2 = ELF (SASS).
    pub kind: u16,
    /// SM version, e.g. 90.
    pub arch: u32,
    /// Where `payload` starts in the fatbin.
    pub offset: usize,
    pub payload: Vec<u8>,
}

/// Parses an uncompressed fatbin container (build.rs passes `-no-compress`).
pub fn parse_fatbin(data: &[u8]) -> Result<Vec<FatbinEntry>, String> {
    let rd32 = |o: usize| -> Result<u32, String> {
        data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or("truncated fatbin".to_string())
    };
    let rd64 = |o: usize| -> Result<u64, String> {
        data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).ok_or("truncated fatbin".to_string())
    };
    if rd32(0)? != 0xBA55_ED50 {
        return Err("not a fatbin (bad magic)".into());
    }
    let header = u16::from_le_bytes([data[6], data[7]]) as usize;
    let body = rd64(8)? as usize;
    let mut off = header;
    let end = header + body;
    let mut entries = Vec::new();
    while off + 32 <= end.min(data.len()) {
        let kind = u16::from_le_bytes([data[off], data[off + 1]]);
        let hs = rd32(off + 4)? as usize;
        let ps = rd64(off + 8)? as usize;
        let arch = rd32(off + 28)?;
        let payload = data.get(off + hs..off + hs + ps).ok_or("truncated fatbin entry")?.to_vec();
        entries.push(FatbinEntry { kind, arch, offset: off + hs, payload });
        off += hs + ps;
    }
    Ok(entries)
}
