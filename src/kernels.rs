//! The kernel images embedded at build time (see build.rs).

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

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

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
        entries.push(FatbinEntry { kind, arch, payload });
        off += hs + ps;
    }
    Ok(entries)
}
