//! The fake device: global memory, launches, the per-lane-PC scheduler, sanitizers and counters.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::alu::{self, AluErr};
use crate::error::{Diag, EmuError};
use crate::ir::*;
use crate::report::{Counters, InstCount, LineCount, Report};
use crate::{LaunchConfig, Module, Options, ParamValue};

const GLOBAL_BASE: u64 = 0x1_0000_0000;
const GUARD: u64 = 64 * 1024;
/// Generic-address windows for shared and local memory.
const SHARED_WIN: u64 = 0xF000_0000_0000;
const LOCAL_WIN: u64 = 0xF800_0000_0000;
const WIN_SIZE: u64 = 1 << 32;

const F_INIT: u8 = 1;
const F_NC_READ: u8 = 2;
const F_WRITTEN: u8 = 4;

struct Alloc {
    data: Vec<u8>,
    flags: Vec<u8>,
    /// some flag other than F_INIT was set during the last launch
    dirty: bool,
}

/// The fake GPU: a 64-bit global address space with guarded allocations.
pub struct Device {
    allocs: BTreeMap<u64, Alloc>,
    next: u64,
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            0
        } else {
            self.next() % n
        }
    }
}

impl Device {
    pub fn new() -> Device {
        Device {
            allocs: BTreeMap::new(),
            next: GLOBAL_BASE,
        }
    }

    /// Allocates `bytes` of uninitialised global memory (256-B aligned, guard gaps around it).
    pub fn alloc(&mut self, bytes: u64) -> Result<u64, EmuError> {
        if bytes > (1 << 34) {
            return Err(EmuError::Memory(format!(
                "allocation of {bytes} B is too large for the interpreter"
            )));
        }
        let base = self.next;
        self.next = (base + bytes.max(1) + GUARD).div_ceil(256) * 256;
        self.allocs.insert(
            base,
            Alloc {
                data: vec![0; bytes as usize],
                flags: vec![0; bytes as usize],
                dirty: false,
            },
        );
        Ok(base)
    }

    pub fn free(&mut self, addr: u64) -> Result<(), EmuError> {
        self.allocs.remove(&addr).map(|_| ()).ok_or_else(|| {
            EmuError::Memory(format!(
                "free of {addr:#x}, which is not the base of an allocation"
            ))
        })
    }

    fn find(&self, addr: u64, len: u64) -> Result<(u64, &Alloc), String> {
        let end = addr
            .checked_add(len)
            .ok_or_else(|| "address wraps around the 64-bit space".to_string())?;
        let prev = self.allocs.range(..=addr).next_back();
        if let Some((&b, a)) = prev {
            let aend = b + a.data.len() as u64;
            if end <= aend {
                return Ok((b, a));
            }
            if addr < aend {
                return Err(format!(
                    "{} B past the end of the allocation at {b:#x} of {} B",
                    end - aend,
                    a.data.len()
                ));
            }
        }
        let next = self.allocs.range(addr.saturating_add(1)..).next();
        let after_prev = prev.map(|(&b, a)| addr - (b + a.data.len() as u64));
        let before_next = next.map(|(&b, _)| b - addr);
        match (after_prev, before_next) {
            _ if addr < 4096 => Err("null (or near-null) pointer".into()),
            (Some(d), n) if d < GUARD && !matches!(n, Some(n) if n < d) => {
                let (b, a) = prev.unwrap();
                Err(format!(
                    "{} B past the end of the allocation at {b:#x} of {} B",
                    end - (b + a.data.len() as u64),
                    a.data.len()
                ))
            }
            (_, Some(n)) if n < GUARD => {
                let (b, a) = next.unwrap();
                Err(format!(
                    "{n} B before the start of the allocation at {b:#x} of {} B",
                    a.data.len()
                ))
            }
            _ => Err("not inside any allocation (freed, or a wild pointer)".into()),
        }
    }

    /// Copies host bytes into device memory (any in-bounds sub-range of an allocation).
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), EmuError> {
        let (b, _) = self
            .find(addr, data.len() as u64)
            .map_err(|e| EmuError::Memory(format!("write at {addr:#x}: {e}")))?;
        let a = self.allocs.get_mut(&b).unwrap();
        let o = (addr - b) as usize;
        a.data[o..o + data.len()].copy_from_slice(data);
        for f in &mut a.flags[o..o + data.len()] {
            *f |= F_INIT;
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, len: u64) -> Result<Vec<u8>, EmuError> {
        let (b, a) = self
            .find(addr, len)
            .map_err(|e| EmuError::Memory(format!("read at {addr:#x}: {e}")))?;
        let o = (addr - b) as usize;
        Ok(a.data[o..o + len as usize].to_vec())
    }

    /// Convenience: writes f32 values.
    pub fn write_f32(&mut self, addr: u64, v: &[f32]) -> Result<(), EmuError> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.write(addr, &b)
    }

    /// Convenience: reads f32 values.
    pub fn read_f32(&self, addr: u64, n: usize) -> Result<Vec<f32>, EmuError> {
        let b = self.read(addr, n as u64 * 4)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Runs `kernel` over the grid. Errors stop the launch at the first finding.
    pub fn launch(
        &mut self,
        module: &Module,
        kernel: &str,
        cfg: &LaunchConfig,
        params: &[ParamValue],
        opts: &Options,
    ) -> Result<Report, EmuError> {
        let k = module
            .kernel(kernel)
            .ok_or_else(|| EmuError::NoSuchKernel(kernel.to_string()))?;
        let pbuf = pack_params(k, params)?;
        let nthreads = cfg.block[0] as u64 * cfg.block[1] as u64 * cfg.block[2] as u64;
        if nthreads == 0 || nthreads > 1024 || cfg.block.contains(&0) {
            return Err(EmuError::BadLaunch(format!(
                "block {:?} must have 1..=1024 threads",
                cfg.block
            )));
        }
        if cfg.block[2] > 64 {
            return Err(EmuError::BadLaunch("block.z must be <= 64".into()));
        }
        if cfg.grid.contains(&0) || cfg.grid[1] > 65535 || cfg.grid[2] > 65535 {
            return Err(EmuError::BadLaunch(format!(
                "grid {:?} is invalid",
                cfg.grid
            )));
        }
        for (what, lim) in [("maxntid", k.maxntid), ("reqntid", k.reqntid)] {
            if let Some(l) = lim {
                let ok = if what == "reqntid" {
                    l == cfg.block
                } else {
                    nthreads <= l[0] as u64 * l[1] as u64 * l[2] as u64
                };
                if !ok {
                    return Err(EmuError::BadLaunch(format!(
                        "block {:?} violates .{what} {:?}",
                        cfg.block, l
                    )));
                }
            }
        }
        let shared_total = if k.has_dyn_shared {
            k.dyn_shared_offset + cfg.dynamic_shared_bytes
        } else {
            k.static_shared_end
        };
        if shared_total as u64 > 227 * 1024 + 128 * (k.shared.len() as u64 + 1) {
            return Err(EmuError::BadLaunch(format!(
                "{shared_total} B of shared memory exceed the 227 KiB limit"
            )));
        }
        for a in self.allocs.values_mut().filter(|a| a.dirty) {
            for f in a.flags.iter_mut() {
                *f &= F_INIT;
            }
            a.dirty = false;
        }
        let total_ctas = cfg.grid[0] as u64 * cfg.grid[1] as u64 * cfg.grid[2] as u64;
        let mut rng = SplitMix(opts.schedule_seed ^ 0x5eed_0fc7_a5a5);
        let mut order: Vec<u64> = match opts.sample_ctas {
            // Floyd's algorithm: n distinct CTAs without materialising the whole grid
            Some(n) if (n.max(1) as u64) < total_ctas => {
                let n = n.max(1) as u64;
                let mut chosen = std::collections::BTreeSet::new();
                for j in total_ctas - n..total_ctas {
                    let t = rng.below(j + 1);
                    if !chosen.insert(t) {
                        chosen.insert(j);
                    }
                }
                chosen.into_iter().collect()
            }
            _ => {
                if total_ctas > 1 << 26 {
                    return Err(EmuError::BadLaunch(format!(
                        "{total_ctas} CTAs are too many to interpret; use Options::sample_ctas"
                    )));
                }
                (0..total_ctas).collect()
            }
        };
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let executed = order.len() as u64;
        let mut ex = Exec {
            dev: self,
            module,
            k,
            cfg: *cfg,
            opts,
            params: pbuf,
            rng,
            pc_counts: vec![InstCount::default(); k.insts.len()],
            c: Counters::default(),
            steps: 0,
            gshadow: HashMap::new(),
            warnings: Vec::new(),
            shared_total,
            load_sectors_seen: HashSet::new(),
            store_sectors_seen: HashSet::new(),
        };
        for &lin in &order {
            let id = [
                (lin % cfg.grid[0] as u64) as u32,
                ((lin / cfg.grid[0] as u64) % cfg.grid[1] as u64) as u32,
                (lin / (cfg.grid[0] as u64 * cfg.grid[1] as u64)) as u32,
            ];
            ex.run_cta(id, lin as u32)?;
        }
        let mut c = std::mem::take(&mut ex.c);
        for (pc, cnt) in ex.pc_counts.iter().enumerate() {
            if cnt.warp == 0 {
                continue;
            }
            let ins = &k.insts[pc];
            let e = c.by_class.entry(ins.class).or_default();
            e.warp += cnt.warp;
            e.thread += cnt.thread;
            let e = c
                .by_form
                .entry(module.forms[ins.form as usize].clone())
                .or_default();
            e.warp += cnt.warp;
            e.thread += cnt.thread;
            let e = c.by_line.entry(ins.line).or_insert_with(|| LineCount {
                text: ins.text.clone(),
                source: ins.loc.map(|l| source_string(module, &l)),
                ..Default::default()
            });
            e.warp += cnt.warp;
            e.thread += cnt.thread;
        }
        let sampled = executed < total_ctas;
        let scale = total_ctas as f64 / executed as f64;
        if sampled {
            c.scale(scale);
        }
        let (loads, stores) = (std::mem::take(&mut ex.load_sectors_seen), std::mem::take(&mut ex.store_sectors_seen));
        c.global_unique_load_sectors = ex.dev.unique_sectors_estimate(&loads, scale);
        c.global_unique_store_sectors = ex.dev.unique_sectors_estimate(&stores, scale);
        let mut warnings = std::mem::take(&mut ex.warnings);
        if cfg.dynamic_shared_bytes > 0 && !k.has_dyn_shared {
            warnings.push(format!(
                "{} B of dynamic shared memory requested, but the kernel declares no extern .shared (unused)",
                cfg.dynamic_shared_bytes
            ));
        }
        if !k.contractible.is_empty() {
            warnings.push(format!(
                "{} plain add/sub.f32 fed by a plain mul.f32 (PTX lines {:?}): ptxas may fuse them into one FFMA, so GPU results can differ by an ulp from the interpreter's two roundings",
                k.contractible.len(),
                k.contractible
            ));
        }
        if k.reads_warpid {
            warnings.push("the kernel reads %warpid/%nwarpid, which are volatile on hardware (the interpreter returns linear tid / 32)".into());
        }
        if c.approx_results > 0 {
            warnings.push(format!(
                "{} results came from approximate instructions; the interpreter computes them correctly rounded, hardware differs by a few ulp",
                c.approx_results
            ));
        }
        Ok(Report {
            kernel: k.name.clone(),
            counters: c,
            executed_ctas: executed,
            total_ctas,
            sampled,
            warnings,
            threads_per_cta: nthreads as u32,
            shared_bytes_per_cta: shared_total,
        })
    }

    /// Distinct sectors of the whole launch, estimated from the executed CTAs: per allocation,
    /// the sectors the executed CTAs touched times `scale` (total / executed CTAs), capped by the
    /// allocation's own sector count (exact when every CTA ran: `scale` = 1 and no cap binds).
    fn unique_sectors_estimate(&self, seen: &HashSet<u64>, scale: f64) -> u64 {
        let mut per_alloc: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for &s in seen {
            let addr = s << 5;
            let (base, cap) = match self.allocs.range(..=addr).next_back() {
                Some((b, a)) if addr < b + a.data.len() as u64 => (*b, ((b + a.data.len().max(1) as u64 - 1) >> 5) - (b >> 5) + 1),
                _ => (u64::MAX, u64::MAX),
            };
            per_alloc.entry(base).or_insert((0, cap)).0 += 1;
        }
        per_alloc.values().map(|&(n, cap)| ((n as f64 * scale).round() as u64).min(cap).max(n)).sum()
    }
}

fn pack_params(k: &Kernel, params: &[ParamValue]) -> Result<Vec<u8>, EmuError> {
    if params.len() != k.params.len() {
        return Err(EmuError::BadParams(format!(
            "kernel `{}` takes {} parameters, {} given",
            k.name,
            k.params.len(),
            params.len()
        )));
    }
    let mut buf = vec![0u8; k.param_bytes as usize];
    for (i, (d, v)) in k.params.iter().zip(params).enumerate() {
        let (bytes, is_float): (Vec<u8>, bool) = match v {
            ParamValue::U64(x) => (x.to_le_bytes().to_vec(), false),
            ParamValue::I64(x) => (x.to_le_bytes().to_vec(), false),
            ParamValue::U32(x) => (x.to_le_bytes().to_vec(), false),
            ParamValue::I32(x) => (x.to_le_bytes().to_vec(), false),
            ParamValue::F32(x) => (x.to_le_bytes().to_vec(), true),
            ParamValue::F64(x) => (x.to_le_bytes().to_vec(), true),
        };
        if bytes.len() as u32 != d.size || is_float != d.ty.is_float() {
            return Err(EmuError::BadParams(format!(
                "parameter {i} `{}` is .{:?} ({} B) but {:?} was given",
                d.name, d.ty, d.size, v
            )));
        }
        buf[d.offset as usize..d.offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(buf)
}

fn source_string(m: &Module, l: &Loc) -> String {
    let mut s = format!("{}:{}", m.file_name(l.file), l.line);
    if let Some((f, ln)) = l.inlined_at {
        s.push_str(&format!(" (inlined at {}:{})", m.file_name(f), ln));
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Run,
    Bar,
    Coll,
    Exit,
}

struct Warp {
    /// layout (.col?) of the wmma a/b fragment last loaded into a register
    frag_layout: HashMap<u32, bool>,
    pc: [u32; 32],
    st: [St; 32],
    regs: Vec<u64>,
    /// bumped at every completed `bar.warp.sync` (orders memory among the warp's lanes)
    wepoch: u32,
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Sh {
    w_tid: u32,
    w_epoch: u32,
    w_wep: u32,
    w_pc: u32,
    w_atom: bool,
    r_tid: u32,
    r_epoch: u32,
    r_wep: u32,
    r_pc: u32,
    r_multi: bool,
}
const SH0: Sh = Sh {
    w_tid: NONE,
    w_epoch: 0,
    w_wep: 0,
    w_pc: 0,
    w_atom: false,
    r_tid: NONE,
    r_epoch: 0,
    r_wep: 0,
    r_pc: 0,
    r_multi: false,
};

#[derive(Clone, Copy)]
struct GSh {
    w_cta: u32,
    w_tid: u32,
    w_pc: u32,
    w_epoch: u32,
    w_wep: u32,
    r_cta: u32,
    r_tid: u32,
    r_pc: u32,
    r_epoch: u32,
    r_wep: u32,
    /// another thread of the reader's CTA also read, unordered with the recorded read
    r_multi_thread: bool,
    /// a CTA other than `r_cta` also read the byte
    r_multi_cta: bool,
}

const GSH0: GSh = GSh {
    w_cta: NONE,
    w_tid: 0,
    w_pc: 0,
    w_epoch: 0,
    w_wep: 0,
    r_cta: NONE,
    r_tid: 0,
    r_pc: 0,
    r_epoch: 0,
    r_wep: 0,
    r_multi_thread: false,
    r_multi_cta: false,
};

#[derive(Clone)]
struct CpOp {
    dst: u32,
    data: Vec<u8>,
}

#[derive(Default, Clone)]
struct CpThread {
    uncommitted: Vec<CpOp>,
    groups: std::collections::VecDeque<Vec<CpOp>>,
}

struct Cta {
    id: [u32; 3],
    /// per-thread cp.async state
    cp: Vec<CpThread>,
    /// issuing thread of an in-flight cp.async per shared byte (NONE when none)
    pending: Vec<u32>,
    lin: u32,
    warps: Vec<Warp>,
    nthreads: u32,
    shared: Vec<u8>,
    shared_init: Vec<bool>,
    shadow: Vec<Sh>,
    /// valid shared ranges (start, end, name)
    ranges: Vec<(u32, u32, String)>,
    local: Vec<u8>,
    local_init: Vec<bool>,
    epoch: u32,
    exited_in_epoch: Option<(u32, u32, u32)>,
}

struct Exec<'a> {
    dev: &'a mut Device,
    module: &'a Module,
    k: &'a Kernel,
    cfg: LaunchConfig,
    opts: &'a Options,
    params: Vec<u8>,
    rng: SplitMix,
    pc_counts: Vec<InstCount>,
    c: Counters,
    steps: u64,
    gshadow: HashMap<u64, GSh>,
    warnings: Vec<String>,
    shared_total: u32,
    /// distinct global sectors (address >> 5) read / written during the launch (L2 model)
    load_sectors_seen: HashSet<u64>,
    store_sectors_seen: HashSet<u64>,
}

/// A resolved memory location for one lane.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loc2 {
    Global(u64),
    Shared(u32),
    Local(u32),
    Param(u32),
}

fn space_name(s: Space) -> &'static str {
    match s {
        Space::Generic => "generic",
        Space::Global => "global",
        Space::Shared => "shared",
        Space::Local => "local",
        Space::Param => "param",
    }
}

impl<'a> Exec<'a> {
    fn tid_of(&self, lin: u32) -> [u32; 3] {
        let b = self.cfg.block;
        [lin % b[0], (lin / b[0]) % b[1], lin / (b[0] * b[1])]
    }

    fn diag(&self, cta: &Cta, warp: u32, lane: u32, pc: u32) -> Box<Diag> {
        let ins = self.k.insts.get(pc as usize);
        let (source, source_file, source_line) = match ins.and_then(|i| i.loc) {
            Some(l) => {
                let (f, ln) = l.inlined_at.unwrap_or((l.file, l.line));
                (
                    Some(source_string(self.module, &l)),
                    Some(self.module.file_name(f)),
                    Some(ln),
                )
            }
            None => (None, None, None),
        };
        Box::new(Diag {
            kernel: self.k.name.clone(),
            cta: cta.id,
            thread: self.tid_of(warp * 32 + lane),
            warp,
            lane,
            ptx_line: ins.map(|i| i.line).unwrap_or(0),
            ptx_text: ins.map(|i| i.text.clone()).unwrap_or_default(),
            source,
            source_file,
            source_line,
        })
    }

    fn describe_tid(&self, tid: u32, pc: u32) -> String {
        let t = self.tid_of(tid);
        let ins = &self.k.insts[pc as usize];
        let src = ins
            .loc
            .map(|l| format!(" [{}]", source_string(self.module, &l)))
            .unwrap_or_default();
        format!(
            "thread ({},{},{}) at PTX line {}: {}{}",
            t[0], t[1], t[2], ins.line, ins.text, src
        )
    }

    fn run_cta(&mut self, id: [u32; 3], lin: u32) -> Result<(), EmuError> {
        let b = self.cfg.block;
        let nthreads = b[0] * b[1] * b[2];
        let nwarps = nthreads.div_ceil(32);
        let nregs = self.k.nregs as usize;
        let mut warps = Vec::with_capacity(nwarps as usize);
        for w in 0..nwarps {
            let mut st = [St::Exit; 32];
            for (l, s) in st.iter_mut().enumerate() {
                if w * 32 + (l as u32) < nthreads {
                    *s = St::Run;
                }
            }
            warps.push(Warp {
                frag_layout: HashMap::new(),
                pc: [0; 32],
                st,
                regs: vec![0; nregs * 32],
                wepoch: 0,
            });
        }
        let mut ranges: Vec<(u32, u32, String)> = self
            .k
            .shared
            .iter()
            .map(|s| (s.offset, s.offset + s.size, s.name.clone()))
            .collect();
        if self.k.has_dyn_shared {
            ranges.push((
                self.k.dyn_shared_offset,
                self.k.dyn_shared_offset + self.cfg.dynamic_shared_bytes,
                "extern (dynamic) shared".into(),
            ));
        }
        let st = self.shared_total as usize;
        let lb = self.k.local_bytes as usize * nthreads as usize;
        let mut cta = Cta {
            id,
            cp: vec![CpThread::default(); nthreads as usize],
            pending: vec![NONE; st],
            lin,
            warps,
            nthreads,
            shared: vec![0; st],
            shared_init: vec![false; st],
            shadow: if self.opts.racecheck {
                vec![SH0; st]
            } else {
                Vec::new()
            },
            ranges,
            local: vec![0; lb],
            local_init: vec![false; lb],
            epoch: 0,
            exited_in_epoch: None,
        };
        let mut runnable: Vec<usize> = Vec::with_capacity(cta.warps.len());
        loop {
            runnable.clear();
            runnable.extend((0..cta.warps.len()).filter(|&w| cta.warps[w].st.contains(&St::Run)));
            if runnable.is_empty() {
                if self.try_release_barrier(&mut cta)? {
                    continue;
                }
                let all_exit = cta
                    .warps
                    .iter()
                    .all(|w| w.st.iter().all(|&s| s == St::Exit));
                if all_exit {
                    return Ok(());
                }
                return Err(self.deadlock(&cta));
            }
            let w = runnable[self.rng.below(runnable.len() as u64) as usize];
            let quantum = 1 + self.rng.below(16);
            for _ in 0..quantum {
                if !self.step(&mut cta, w)? {
                    break;
                }
            }
        }
    }

    fn deadlock(&self, cta: &Cta) -> EmuError {
        EmuError::Deadlock {
            kernel: self.k.name.clone(),
            cta: cta.id,
            detail: self.warp_states(cta),
        }
    }

    /// Each warp's lanes grouped by state and PC, with PTX lines.
    fn warp_states(&self, cta: &Cta) -> String {
        let mut s = String::new();
        for (wi, w) in cta.warps.iter().enumerate() {
            let mut groups: BTreeMap<(u32, &'static str), Vec<u32>> = BTreeMap::new();
            for l in 0..32 {
                let name = match w.st[l] {
                    St::Exit => continue,
                    St::Run => "running",
                    St::Bar => "waiting at bar.sync",
                    St::Coll => "waiting at warp collective",
                };
                groups.entry((w.pc[l], name)).or_default().push(l as u32);
            }
            for ((pc, name), lanes) in groups {
                let ins = &self.k.insts[pc as usize];
                let src = ins
                    .loc
                    .map(|l| format!(" [{}]", source_string(self.module, &l)))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "  warp {wi} lanes {:?}: {name} at PTX line {}: {}{src}\n",
                    lanes, ins.line, ins.text
                ));
            }
        }
        s
    }

    fn try_release_barrier(&mut self, cta: &mut Cta) -> Result<bool, EmuError> {
        let mut first: Option<(u32, u32, u32)> = None;
        for (wi, w) in cta.warps.iter().enumerate() {
            for l in 0..32 {
                match w.st[l] {
                    St::Exit => {}
                    St::Bar => {
                        let pc = w.pc[l];
                        match first {
                            None => first = Some((wi as u32, l as u32, pc)),
                            Some((fw, fl, fpc)) if fpc != pc => {
                                return Err(EmuError::BarrierDivergence {
                                    detail: format!(
                                        "threads wait at different barriers: {} and {}",
                                        self.describe_tid(fw * 32 + fl, fpc),
                                        self.describe_tid(wi as u32 * 32 + l as u32, pc)
                                    ),
                                    diag: self.diag(cta, wi as u32, l as u32, pc),
                                })
                            }
                            _ => {}
                        }
                    }
                    _ => return Ok(false),
                }
            }
        }
        let Some((fw, fl, pc)) = first else {
            return Ok(false);
        };
        if let Some((ew, el, epc)) = cta.exited_in_epoch {
            if !self.opts.allow_exit_before_barrier {
                return Err(EmuError::BarrierDivergence {
                    detail: format!(
                        "not all threads of the CTA reach this .aligned bar.sync: {} exited before it",
                        self.describe_tid(ew * 32 + el, epc)
                    ),
                    diag: self.diag(cta, fw, fl, pc),
                });
            }
        }
        if let Inst::Bar {
            count: Some(cnt), ..
        } = &self.k.insts[pc as usize].inst
        {
            let n = match cnt {
                Src::Imm(v) => *v as u32,
                _ => {
                    return Err(EmuError::Unsupported {
                        detail: "bar.sync with a register thread count".into(),
                        diag: Some(self.diag(cta, fw, fl, pc)),
                    })
                }
            };
            if n != cta.nthreads.div_ceil(32) * 32 {
                return Err(EmuError::Unsupported {
                    detail: format!(
                        "bar.sync with a partial thread count {n} (CTA has {})",
                        cta.nthreads
                    ),
                    diag: Some(self.diag(cta, fw, fl, pc)),
                });
            }
        }
        for w in cta.warps.iter_mut() {
            for l in 0..32 {
                if w.st[l] == St::Bar {
                    w.st[l] = St::Run;
                    w.pc[l] += 1;
                }
            }
        }
        cta.epoch += 1;
        cta.exited_in_epoch = None;
        self.c.barriers += 1;
        Ok(true)
    }

    #[inline]
    fn fetch(&self, cta: &Cta, w: &Warp, wi: usize, lane: usize, s: Src) -> u64 {
        match s {
            Src::Reg(r) => w.regs[r as usize * 32 + lane],
            Src::Imm(v) => v,
            Src::Special(sp) => self.special(cta, wi, lane, sp),
        }
    }

    fn special(&self, cta: &Cta, wi: usize, lane: usize, sp: Special) -> u64 {
        let lin = wi as u32 * 32 + lane as u32;
        let t = self.tid_of(lin);
        let l = lane as u32;
        (match sp {
            Special::Tid(d) => t[d as usize],
            Special::Ntid(d) => self.cfg.block[d as usize],
            Special::Ctaid(d) => cta.id[d as usize],
            Special::Nctaid(d) => self.cfg.grid[d as usize],
            Special::LaneId => l,
            Special::WarpId => wi as u32,
            Special::NWarpId => cta.warps.len() as u32,
            Special::DynSmemSize => self.cfg.dynamic_shared_bytes,
            Special::TotalSmemSize => self.shared_total,
            Special::LanemaskEq => 1u32 << l,
            Special::LanemaskLt => ((1u64 << l) - 1) as u32,
            Special::LanemaskLe => ((1u64 << (l + 1)) - 1) as u32,
            Special::LanemaskGt => !(((1u64 << (l + 1)) - 1) as u32),
            Special::LanemaskGe => !(((1u64 << l) - 1) as u32),
        }) as u64
    }

    /// One lane group of warp `wi`. Returns false when the warp has no runnable lane.
    fn step(&mut self, cta: &mut Cta, wi: usize) -> Result<bool, EmuError> {
        let (pc, group) = {
            let w = &cta.warps[wi];
            let mut minpc = u32::MAX;
            for l in 0..32 {
                if w.st[l] == St::Run && w.pc[l] < minpc {
                    minpc = w.pc[l];
                }
            }
            if minpc == u32::MAX {
                return Ok(false);
            }
            let mut g = 0u32;
            for l in 0..32 {
                if w.st[l] == St::Run && w.pc[l] == minpc {
                    g |= 1 << l;
                }
            }
            (minpc, g)
        };
        self.steps += 1;
        if self.steps > self.opts.max_warp_steps {
            return Err(EmuError::Watchdog {
                kernel: self.k.name.clone(),
                limit: self.opts.max_warp_steps,
                cta: cta.id,
                detail: self.warp_states(cta),
            });
        }
        let k = self.k;
        let Some(ins) = k.insts.get(pc as usize) else {
            let l = group.trailing_zeros();
            return Err(EmuError::Unsupported {
                detail: "control fell off the end of the kernel without ret/exit".into(),
                diag: Some(self.diag(cta, wi as u32, l, pc.saturating_sub(1))),
            });
        };
        let active = match ins.guard {
            None => group,
            Some((r, neg)) => {
                let w = &cta.warps[wi];
                let mut m = 0;
                for l in 0..32 {
                    if group >> l & 1 != 0 && ((w.regs[r as usize * 32 + l] & 1 != 0) != neg) {
                        m |= 1 << l;
                    }
                }
                m
            }
        };
        let na = active.count_ones() as u64;
        self.c.warp_instructions += 1;
        self.c.thread_instructions += na;
        self.c.predicated_off_lanes += (group.count_ones() as u64) - na;
        if ins.approx {
            self.c.approx_results += na;
        }
        let pcc = &mut self.pc_counts[pc as usize];
        pcc.warp += 1;
        pcc.thread += na;
        let advance = |cta: &mut Cta| {
            let w = &mut cta.warps[wi];
            for l in 0..32 {
                if group >> l & 1 != 0 {
                    w.pc[l] += 1;
                }
            }
        };
        match &ins.inst {
            Inst::Alu { op, d, a, b, c } => {
                let (op, d, a, b, c) = (*op, *d as usize, *a, *b, *c);
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let w = &cta.warps[wi];
                    let (x, y, z) = (
                        self.fetch(cta, w, wi, l, a),
                        self.fetch(cta, w, wi, l, b),
                        self.fetch(cta, w, wi, l, c),
                    );
                    match alu::eval(&op, x, y, z) {
                        Ok(v) => cta.warps[wi].regs[d * 32 + l] = v,
                        Err(AluErr::DivByZero) => {
                            return Err(EmuError::DivByZero {
                                diag: self.diag(cta, wi as u32, l as u32, pc),
                            })
                        }
                    }
                }
                advance(cta);
            }
            Inst::Bfi { w, d, a, b, c, e } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let wp = &cta.warps[wi];
                    let v = alu::bfi(
                        self.fetch(cta, wp, wi, l, *a),
                        self.fetch(cta, wp, wi, l, *b),
                        self.fetch(cta, wp, wi, l, *c),
                        self.fetch(cta, wp, wi, l, *e),
                        *w,
                    );
                    cta.warps[wi].regs[*d as usize * 32 + l] = v;
                }
                advance(cta);
            }
            Inst::Setp {
                cmp,
                ty,
                ftz,
                p,
                q,
                a,
                b,
                bop,
            } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let w = &cta.warps[wi];
                    let x = self.fetch(cta, w, wi, l, *a);
                    let y = self.fetch(cta, w, wi, l, *b);
                    let t = alu::compare(*cmp, *ty, *ftz, x, y);
                    let (mut pv, mut qv) = (t, !t);
                    if let Some((bo, cs, neg)) = bop {
                        let cv = (self.fetch(cta, w, wi, l, *cs) & 1 != 0) != *neg;
                        let f = |v: bool| match bo {
                            BoolOp::And => v && cv,
                            BoolOp::Or => v || cv,
                            BoolOp::Xor => v ^ cv,
                        };
                        pv = f(pv);
                        qv = f(qv);
                    }
                    let w = &mut cta.warps[wi];
                    w.regs[*p as usize * 32 + l] = pv as u64;
                    if let Some(q) = q {
                        w.regs[*q as usize * 32 + l] = qv as u64;
                    }
                }
                advance(cta);
            }
            Inst::PredOp { op, d, a, b } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let w = &cta.warps[wi];
                    let x = self.fetch(cta, w, wi, l, *a) & 1;
                    let y = self.fetch(cta, w, wi, l, *b) & 1;
                    let v = match op {
                        0 => x & y,
                        1 => x | y,
                        2 => x ^ y,
                        _ => x ^ 1,
                    };
                    cta.warps[wi].regs[*d as usize * 32 + l] = v;
                }
                advance(cta);
            }
            Inst::Pack {
                part_bits,
                d,
                parts,
            } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let w = &cta.warps[wi];
                    let mut v = 0u64;
                    for (i, s) in parts.iter().enumerate() {
                        v |= (self.fetch(cta, w, wi, l, *s) & alu::mask(*part_bits))
                            << (i as u32 * part_bits);
                    }
                    cta.warps[wi].regs[*d as usize * 32 + l] = v;
                }
                advance(cta);
            }
            Inst::Unpack { part_bits, ds, a } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let v = self.fetch(cta, &cta.warps[wi], wi, l, *a);
                    for (i, d) in ds.iter().enumerate() {
                        if let Some(d) = d {
                            cta.warps[wi].regs[*d as usize * 32 + l] =
                                (v >> (i as u32 * part_bits)) & alu::mask(*part_bits);
                        }
                    }
                }
                advance(cta);
            }
            Inst::Cvta {
                to_generic,
                space,
                d,
                a,
                ..
            } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let v = self.fetch(cta, &cta.warps[wi], wi, l, *a);
                    let win = match space {
                        Space::Shared => SHARED_WIN,
                        Space::Local => LOCAL_WIN,
                        _ => 0,
                    };
                    let r = if *to_generic {
                        v.wrapping_add(win)
                    } else {
                        v.wrapping_sub(win)
                    };
                    cta.warps[wi].regs[*d as usize * 32 + l] = r;
                }
                advance(cta);
            }
            Inst::Bra { target, uni } => {
                if *uni && active != 0 && active != group {
                    let l = (group & !active).trailing_zeros();
                    return Err(EmuError::NonUniformBranch {
                        detail: format!(
                            "lanes {:#010x} take the branch, lanes {:#010x} do not",
                            active,
                            group & !active
                        ),
                        diag: self.diag(cta, wi as u32, l, pc),
                    });
                }
                let w = &mut cta.warps[wi];
                for l in 0..32 {
                    if group >> l & 1 != 0 {
                        w.pc[l] = if active >> l & 1 != 0 {
                            *target
                        } else {
                            w.pc[l] + 1
                        };
                    }
                }
            }
            Inst::Exit => {
                {
                    let w = &mut cta.warps[wi];
                    for l in 0..32 {
                        if group >> l & 1 != 0 {
                            if active >> l & 1 != 0 {
                                w.st[l] = St::Exit;
                            } else {
                                w.pc[l] += 1;
                            }
                        }
                    }
                }
                if active != 0 && cta.exited_in_epoch.is_none() {
                    cta.exited_in_epoch = Some((wi as u32, active.trailing_zeros(), pc));
                }
                // a pending warp collective that names an exited lane can never complete
                let pcs: Vec<u32> = (0..32)
                    .filter(|&l| cta.warps[wi].st[l] == St::Coll)
                    .map(|l| cta.warps[wi].pc[l])
                    .collect();
                if let Some(&cpc) = pcs.first() {
                    self.try_collective(cta, wi, cpc)?;
                }
            }
            Inst::Bar { .. } => {
                let w = &mut cta.warps[wi];
                for l in 0..32 {
                    if group >> l & 1 != 0 {
                        if active >> l & 1 != 0 {
                            w.st[l] = St::Bar;
                        } else {
                            w.pc[l] += 1;
                        }
                    }
                }
            }
            Inst::WarpSync { .. }
            | Inst::Shfl { .. }
            | Inst::Vote { .. }
            | Inst::Redux { .. }
            | Inst::Ldmatrix { .. }
            | Inst::Mma { .. }
            | Inst::WmmaLoad { .. }
            | Inst::WmmaStore { .. }
            | Inst::WmmaMma { .. } => {
                {
                    let w = &mut cta.warps[wi];
                    for l in 0..32 {
                        if group >> l & 1 != 0 {
                            if active >> l & 1 != 0 {
                                w.st[l] = St::Coll;
                            } else {
                                w.pc[l] += 1;
                            }
                        }
                    }
                }
                if active != 0 {
                    self.try_collective(cta, wi, pc)?;
                }
            }
            Inst::Fence => advance(cta),
            Inst::CpAsync { .. } => {
                if active != 0 {
                    self.cp_async_issue(cta, wi, pc, active)?;
                }
                advance(cta);
            }
            Inst::CpCommit => {
                for l in 0..32 {
                    if active >> l & 1 != 0 {
                        let t = &mut cta.cp[wi * 32 + l];
                        let g = std::mem::take(&mut t.uncommitted);
                        t.groups.push_back(g);
                    }
                }
                advance(cta);
            }
            Inst::CpWait { n, all } => {
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    let tid = wi * 32 + l;
                    if *all {
                        let g = std::mem::take(&mut cta.cp[tid].uncommitted);
                        cta.cp[tid].groups.push_back(g);
                    }
                    while cta.cp[tid].groups.len() > *n as usize {
                        let g = cta.cp[tid].groups.pop_front().unwrap();
                        for op in g {
                            for p in
                                &mut cta.pending[op.dst as usize..op.dst as usize + op.data.len()]
                            {
                                *p = NONE;
                            }
                            self.store_bytes(
                                cta,
                                wi,
                                l,
                                pc,
                                Loc2::Shared(op.dst),
                                &op.data,
                                MemQual::default(),
                                false,
                            )?;
                        }
                    }
                }
                advance(cta);
            }
            Inst::Ld { .. } | Inst::St { .. } | Inst::Atom { .. } => {
                if active != 0 {
                    self.mem(cta, wi, pc, active)?;
                }
                advance(cta);
            }
        }
        Ok(true)
    }

    /// Completes the warp collective at `pc` if every lane it names has arrived.
    fn try_collective(&mut self, cta: &mut Cta, wi: usize, pc: u32) -> Result<(), EmuError> {
        let ins = &self.k.insts[pc as usize];
        let mask_src = match &ins.inst {
            Inst::WarpSync { mask }
            | Inst::Shfl { mask, .. }
            | Inst::Vote { mask, .. }
            | Inst::Redux { mask, .. } => *mask,
            // .aligned warp-wide operations: every lane of the warp must take part
            Inst::Ldmatrix { .. }
            | Inst::Mma { .. }
            | Inst::WmmaLoad { .. }
            | Inst::WmmaStore { .. }
            | Inst::WmmaMma { .. } => Src::Imm(0xffff_ffff),
            _ => unreachable!(),
        };
        let aligned = matches!(
            ins.inst,
            Inst::Ldmatrix { .. }
                | Inst::Mma { .. }
                | Inst::WmmaLoad { .. }
                | Inst::WmmaStore { .. }
                | Inst::WmmaMma { .. }
        );
        let w = &cta.warps[wi];
        let waiting: u32 = (0..32)
            .filter(|&l| w.st[l] == St::Coll && w.pc[l] == pc)
            .fold(0, |m, l| m | 1 << l);
        if waiting == 0 {
            return Ok(());
        }
        let first = waiting.trailing_zeros() as usize;
        let mask = self.fetch(cta, w, wi, first, mask_src) as u32;
        for l in 0..32 {
            if waiting >> l & 1 != 0 {
                let m = self.fetch(cta, w, wi, l, mask_src) as u32;
                if m != mask {
                    return Err(EmuError::DivergentCollective {
                        detail: format!(
                            "lanes use different membermasks ({mask:#010x} vs {m:#010x})"
                        ),
                        diag: self.diag(cta, wi as u32, l as u32, pc),
                    });
                }
                if mask >> l & 1 == 0 {
                    return Err(EmuError::DivergentCollective {
                        detail: format!("executing lane {l} is not in membermask {mask:#010x}"),
                        diag: self.diag(cta, wi as u32, l as u32, pc),
                    });
                }
            }
        }
        if let Inst::WarpSync { .. } = ins.inst {
            // sm_70+: lanes may meet at different bar.warp.sync instructions with the same mask
            let mut parts = 0u32;
            for l in 0..32 {
                if mask >> l & 1 == 0 {
                    continue;
                }
                match w.st[l] {
                    St::Run => return Ok(()),
                    St::Exit => continue,
                    St::Coll => {
                        let other = &self.k.insts[w.pc[l] as usize];
                        let Inst::WarpSync { mask: ms } = other.inst else {
                            return Err(EmuError::DivergentCollective {
                                detail: format!(
                                    "bar.warp.sync membermask {mask:#010x} names lane {l}, which waits at a different collective: {}",
                                    self.describe_tid(wi as u32 * 32 + l as u32, w.pc[l])
                                ),
                                diag: self.diag(cta, wi as u32, first as u32, pc),
                            });
                        };
                        let m2 = self.fetch(cta, w, wi, l, ms) as u32;
                        if m2 != mask {
                            return Err(EmuError::DivergentCollective {
                                detail: format!("lanes use different membermasks ({mask:#010x} vs {m2:#010x})"),
                                diag: self.diag(cta, wi as u32, l as u32, w.pc[l]),
                            });
                        }
                        parts |= 1 << l;
                    }
                    St::Bar => {
                        return Err(EmuError::DivergentCollective {
                            detail: format!(
                                "bar.warp.sync membermask {mask:#010x} names lane {l}, which waits at {}",
                                self.describe_tid(wi as u32 * 32 + l as u32, w.pc[l])
                            ),
                            diag: self.diag(cta, wi as u32, first as u32, pc),
                        })
                    }
                }
            }
            let w = &mut cta.warps[wi];
            w.wepoch += 1;
            for l in 0..32 {
                if parts >> l & 1 != 0 {
                    w.st[l] = St::Run;
                    w.pc[l] += 1;
                }
            }
            self.c.warp_collectives += 1;
            return Ok(());
        }
        for l in 0..32 {
            if mask >> l & 1 == 0 || waiting >> l & 1 != 0 {
                continue;
            }
            let lin = wi as u32 * 32 + l as u32;
            match w.st[l] {
                St::Run => return Ok(()),
                // `.sync` collectives wait only for the non-exited lanes of the mask
                St::Exit if !aligned => continue,
                St::Exit => {
                    let why = if lin >= cta.nthreads {
                        "does not exist (partial warp)"
                    } else {
                        "has exited"
                    };
                    return Err(EmuError::DivergentCollective {
                        detail: format!("all 32 lanes must execute this .aligned warp-wide instruction; lane {l} {why}"),
                        diag: self.diag(cta, wi as u32, first as u32, pc),
                    });
                }
                St::Bar | St::Coll => {
                    return Err(EmuError::DivergentCollective {
                        detail: format!(
                            "membermask {mask:#010x} names lane {l}, which waits at a different synchronisation point: {}",
                            self.describe_tid(lin, w.pc[l])
                        ),
                        diag: self.diag(cta, wi as u32, first as u32, pc),
                    });
                }
            }
        }
        // all named lanes are here: execute
        let parts = waiting;
        match &ins.inst {
            Inst::WarpSync { .. } => {
                cta.warps[wi].wepoch += 1;
            }
            Inst::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                ..
            } => {
                let w = &cta.warps[wi];
                let mut vals = [0u64; 32];
                for (l, v) in vals.iter_mut().enumerate() {
                    if parts >> l & 1 != 0 {
                        *v = self.fetch(cta, w, wi, l, *a) & 0xffff_ffff;
                    }
                }
                let mut out = [(0u64, false); 32];
                for l in 0..32 {
                    if parts >> l & 1 == 0 {
                        continue;
                    }
                    let bval = (self.fetch(cta, w, wi, l, *b) & 0x1f) as i64;
                    let cv = self.fetch(cta, w, wi, l, *c) as u32;
                    let cval = (cv & 0x1f) as i64;
                    let segmask = ((cv >> 8) & 0x1f) as i64;
                    let lane = l as i64;
                    let max_lane = (lane & segmask) | (cval & !segmask);
                    let min_lane = lane & segmask;
                    let (j, pval) = match mode {
                        ShflMode::Up => (lane - bval, lane - bval >= max_lane),
                        ShflMode::Down => (lane + bval, lane + bval <= max_lane),
                        ShflMode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (bval & !segmask);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if pval { j } else { lane } as usize;
                    if parts >> j & 1 == 0 {
                        return Err(EmuError::DivergentCollective {
                            detail: format!(
                                "shfl reads lane {j}, which is not participating (undefined value)"
                            ),
                            diag: self.diag(cta, wi as u32, l as u32, pc),
                        });
                    }
                    out[l] = (vals[j], pval);
                }
                let w = &mut cta.warps[wi];
                for (l, &(v, pv)) in out.iter().enumerate() {
                    if parts >> l & 1 != 0 {
                        w.regs[*d as usize * 32 + l] = v;
                        if let Some(p) = p {
                            w.regs[*p as usize * 32 + l] = pv as u64;
                        }
                    }
                }
            }
            Inst::Vote {
                mode, d, a, neg, ..
            } => {
                let w = &cta.warps[wi];
                let mut ballot = 0u32;
                for l in 0..32 {
                    if parts >> l & 1 != 0 && ((self.fetch(cta, w, wi, l, *a) & 1 != 0) != *neg) {
                        ballot |= 1 << l;
                    }
                }
                let v = match mode {
                    VoteMode::All => (ballot == parts) as u64,
                    VoteMode::Any => (ballot != 0) as u64,
                    VoteMode::Uni => (ballot == parts || ballot == 0) as u64,
                    VoteMode::Ballot => ballot as u64,
                };
                let w = &mut cta.warps[wi];
                for l in 0..32 {
                    if parts >> l & 1 != 0 {
                        w.regs[*d as usize * 32 + l] = v;
                    }
                }
            }
            Inst::Redux { op, d, a, .. } => {
                let w = &cta.warps[wi];
                let vals: Vec<u32> = (0..32)
                    .filter(|&l| parts >> l & 1 != 0)
                    .map(|l| self.fetch(cta, w, wi, l, *a) as u32)
                    .collect();
                let v = match op {
                    ReduxOp::Add => vals.iter().fold(0u32, |x, &y| x.wrapping_add(y)),
                    ReduxOp::Min(true) => vals.iter().map(|&x| x as i32).min().unwrap() as u32,
                    ReduxOp::Max(true) => vals.iter().map(|&x| x as i32).max().unwrap() as u32,
                    ReduxOp::Min(false) => *vals.iter().min().unwrap(),
                    ReduxOp::Max(false) => *vals.iter().max().unwrap(),
                    ReduxOp::And => vals.iter().fold(u32::MAX, |x, &y| x & y),
                    ReduxOp::Or => vals.iter().fold(0, |x, &y| x | y),
                    ReduxOp::Xor => vals.iter().fold(0, |x, &y| x ^ y),
                };
                let w = &mut cta.warps[wi];
                for l in 0..32 {
                    if parts >> l & 1 != 0 {
                        w.regs[*d as usize * 32 + l] = v as u64;
                    }
                }
            }
            Inst::Ldmatrix { trans, ds, addr } => {
                self.ldmatrix(cta, wi, pc, *trans, ds, *addr)?;
            }
            Inst::WmmaLoad {
                frag,
                col,
                space,
                ety,
                ds,
                addr,
                ld,
            } => {
                self.wmma_load(cta, wi, pc, *col, *space, *ety, ds, *addr, *ld)?;
                if *frag < 2 {
                    cta.warps[wi].frag_layout.insert(ds[0], *col);
                }
            }
            Inst::WmmaStore {
                col,
                space,
                srcs,
                addr,
                ld,
            } => {
                self.wmma_store(cta, wi, pc, *col, *space, srcs, *addr, *ld)?;
            }
            Inst::WmmaMma {
                bf16,
                acol,
                bcol,
                d,
                a,
                b,
                c,
            } => {
                let w = &cta.warps[wi];
                for (name, src, want) in [("a", a[0], *acol), ("b", b[0], *bcol)] {
                    if let Src::Reg(r) = src {
                        if let Some(&got) = w.frag_layout.get(&r) {
                            if got != want {
                                let lay = |c: bool| if c { "col" } else { "row" };
                                return Err(EmuError::Unsupported {
                                    detail: format!(
                                        "wmma.mma expects a .{} {name} fragment but it was loaded as .{} (the fragment layouts differ on hardware)",
                                        lay(want),
                                        lay(got)
                                    ),
                                    diag: Some(self.diag(cta, wi as u32, 0, pc)),
                                });
                            }
                        }
                    }
                }
                let conv = |bits: u16| -> f64 {
                    if *bf16 {
                        alu::bf16_to_f32(bits) as f64
                    } else {
                        half::f16::from_bits(bits).to_f64()
                    }
                };
                let mut am = [0f64; 256];
                let mut bm = [0f64; 256];
                let mut cm = [0f64; 256];
                for l in 0..32usize {
                    for i in 0..8 {
                        let e = l * 8 + i;
                        let ra = self.fetch(cta, w, wi, l, a[i / 2]) as u32;
                        am[e] = conv((ra >> (16 * (i % 2))) as u16);
                        let rb = self.fetch(cta, w, wi, l, b[i / 2]) as u32;
                        bm[e] = conv((rb >> (16 * (i % 2))) as u16);
                        cm[e] = f32::from_bits(self.fetch(cta, w, wi, l, c[i]) as u32) as f64;
                    }
                }
                let w = &mut cta.warps[wi];
                for l in 0..32usize {
                    for i in 0..8 {
                        let e = l * 8 + i;
                        let (r, n) = (e / 16, e % 16);
                        let mut acc = cm[e];
                        for k in 0..16 {
                            acc += am[r * 16 + k] * bm[k * 16 + n];
                        }
                        let v = acc as f32;
                        let bits = if v.is_nan() {
                            alu::CANON_NAN32
                        } else {
                            v.to_bits()
                        };
                        w.regs[d[i] as usize * 32 + l] = bits as u64;
                    }
                }
            }
            Inst::Mma { bf16, d, a, b, c } => {
                let w = &cta.warps[wi];
                let conv = |bits: u16| -> f64 {
                    if *bf16 {
                        alu::bf16_to_f32(bits) as f64
                    } else {
                        half::f16::from_bits(bits).to_f64()
                    }
                };
                let mut am = [[0f64; 16]; 16];
                let mut bm = [[0f64; 8]; 16];
                let mut cm = [[0f64; 8]; 16];
                for t in 0..32usize {
                    let (g, tig) = (t >> 2, t % 4);
                    for e in 0..8 {
                        let reg = self.fetch(cta, w, wi, t, a[e / 2]) as u32;
                        let h = (reg >> (16 * (e % 2))) as u16;
                        let row = if matches!(e, 0 | 1 | 4 | 5) { g } else { g + 8 };
                        let col = 2 * tig + (e & 1) + if e >= 4 { 8 } else { 0 };
                        am[row][col] = conv(h);
                    }
                    for e in 0..4 {
                        let reg = self.fetch(cta, w, wi, t, b[e / 2]) as u32;
                        let h = (reg >> (16 * (e % 2))) as u16;
                        let k = 2 * tig + (e & 1) + if e >= 2 { 8 } else { 0 };
                        bm[k][g] = conv(h);
                    }
                    for e in 0..4 {
                        let v = f32::from_bits(self.fetch(cta, w, wi, t, c[e]) as u32) as f64;
                        let row = if e < 2 { g } else { g + 8 };
                        cm[row][2 * tig + (e & 1)] = v;
                    }
                }
                let w = &mut cta.warps[wi];
                for t in 0..32usize {
                    let (g, tig) = (t >> 2, t % 4);
                    for e in 0..4 {
                        let row = if e < 2 { g } else { g + 8 };
                        let col = 2 * tig + (e & 1);
                        // exact products, wide accumulation, one final rounding (hardware differs by ulps)
                        let mut acc = cm[row][col];
                        for k in 0..16 {
                            acc += am[row][k] * bm[k][col];
                        }
                        let r = acc as f32;
                        let bits = if r.is_nan() {
                            alu::CANON_NAN32
                        } else {
                            r.to_bits()
                        };
                        w.regs[d[e] as usize * 32 + t] = bits as u64;
                    }
                }
            }
            _ => unreachable!(),
        }
        self.c.warp_collectives += 1;
        let w = &mut cta.warps[wi];
        for l in 0..32 {
            if parts >> l & 1 != 0 {
                w.st[l] = St::Run;
                w.pc[l] += 1;
            }
        }
        Ok(())
    }

    fn cp_async_issue(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        pc: u32,
        active: u32,
    ) -> Result<(), EmuError> {
        let Inst::CpAsync {
            dst,
            src,
            size,
            src_size,
        } = self.k.insts[pc as usize].inst.clone()
        else {
            unreachable!()
        };
        let mut dlocs = [Loc2::Param(0); 32];
        let mut slocs = [Loc2::Param(0); 32];
        for l in 0..32 {
            if active >> l & 1 == 0 {
                continue;
            }
            let w = &cta.warps[wi];
            let addr_of = |a: Addr| {
                match a.base {
                    Base::Reg(r) => w.regs[r as usize * 32 + l],
                    Base::Abs(v) => v,
                }
                .wrapping_add(a.off as u64)
            };
            let (da, sa) = (addr_of(dst), addr_of(src));
            dlocs[l] = self.resolve(cta, wi, l, pc, Space::Shared, da, size, "cp.async store")?;
            slocs[l] = self.resolve(cta, wi, l, pc, Space::Global, sa, size, "cp.async load")?;
        }
        self.count_mem(&slocs, active, size, size, true, false);
        self.count_mem(&dlocs, active, size, size, false, false);
        for l in 0..32 {
            if active >> l & 1 == 0 {
                continue;
            }
            let n = match src_size {
                None => size,
                Some(s) => (self.fetch(cta, &cta.warps[wi], wi, l, s) as u32).min(size),
            };
            let mut data = vec![0u8; size as usize];
            if n > 0 {
                if let Loc2::Global(a) = slocs[l] {
                    self.load_bytes(
                        cta,
                        wi,
                        l,
                        pc,
                        Loc2::Global(a),
                        &mut data[..n as usize],
                        MemQual::default(),
                        false,
                    )?;
                }
            }
            let Loc2::Shared(o) = dlocs[l] else {
                unreachable!()
            };
            let tid = (wi * 32 + l) as u32;
            for i in o as usize..(o + size) as usize {
                if cta.pending[i] != NONE {
                    return Err(EmuError::CpAsyncPending {
                        addr: i as u64,
                        detail: format!(
                            "a second cp.async targets bytes still in flight from thread {:?}",
                            self.tid_of(cta.pending[i])
                        ),
                        diag: self.diag(cta, wi as u32, l as u32, pc),
                    });
                }
                cta.pending[i] = tid;
            }
            cta.cp[tid as usize].uncommitted.push(CpOp { dst: o, data });
        }
        Ok(())
    }

    fn ldmatrix(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        pc: u32,
        trans: bool,
        ds: &[u32],
        addr: Addr,
    ) -> Result<(), EmuError> {
        let nmat = ds.len();
        let mut rows = [[0u8; 16]; 32];
        let mut locs = [Loc2::Param(0); 32];
        let mut mask = 0u32;
        for l in 0..8 * nmat {
            let w = &cta.warps[wi];
            let a = match addr.base {
                Base::Reg(r) => w.regs[r as usize * 32 + l],
                Base::Abs(v) => v,
            }
            .wrapping_add(addr.off as u64);
            locs[l] = self.resolve(cta, wi, l, pc, Space::Shared, a, 16, "ldmatrix row load")?;
            mask |= 1 << l;
        }
        // one phase (wavefront group) per 8x8 matrix: 8 rows x 16 B
        for m in 0..nmat {
            let mut words = [0u64; 32];
            for r in 0..8 {
                let Loc2::Shared(o) = locs[m * 8 + r] else {
                    unreachable!()
                };
                for j in 0..4 {
                    words[r * 4 + j] = (o / 4 + j as u32) as u64;
                }
            }
            let nd = count_distinct(&mut words);
            let mut per_bank = [0u32; 32];
            for wd in &words[..nd] {
                per_bank[(*wd % 32) as usize] += 1;
            }
            let wf = *per_bank.iter().max().unwrap() as u64;
            let ideal = (nd as u64).div_ceil(32);
            self.c.shared_requests += 1;
            self.c.shared_wavefronts += wf;
            self.c.shared_ideal_wavefronts += ideal;
            self.c.shared_bank_conflicts += wf - ideal;
        }
        for l in 0..32 {
            if mask >> l & 1 != 0 {
                let mut buf = [0u8; 16];
                self.load_bytes(cta, wi, l, pc, locs[l], &mut buf, MemQual::default(), false)?;
                rows[l] = buf;
            }
        }
        let h = |m: usize, r: usize, c: usize| -> u32 {
            u16::from_le_bytes([rows[m * 8 + r][2 * c], rows[m * 8 + r][2 * c + 1]]) as u32
        };
        let w = &mut cta.warps[wi];
        for t in 0..32usize {
            for (m, d) in ds.iter().enumerate() {
                let v = if trans {
                    h(m, 2 * (t % 4), t / 4) | h(m, 2 * (t % 4) + 1, t / 4) << 16
                } else {
                    h(m, t / 4, 2 * (t % 4)) | h(m, t / 4, 2 * (t % 4) + 1) << 16
                };
                w.regs[*d as usize * 32 + t] = v as u64;
            }
        }
        Ok(())
    }

    /// Warp-uniform base address and stride (in elements) of a wmma load/store, checked for the
    /// 256-bit base alignment and 16-byte stride granularity that wmma requires.
    #[allow(clippy::too_many_arguments)]
    fn wmma_addr(
        &self,
        cta: &Cta,
        wi: usize,
        pc: u32,
        space: Space,
        addr: Addr,
        ld: Option<Src>,
        es: u32,
    ) -> Result<(u64, u64), EmuError> {
        let w = &cta.warps[wi];
        let base_of = |l: usize| {
            match addr.base {
                Base::Reg(r) => w.regs[r as usize * 32 + l],
                Base::Abs(v) => v,
            }
            .wrapping_add(addr.off as u64)
        };
        let ld_of = |l: usize| {
            ld.map(|s| self.fetch(cta, w, wi, l, s) as u32 as u64)
                .unwrap_or(16)
        };
        let (b0, ld0) = (base_of(0), ld_of(0));
        for l in 1..32 {
            if base_of(l) != b0 || ld_of(l) != ld0 {
                return Err(EmuError::DivergentCollective {
                    detail: format!("wmma address/stride must be the same in every lane (lane 0: {b0:#x}/{ld0}, lane {l}: {:#x}/{})", base_of(l), ld_of(l)),
                    diag: self.diag(cta, wi as u32, l as u32, pc),
                });
            }
        }
        if b0 % 32 != 0 || (ld0 * es as u64) % 16 != 0 {
            return Err(EmuError::Misaligned {
                access: "wmma (256-bit base, 16-byte stride granularity)",
                space: space_name(space),
                addr: if b0 % 32 != 0 {
                    b0
                } else {
                    b0 + ld0 * es as u64
                },
                size: if b0 % 32 != 0 { 32 } else { 16 },
                diag: self.diag(cta, wi as u32, 0, pc),
            });
        }
        Ok((b0, ld0))
    }

    #[allow(clippy::too_many_arguments)]
    fn wmma_load(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        pc: u32,
        col: bool,
        space: Space,
        ety: Ty,
        ds: &[u32],
        addr: Addr,
        ld: Option<Src>,
    ) -> Result<(), EmuError> {
        let es = ety.bytes();
        let (b0, ldv) = self.wmma_addr(cta, wi, pc, space, addr, ld, es)?;
        let mut slots = [[0u32; 8]; 32];
        for i in 0..8usize {
            let mut locs = [Loc2::Param(0); 32];
            for l in 0..32usize {
                let e = (l * 8 + i) as u64;
                let (r, c) = (e / 16, e % 16);
                let off = if col { c * ldv + r } else { r * ldv + c };
                locs[l] =
                    self.resolve(cta, wi, l, pc, space, b0 + off * es as u64, es, "wmma load")?;
            }
            self.count_mem(&locs, u32::MAX, es, es, true, false);
            for l in 0..32usize {
                let mut buf = [0u8; 4];
                self.load_bytes(
                    cta,
                    wi,
                    l,
                    pc,
                    locs[l],
                    &mut buf[..es as usize],
                    MemQual::default(),
                    false,
                )?;
                slots[l][i] = u32::from_le_bytes(buf);
            }
        }
        let w = &mut cta.warps[wi];
        for l in 0..32usize {
            for (j, d) in ds.iter().enumerate() {
                let v = if es == 4 {
                    slots[l][j]
                } else {
                    let jj = j % 4;
                    (slots[l][2 * jj] & 0xffff) | (slots[l][2 * jj + 1] << 16)
                };
                w.regs[*d as usize * 32 + l] = v as u64;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn wmma_store(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        pc: u32,
        col: bool,
        space: Space,
        srcs: &[Src],
        addr: Addr,
        ld: Option<Src>,
    ) -> Result<(), EmuError> {
        let (b0, ldv) = self.wmma_addr(cta, wi, pc, space, addr, ld, 4)?;
        for (i, s) in srcs.iter().enumerate() {
            let mut locs = [Loc2::Param(0); 32];
            for l in 0..32usize {
                let e = (l * 8 + i) as u64;
                let (r, c) = (e / 16, e % 16);
                let off = if col { c * ldv + r } else { r * ldv + c };
                locs[l] = self.resolve(cta, wi, l, pc, space, b0 + off * 4, 4, "wmma store")?;
            }
            self.count_mem(&locs, u32::MAX, 4, 4, false, false);
            for l in 0..32usize {
                let v = self.fetch(cta, &cta.warps[wi], wi, l, *s) as u32;
                self.store_bytes(
                    cta,
                    wi,
                    l,
                    pc,
                    locs[l],
                    &v.to_le_bytes(),
                    MemQual::default(),
                    false,
                )?;
            }
        }
        Ok(())
    }

    /// Resolves an address for one lane into a space-specific location, checking bounds.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        cta: &Cta,
        wi: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
        access: &'static str,
    ) -> Result<Loc2, EmuError> {
        let (space, addr) = if space == Space::Generic {
            if (SHARED_WIN..SHARED_WIN + WIN_SIZE).contains(&addr) {
                (Space::Shared, addr - SHARED_WIN)
            } else if (LOCAL_WIN..LOCAL_WIN + WIN_SIZE).contains(&addr) {
                (Space::Local, addr - LOCAL_WIN)
            } else {
                (Space::Global, addr)
            }
        } else if space == Space::Shared {
            // .shared addresses are 32-bit offsets in the shared window: `[%r+imm]` wraps modulo
            // 2^32 as on the GPU (nvcc emits `[%r+8192]` with %r = symbol + a "negative" 32-bit
            // offset, e.g. for a ring of stages indexed by c % 3).
            (space, addr & 0xffff_ffff)
        } else {
            (space, addr)
        };
        let oob = |detail: String| EmuError::OutOfBounds {
            access,
            space: space_name(space),
            addr,
            size,
            detail,
            diag: self.diag(cta, wi as u32, lane as u32, pc),
        };
        if space != Space::Param && addr % size as u64 != 0 {
            return Err(EmuError::Misaligned {
                access,
                space: space_name(space),
                addr,
                size,
                diag: self.diag(cta, wi as u32, lane as u32, pc),
            });
        }
        match space {
            Space::Global => {
                self.dev.find(addr, size as u64).map_err(oob)?;
                Ok(Loc2::Global(addr))
            }
            Space::Shared => {
                let end = addr + size as u64;
                for (s, e, _) in &cta.ranges {
                    if addr >= *s as u64 && end <= *e as u64 {
                        return Ok(Loc2::Shared(addr as u32));
                    }
                }
                let near = cta
                    .ranges
                    .iter()
                    .min_by_key(|(s, e, _)| {
                        if addr < *s as u64 {
                            *s as u64 - addr
                        } else {
                            addr.saturating_sub(*e as u64)
                        }
                    })
                    .map(|(s, e, n)| format!("nearest shared symbol `{n}` spans [{s:#x}, {e:#x})"))
                    .unwrap_or_else(|| "the kernel has no shared memory".into());
                Err(oob(format!("outside every shared symbol; {near}")))
            }
            Space::Local => {
                if addr + size as u64 <= self.k.local_bytes as u64 {
                    Ok(Loc2::Local(addr as u32))
                } else {
                    Err(oob(format!(
                        "outside the {} B local frame",
                        self.k.local_bytes
                    )))
                }
            }
            Space::Param => {
                if addr + size as u64 <= self.params.len() as u64 {
                    Ok(Loc2::Param(addr as u32))
                } else {
                    Err(oob("outside the parameter block".into()))
                }
            }
            Space::Generic => unreachable!(),
        }
    }

    fn mem(&mut self, cta: &mut Cta, wi: usize, pc: u32, active: u32) -> Result<(), EmuError> {
        let ins = &self.k.insts[pc as usize];
        let (space, ty, addr, nvec, is_load, is_atom, qual) = match &ins.inst {
            Inst::Ld {
                space,
                ty,
                ds,
                addr,
                qual,
            } => (*space, *ty, *addr, ds.len(), true, false, *qual),
            Inst::St {
                space,
                ty,
                srcs,
                addr,
                qual,
            } => (*space, *ty, *addr, srcs.len(), false, false, *qual),
            Inst::Atom {
                space, ty, addr, ..
            } => (*space, *ty, *addr, 1, false, true, MemQual::default()),
            _ => unreachable!(),
        };
        let esize = ty.bytes();
        let size = esize * nvec as u32;
        let access: &'static str = if is_atom {
            "atomic"
        } else if is_load {
            "load"
        } else {
            "store"
        };
        // resolve all lanes first (bounds + alignment), then count, then perform
        let mut locs = [Loc2::Param(0); 32];
        for l in 0..32 {
            if active >> l & 1 == 0 {
                continue;
            }
            let w = &cta.warps[wi];
            let a = match addr.base {
                Base::Reg(r) => w.regs[r as usize * 32 + l],
                Base::Abs(v) => v,
            }
            .wrapping_add(addr.off as u64);
            locs[l] = self.resolve(cta, wi, l, pc, space, a, size, access)?;
        }
        self.count_mem(&locs, active, size, esize, is_load, is_atom);
        let tid_base = wi as u32 * 32;
        // atomics run lane by lane in a seeded rotation (float atomics are order dependent)
        let rot = if is_atom {
            self.rng.below(32) as usize
        } else {
            0
        };
        for i in 0..32 {
            let l = (i + rot) % 32;
            if active >> l & 1 == 0 {
                continue;
            }
            let loc = locs[l];
            let tid = tid_base + l as u32;
            match &ins.inst {
                Inst::Ld { ds, .. } => {
                    let mut buf = [0u8; 32];
                    self.load_bytes(cta, wi, l, pc, loc, &mut buf[..size as usize], qual, false)?;
                    for (i, d) in ds.iter().enumerate() {
                        let mut v = 0u64;
                        for bi in 0..esize as usize {
                            v |= (buf[i * esize as usize + bi] as u64) << (8 * bi);
                        }
                        if ty.signed() {
                            v = alu::sext(v, esize * 8) as u64;
                        }
                        cta.warps[wi].regs[*d as usize * 32 + l] = v;
                    }
                }
                Inst::St { srcs, .. } => {
                    let mut buf = [0u8; 32];
                    for (i, s) in srcs.iter().enumerate() {
                        let v = self.fetch(cta, &cta.warps[wi], wi, l, *s);
                        for bi in 0..esize as usize {
                            buf[i * esize as usize + bi] = (v >> (8 * bi)) as u8;
                        }
                    }
                    self.store_bytes(cta, wi, l, pc, loc, &buf[..size as usize], qual, false)?;
                }
                Inst::Atom {
                    op,
                    d,
                    b,
                    c,
                    space: sp,
                    ..
                } => {
                    let mut buf = [0u8; 8];
                    self.load_bytes(cta, wi, l, pc, loc, &mut buf[..size as usize], qual, true)?;
                    let old = u64::from_le_bytes(buf) & alu::mask(esize * 8);
                    let w = &cta.warps[wi];
                    let bv = self.fetch(cta, w, wi, l, *b) & alu::mask(esize * 8);
                    let cv = self.fetch(cta, w, wi, l, *c) & alu::mask(esize * 8);
                    let global = matches!(loc, Loc2::Global(_));
                    let new = atom_apply(*op, ty, old, bv, cv, global && *sp != Space::Shared);
                    self.store_bytes(
                        cta,
                        wi,
                        l,
                        pc,
                        loc,
                        &new.to_le_bytes()[..size as usize],
                        qual,
                        true,
                    )?;
                    if let Some(d) = d {
                        let old = if ty.signed() {
                            alu::sext(old, esize * 8) as u64
                        } else {
                            old
                        };
                        cta.warps[wi].regs[*d as usize * 32 + l] = old;
                    }
                    self.c.atomics += 1;
                }
                _ => unreachable!(),
            }
            let _ = tid;
        }
        Ok(())
    }

    fn count_mem(
        &mut self,
        locs: &[Loc2; 32],
        active: u32,
        size: u32,
        esize: u32,
        is_load: bool,
        is_atom: bool,
    ) {
        let first = locs[active.trailing_zeros() as usize];
        match first {
            Loc2::Global(_) => {
                // distinct 32-B sectors and distinct lane addresses, without allocation
                let mut sec = [0u64; 64];
                let mut ns = 0;
                let mut uniq = [0u64; 32];
                let mut nu = 0;
                for l in 0..32 {
                    if active >> l & 1 == 0 {
                        continue;
                    }
                    if let Loc2::Global(a) = locs[l] {
                        uniq[nu] = a;
                        nu += 1;
                        let mut s = a >> 5;
                        while s <= (a + size as u64 - 1) >> 5 && ns < 64 {
                            sec[ns] = s;
                            ns += 1;
                            s += 1;
                        }
                    }
                }
                let n = count_distinct(&mut sec[..ns]) as u64;
                let seen = if is_load && !is_atom { &mut self.load_sectors_seen } else { &mut self.store_sectors_seen };
                seen.extend(sec[..n as usize].iter().copied());
                let bytes = count_distinct(&mut uniq[..nu]) as u64 * size as u64;
                self.c.global_bytes += active.count_ones() as u64 * size as u64;
                self.c.global_ideal_sectors += bytes.div_ceil(32);
                if is_atom {
                    self.c.global_atomic_requests += 1;
                    self.c.global_atomic_sectors += n;
                } else if is_load {
                    self.c.global_load_requests += 1;
                    self.c.global_load_sectors += n;
                } else {
                    self.c.global_store_requests += 1;
                    self.c.global_store_sectors += n;
                }
            }
            Loc2::Shared(_) => {
                let _ = esize;
                let lanes_per_phase = match size {
                    0..=4 => 32,
                    5..=8 => 16,
                    _ => 8,
                };
                let mut wavefronts = 0u64;
                let mut ideal = 0u64;
                for ph in 0..(32 / lanes_per_phase) {
                    let mut wbuf = [0u64; 128];
                    let mut nw = 0usize;
                    for l in ph * lanes_per_phase..(ph + 1) * lanes_per_phase {
                        if active >> l & 1 == 0 {
                            continue;
                        }
                        if let Loc2::Shared(a) = locs[l] {
                            let mut wd = a / 4;
                            while wd <= (a + size - 1) / 4 && nw < 128 {
                                wbuf[nw] = wd as u64;
                                nw += 1;
                                wd += 1;
                            }
                        }
                    }
                    if nw == 0 {
                        continue;
                    }
                    let words = &mut wbuf[..nw];
                    let nd = count_distinct(words);
                    let mut per_bank = [0u32; 32];
                    for wd in &words[..nd] {
                        per_bank[(*wd % 32) as usize] += 1;
                    }
                    wavefronts += *per_bank.iter().max().unwrap() as u64;
                    ideal += (nd as u64).div_ceil(32);
                }
                self.c.shared_requests += 1;
                self.c.shared_wavefronts += wavefronts;
                self.c.shared_ideal_wavefronts += ideal;
                self.c.shared_bank_conflicts += wavefronts - ideal;
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn load_bytes(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        l: usize,
        pc: u32,
        loc: Loc2,
        out: &mut [u8],
        qual: MemQual,
        atomic: bool,
    ) -> Result<(), EmuError> {
        let n = out.len();
        let tid = wi as u32 * 32 + l as u32;
        match loc {
            Loc2::Param(o) => out.copy_from_slice(&self.params[o as usize..o as usize + n]),
            Loc2::Global(a) => {
                let (b, _) = self.dev.find(a, n as u64).unwrap();
                let al = self.dev.allocs.get_mut(&b).unwrap();
                let o = (a - b) as usize;
                for i in 0..n {
                    let f = al.flags[o + i];
                    if self.opts.initcheck && f & F_INIT == 0 {
                        return Err(EmuError::UninitRead {
                            space: "global",
                            addr: a + i as u64,
                            size: n as u32,
                            diag: self.diag(cta, wi as u32, l as u32, pc),
                        });
                    }
                    if qual.nc && self.opts.memcheck && f & F_WRITTEN != 0 {
                        return Err(EmuError::NcWrite {
                            addr: a + i as u64,
                            detail: "ld.global.nc reads a byte written earlier in this launch (read-only data must not be written during the kernel; drop __restrict__/__ldg)".into(),
                            diag: self.diag(cta, wi as u32, l as u32, pc),
                        });
                    }
                }
                if qual.nc {
                    al.dirty = true;
                    for f in &mut al.flags[o..o + n] {
                        *f |= F_NC_READ;
                    }
                }
                out.copy_from_slice(&al.data[o..o + n]);
                if self.opts.global_racecheck && !atomic && !qual.strong && !qual.nc {
                    self.global_race(cta, wi, l, pc, a, n, false)?;
                }
            }
            Loc2::Shared(o) => {
                let o = o as usize;
                self.check_pending(cta, wi, l, pc, o, n)?;
                if self.opts.initcheck && cta.shared_init[o..o + n].iter().any(|&x| !x) {
                    return Err(EmuError::UninitRead {
                        space: "shared",
                        addr: o as u64,
                        size: n as u32,
                        diag: self.diag(cta, wi as u32, l as u32, pc),
                    });
                }
                if self.opts.racecheck {
                    self.shared_race(cta, wi, l, pc, o, n, false, atomic)?;
                }
                out.copy_from_slice(&cta.shared[o..o + n]);
            }
            Loc2::Local(o) => {
                let base = (tid as usize) * self.k.local_bytes as usize + o as usize;
                if self.opts.initcheck && cta.local_init[base..base + n].iter().any(|&x| !x) {
                    return Err(EmuError::UninitRead {
                        space: "local",
                        addr: o as u64,
                        size: n as u32,
                        diag: self.diag(cta, wi as u32, l as u32, pc),
                    });
                }
                out.copy_from_slice(&cta.local[base..base + n]);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn store_bytes(
        &mut self,
        cta: &mut Cta,
        wi: usize,
        l: usize,
        pc: u32,
        loc: Loc2,
        data: &[u8],
        qual: MemQual,
        atomic: bool,
    ) -> Result<(), EmuError> {
        let n = data.len();
        let tid = wi as u32 * 32 + l as u32;
        match loc {
            Loc2::Param(_) => unreachable!(),
            Loc2::Global(a) => {
                if self.opts.global_racecheck && !atomic && !qual.strong {
                    self.global_race(cta, wi, l, pc, a, n, true)?;
                }
                let (b, _) = self.dev.find(a, n as u64).unwrap();
                let al = self.dev.allocs.get_mut(&b).unwrap();
                let o = (a - b) as usize;
                if self.opts.memcheck {
                    for i in 0..n {
                        if al.flags[o + i] & F_NC_READ != 0 {
                            return Err(EmuError::NcWrite {
                                addr: a + i as u64,
                                detail: "store to a byte that was read through ld.global.nc in this launch".into(),
                                diag: self.diag(cta, wi as u32, l as u32, pc),
                            });
                        }
                    }
                }
                al.data[o..o + n].copy_from_slice(data);
                al.dirty = true;
                for f in &mut al.flags[o..o + n] {
                    *f |= F_INIT | F_WRITTEN;
                }
            }
            Loc2::Shared(o) => {
                let o = o as usize;
                self.check_pending(cta, wi, l, pc, o, n)?;
                if self.opts.racecheck {
                    self.shared_race(cta, wi, l, pc, o, n, true, atomic)?;
                }
                cta.shared[o..o + n].copy_from_slice(data);
                for x in &mut cta.shared_init[o..o + n] {
                    *x = true;
                }
            }
            Loc2::Local(o) => {
                let base = (tid as usize) * self.k.local_bytes as usize + o as usize;
                cta.local[base..base + n].copy_from_slice(data);
                for x in &mut cta.local_init[base..base + n] {
                    *x = true;
                }
            }
        }
        Ok(())
    }

    fn check_pending(
        &self,
        cta: &Cta,
        wi: usize,
        l: usize,
        pc: u32,
        o: usize,
        n: usize,
    ) -> Result<(), EmuError> {
        for i in o..o + n {
            if cta.pending[i] != NONE {
                return Err(EmuError::CpAsyncPending {
                    addr: i as u64,
                    detail: format!(
                        "the byte is the destination of a cp.async issued by thread {:?} that has not completed (cp.async.wait_group by the issuing thread, then __syncwarp/__syncthreads, must come first)",
                        self.tid_of(cta.pending[i])
                    ),
                    diag: self.diag(cta, wi as u32, l as u32, pc),
                });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn shared_race(
        &self,
        cta: &mut Cta,
        wi: usize,
        l: usize,
        pc: u32,
        o: usize,
        n: usize,
        write: bool,
        atomic: bool,
    ) -> Result<(), EmuError> {
        let tid = wi as u32 * 32 + l as u32;
        let epoch = cta.epoch;
        let wep = cta.warps[wi].wepoch;
        let ordered = |ptid: u32, pep: u32, pwep: u32, cta: &Cta| -> bool {
            ptid == tid
                || pep < epoch
                || (ptid / 32 == tid / 32 && pwep < cta.warps[(ptid / 32) as usize].wepoch)
        };
        // bytes of one access usually share their shadow: reuse the first byte's verdict
        let mut memo: Option<(Sh, Sh)> = None;
        for i in o..o + n {
            let s = cta.shadow[i];
            let before = s;
            if let Some((old, new)) = memo {
                if old == s {
                    cta.shadow[i] = new;
                    continue;
                }
            }
            if s.w_tid != NONE
                && !ordered(s.w_tid, s.w_epoch, s.w_wep, cta)
                && !(s.w_atom && atomic)
            {
                let kind = if write {
                    "write after write"
                } else {
                    "read after write"
                };
                return Err(EmuError::SharedRace {
                    kind,
                    addr: i as u64,
                    detail: format!(
                        "unordered with the earlier write by {} (no bar.sync / __syncwarp between them)",
                        self.describe_tid(s.w_tid, s.w_pc)
                    ),
                    diag: self.diag(cta, wi as u32, l as u32, pc),
                });
            }
            if write
                && s.r_tid != NONE
                && (s.r_tid != tid || s.r_multi)
                && !ordered(s.r_tid, s.r_epoch, s.r_wep, cta)
            {
                return Err(EmuError::SharedRace {
                    kind: "write after read",
                    addr: i as u64,
                    detail: format!(
                        "unordered with the earlier read by {}{} (no bar.sync / __syncwarp between them)",
                        self.describe_tid(s.r_tid, s.r_pc),
                        if s.r_multi { " and others" } else { "" }
                    ),
                    diag: self.diag(cta, wi as u32, l as u32, pc),
                });
            }
            let s = &mut cta.shadow[i];
            if write {
                *s = Sh {
                    w_tid: tid,
                    w_epoch: epoch,
                    w_wep: wep,
                    w_pc: pc,
                    w_atom: atomic,
                    r_tid: NONE,
                    r_epoch: 0,
                    r_wep: 0,
                    r_pc: 0,
                    r_multi: false,
                };
            } else if s.r_tid == NONE || s.r_epoch < epoch || (s.r_tid == tid && !s.r_multi) {
                s.r_tid = tid;
                s.r_epoch = epoch;
                s.r_wep = wep;
                s.r_pc = pc;
                s.r_multi = false;
            } else if s.r_tid != tid {
                s.r_multi = true;
            }
            memo = Some((before, cta.shadow[i]));
        }
        Ok(())
    }

    /// Global-memory race check: plain accesses from different CTAs to the same byte (at least one
    /// a write) are always unordered; inside a CTA the barrier / warp-sync epochs order them.
    #[allow(clippy::too_many_arguments)]
    fn global_race(
        &mut self,
        cta: &Cta,
        wi: usize,
        l: usize,
        pc: u32,
        a: u64,
        n: usize,
        write: bool,
    ) -> Result<(), EmuError> {
        let tid = wi as u32 * 32 + l as u32;
        let me = cta.lin;
        let epoch = cta.epoch;
        let wep = cta.warps[wi].wepoch;
        let ordered = |ptid: u32, pep: u32, pwep: u32| -> bool {
            ptid == tid
                || pep < epoch
                || (ptid / 32 == tid / 32 && pwep < cta.warps[(ptid / 32) as usize].wepoch)
        };
        for i in 0..n as u64 {
            let e = *self.gshadow.get(&(a + i)).unwrap_or(&GSH0);
            // (what, other cta, other tid, other pc, cross-CTA?)
            let mut clash: Option<(&'static str, u32, u32, u32)> = None;
            if e.w_cta != NONE && (e.w_cta != me || !ordered(e.w_tid, e.w_epoch, e.w_wep)) {
                clash = Some(("write", e.w_cta, e.w_tid, e.w_pc));
            } else if write
                && e.r_cta != NONE
                && (e.r_cta != me
                    || e.r_multi_cta
                    || ((e.r_tid != tid || e.r_multi_thread)
                        && !ordered(e.r_tid, e.r_epoch, e.r_wep)))
            {
                clash = Some(("read", e.r_cta, e.r_tid, e.r_pc));
            }
            if let Some((what, ocl, otid, opc)) = clash {
                let g = self.cfg.grid;
                let oc = [ocl % g[0], (ocl / g[0]) % g[1], ocl / (g[0] * g[1])];
                let kind = match (what, write) {
                    ("write", true) => "write after write",
                    ("write", false) => "read after write",
                    _ => "write after read",
                };
                let why = if ocl != me {
                    "CTAs are unordered within a launch (use atomics, strong .cg/.volatile accesses, or separate launches)"
                } else {
                    "same CTA, no bar.sync / __syncwarp between them"
                };
                return Err(EmuError::GlobalRace {
                    kind,
                    addr: a + i,
                    detail: format!(
                        "plain {what} by CTA ({},{},{}) {}; {why}",
                        oc[0],
                        oc[1],
                        oc[2],
                        self.describe_tid(otid, opc)
                    ),
                    diag: self.diag(cta, wi as u32, l as u32, pc),
                });
            }
            let e = self.gshadow.entry(a + i).or_insert(GSH0);
            if write {
                *e = GSh {
                    w_cta: me,
                    w_tid: tid,
                    w_pc: pc,
                    w_epoch: epoch,
                    w_wep: wep,
                    ..GSH0
                };
            } else if e.r_cta == NONE {
                e.r_cta = me;
                e.r_tid = tid;
                e.r_pc = pc;
                e.r_epoch = epoch;
                e.r_wep = wep;
            } else if e.r_cta != me {
                e.r_multi_cta = true;
                e.r_cta = me;
                e.r_tid = tid;
                e.r_pc = pc;
                e.r_epoch = epoch;
                e.r_wep = wep;
                e.r_multi_thread = false;
            } else if ordered(e.r_tid, e.r_epoch, e.r_wep) && !e.r_multi_thread {
                e.r_tid = tid;
                e.r_pc = pc;
                e.r_epoch = epoch;
                e.r_wep = wep;
            } else if e.r_tid != tid {
                e.r_multi_thread = true;
            }
        }
        Ok(())
    }
}

/// Sorts and dedups in place; returns the number of distinct values (now at the front).
fn count_distinct(v: &mut [u64]) -> usize {
    if v.is_empty() {
        return 0;
    }
    // fast path: already strictly increasing (the common coalesced case)
    if v.windows(2).all(|w| w[0] < w[1]) {
        return v.len();
    }
    v.sort_unstable();
    let mut n = 1;
    for i in 1..v.len() {
        if v[i] != v[n - 1] {
            v[n] = v[i];
            n += 1;
        }
    }
    n
}

fn atom_apply(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64, global_ftz: bool) -> u64 {
    let w = ty.bits();
    match (op, ty) {
        (AtomOp::Add, Ty::F32) => {
            let f = |x: f32| if global_ftz { alu::ftz32(x) } else { x };
            let r = f(f(f32::from_bits(old as u32)) + f(f32::from_bits(b as u32)));
            let r = if r.is_nan() {
                f32::from_bits(alu::CANON_NAN32)
            } else {
                r
            };
            r.to_bits() as u64
        }
        (AtomOp::Add, Ty::F64) => (f64::from_bits(old) + f64::from_bits(b)).to_bits(),
        (AtomOp::Add, _) => old.wrapping_add(b) & alu::mask(w),
        (AtomOp::Min, _) | (AtomOp::Max, _) => {
            let less = if ty.signed() {
                alu::sext(b, w) < alu::sext(old, w)
            } else {
                b < old
            };
            let take_b = if op == AtomOp::Min {
                less
            } else {
                !less && b != old
            };
            if take_b {
                b
            } else {
                old
            }
        }
        (AtomOp::And, _) => old & b,
        (AtomOp::Or, _) => old | b,
        (AtomOp::Xor, _) => old ^ b,
        (AtomOp::Exch, _) => b,
        (AtomOp::Cas, _) => {
            if old == b {
                c
            } else {
                old
            }
        }
        (AtomOp::Inc, _) => {
            if old >= b {
                0
            } else {
                old + 1
            }
        }
        (AtomOp::Dec, _) => {
            if old == 0 || old > b {
                b
            } else {
                old - 1
            }
        }
    }
}
