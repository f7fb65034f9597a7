//! A *modeled* GPU time from a launch's PTX-level counters: per-pipe issue times, an L2 model,
//! DRAM, occupancy from registers and shared memory, and latency hiding. Nothing here is a
//! measurement; every figure is a named constant of [`GpuSpec`] with its source.
//!
//! # The model
//! For a launch of `C` CTAs on a GPU with `S` SMs, each pipe `p` has a total work `W_p` (warp
//! instructions, shared wavefronts, sectors, FLOPs) and a per-SM rate `r_p` per clock. With
//! `c = min(CTAs per SM by occupancy, ⌈C/S⌉)` CTAs resident per SM and `waves = ⌈C/(S·c)⌉`,
//! the SM-side time is `t_p = (W_p / C) · c · waves / (r_p · f_clk · e)`: the busiest SM runs
//! `c · waves` CTAs (wave quantization; a launch of 8 CTAs uses 8 SMs), and `e ≤ 1` is the
//! latency-hiding efficiency of the issue pipes (below). The memory levels are shared by all
//! SMs: `t_L2 = requested sectors · 32 B / L2 bandwidth`, `t_DRAM = modeled DRAM bytes /
//! (DRAM bandwidth · m)`, `m ≤ 1` the memory-level parallelism factor (below).
//! **Modeled time = max over all pipes and memory levels** (they overlap perfectly: an upper
//! bound on speed, a lower bound on time, up to the model's own assumptions).
//!
//! * Pipes (the instruction class of every issued warp instruction decides its pipe): issue
//!   (every warp instruction, 1 per scheduler per clock), FP32 (`FloatAlu`), integer/move/
//!   predicate ALU, FP64, SFU (`Transcendental`), conversions, the MIO/LSU pipe (every global,
//!   shared, local, atomic, `cp.async`, `ldmatrix` and warp-collective instruction), shared-memory
//!   wavefronts (bank conflicts included; `ldmatrix` one per 8×8 phase), L1 sectors (global
//!   sectors through the LSU), and the tensor pipe (`mma.m16n8k16` = 4096 FLOPs, `wmma`
//!   m16n16k16 = 8192 FLOPs, at [`GpuSpec::mma_sync_flops`]).
//! * L2: every requested global sector passes through L2. A sector's first touch in the launch
//!   is compulsory DRAM traffic ([`Counters::global_unique_load_sectors`] and stores). Re-reads
//!   hit L2 when the launch's footprint (distinct sectors · 32 B) fits in the L2; when it does
//!   not, a re-read hits with probability `capacity / footprint` (a fully associative cache of
//!   random reuse in steady state) and the rest are DRAM reads again. Stores are written back
//!   once per distinct sector. This ignores reuse distance and the CTA schedule: a re-read
//!   pattern whose working set fits even though the footprint does not is modeled pessimistically.
//! * Occupancy: CTAs per SM = min(by warps, by registers (allocated per warp in units of 256),
//!   by shared memory (+1 KiB reserved per CTA), by the CTA limit).
//! * Latency hiding: issue-side pipes run at `e = min(1, warps per scheduler / 4)` (≈ 4 cycles of
//!   dependent-issue latency to cover, no ILP assumed). Memory: Little's law, bytes in flight
//!   per SM = resident warps · bytes per global load request · loads in flight per warp, where
//!   loads in flight = load requests per warp / (barrier waits + `cp.async` waits + 1), clamped
//!   to 1..=8 (a heuristic: loads between two synchronizations are independent); `m = min(1,
//!   active SMs · bytes in flight / (DRAM bandwidth · DRAM latency))`.

use std::fmt;

use crate::ir::OpClass;
use crate::report::{Counters, Report};

/// Architecture figures used by the model. Sources per field.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSpec {
    pub name: &'static str,
    pub sms: u32,
    /// SM clock used to turn per-clock rates into rates (the clock of the datasheet's FP32 figure)
    pub clock_hz: f64,
    pub dram_bytes_per_s: f64,
    pub dram_latency_s: f64,
    pub l2_bytes: f64,
    pub l2_bytes_per_s: f64,
    /// dense bf16/f16 tensor FLOP/s reachable with `mma.sync` (FP32 accumulate)
    pub mma_sync_flops: f64,
    /// the dense bf16 tensor peak of the datasheet (wgmma on Hopper): the floor's rate
    pub dense_tensor_peak_flops: f64,
    pub fp32_flops: f64,
    /// thread results per clock per SM
    pub fp32_lanes: f64,
    pub int_lanes: f64,
    pub fp64_lanes: f64,
    pub sfu_lanes: f64,
    pub convert_lanes: f64,
    pub lsu_lanes: f64,
    pub schedulers: f64,
    pub shared_wavefronts_per_clk: f64,
    pub l1_sectors_per_clk: f64,
    pub max_warps_per_sm: u32,
    pub max_ctas_per_sm: u32,
    pub regs_per_sm: u32,
    pub shared_bytes_per_sm: u32,
    pub shared_reserved_per_cta: u32,
}

/// H100 SXM5. Datasheet/whitepaper: 132 SMs, 3.35 TB/s HBM3, 50 MB L2, 989 TFLOP/s dense bf16
/// (wgmma), 67 TFLOP/s FP32 (= 132 · 128 lanes · 2 · 1.98 GHz), 64 FP64 lanes (33.5 TFLOP/s);
/// 228 KiB shared per SM, 64 warps, 32 CTAs, 64 K registers per SM. Per-clock rates of INT32
/// (64), SFU (16), conversions (16), LSU (32): CUDA C++ Programming Guide, throughput table for
/// compute capability 9.0. `mma.sync`: 494.5 TFLOP/s = half of the dense peak, i.e. the sm_80
/// rate of 2048 dense FLOP/clk/SM on 132 SMs at 1.83 GHz (the clock of the 989 figure, 4096
/// FLOP/clk/SM) — Hopper's full tensor rate is only reachable through wgmma (Luo et al.,
/// "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture", arXiv 2402.13499; FA3
/// reports FlashAttention-2's mma.sync kernels at ~35 % of H100 peak; an r/CUDA measurement of
/// warp-level MMA loops saw ~50 % of peak). L2 bandwidth (no datasheet figure): A100's
/// whitepaper 5120 B/clk at 1.98 GHz = 10.1 TB/s. DRAM latency: 500 ns, an assumption in the
/// 400–600 ns range that microbenchmarks report for HBM on A100/H100.
pub const H100_SXM: GpuSpec = GpuSpec {
    name: "H100 SXM",
    sms: 132,
    clock_hz: 1.98e9,
    dram_bytes_per_s: 3.35e12,
    dram_latency_s: 500e-9,
    l2_bytes: 50e6,
    l2_bytes_per_s: 5120.0 * 1.98e9,
    mma_sync_flops: 132.0 * 2048.0 * 1.83e9,
    dense_tensor_peak_flops: 989e12,
    fp32_flops: 67e12,
    fp32_lanes: 128.0,
    int_lanes: 64.0,
    fp64_lanes: 64.0,
    sfu_lanes: 16.0,
    convert_lanes: 16.0,
    lsu_lanes: 32.0,
    schedulers: 4.0,
    shared_wavefronts_per_clk: 1.0,
    l1_sectors_per_clk: 4.0,
    max_warps_per_sm: 64,
    max_ctas_per_sm: 32,
    regs_per_sm: 65536,
    shared_bytes_per_sm: 228 * 1024,
    shared_reserved_per_cta: 1024,
};

/// A100 SXM4 80 GB. Datasheet/whitepaper: 108 SMs at 1.41 GHz, 2.0 TB/s HBM2e, 40 MB L2,
/// 312 TFLOP/s dense bf16 (mma.sync is the full rate on Ampere), 19.5 TFLOP/s FP32 (64 lanes),
/// 32 FP64 lanes, L2 5120 B/clk; 164 KiB shared per SM, 64 warps, 32 CTAs, 64 K registers;
/// per-clock rates from the programming guide's table for compute capability 8.0.
pub const A100_SXM: GpuSpec = GpuSpec {
    name: "A100 SXM",
    sms: 108,
    clock_hz: 1.41e9,
    dram_bytes_per_s: 2.0e12,
    dram_latency_s: 500e-9,
    l2_bytes: 40e6,
    l2_bytes_per_s: 5120.0 * 1.41e9,
    mma_sync_flops: 312e12,
    dense_tensor_peak_flops: 312e12,
    fp32_flops: 19.5e12,
    fp32_lanes: 64.0,
    int_lanes: 64.0,
    fp64_lanes: 32.0,
    sfu_lanes: 16.0,
    convert_lanes: 16.0,
    lsu_lanes: 32.0,
    schedulers: 4.0,
    shared_wavefronts_per_clk: 1.0,
    l1_sectors_per_clk: 4.0,
    max_warps_per_sm: 64,
    max_ctas_per_sm: 32,
    regs_per_sm: 65536,
    shared_bytes_per_sm: 164 * 1024,
    shared_reserved_per_cta: 1024,
};

/// A kernel's per-CTA resources: threads and shared memory from the launch, registers per
/// thread from `ptxas -v` (the PTX does not know them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub threads_per_cta: u32,
    pub regs_per_thread: u32,
    pub shared_bytes_per_cta: u32,
}

/// Resident CTAs and warps per SM and what limits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub ctas_per_sm: u32,
    pub warps_per_sm: u32,
    /// "warps", "registers", "shared memory" or "CTA slots"
    pub limiter: &'static str,
}

/// CTAs per SM = min over warps, registers (per warp, rounded up to 256), shared memory (plus
/// the per-CTA reservation) and CTA slots; 0 when one CTA does not fit at all.
pub fn occupancy(gpu: &GpuSpec, res: &KernelResources) -> Occupancy {
    let warps = res.threads_per_cta.div_ceil(32).max(1);
    let regs_per_warp = (res.regs_per_thread.max(1) * 32).div_ceil(256) * 256;
    let by_warps = gpu.max_warps_per_sm / warps;
    let by_regs = gpu.regs_per_sm / (regs_per_warp * warps);
    let shared = res.shared_bytes_per_cta + gpu.shared_reserved_per_cta;
    let by_shared = gpu.shared_bytes_per_sm / shared;
    let mut best = (gpu.max_ctas_per_sm, "CTA slots");
    for cand in [(by_warps, "warps"), (by_regs, "registers"), (by_shared, "shared memory")] {
        if cand.0 < best.0 {
            best = cand;
        }
    }
    Occupancy { ctas_per_sm: best.0, warps_per_sm: best.0 * warps, limiter: best.1 }
}

/// The L2 model's traffic split (see the module doc for the reuse rule).
#[derive(Clone, Debug, PartialEq)]
pub struct L2Model {
    /// every global sector requested (loads, stores, atomics, `cp.async` sources)
    pub requested_sectors: f64,
    pub unique_load_sectors: f64,
    pub unique_store_sectors: f64,
    /// distinct bytes touched by the launch
    pub footprint_bytes: f64,
    /// load sectors served by L2 (re-reads that the model keeps resident)
    pub l2_hit_sectors: f64,
    /// compulsory reads + re-reads that miss + one write-back per distinct written sector
    pub dram_bytes: f64,
}

/// Splits a launch's global traffic into L2 hits and DRAM bytes on `gpu`.
pub fn l2_model(c: &Counters, gpu: &GpuSpec) -> L2Model {
    let load = c.global_load_sectors as f64;
    let requested = c.global_sectors() as f64;
    let (ul, us) = (c.global_unique_load_sectors as f64, c.global_unique_store_sectors as f64);
    let ul = ul.min(load);
    let footprint = 32.0 * (ul + us);
    let rereads = load - ul;
    let hit_rate = if footprint <= gpu.l2_bytes { 1.0 } else { gpu.l2_bytes / footprint };
    let hits = rereads * hit_rate;
    L2Model {
        requested_sectors: requested,
        unique_load_sectors: ul,
        unique_store_sectors: us,
        footprint_bytes: footprint,
        l2_hit_sectors: hits,
        dram_bytes: 32.0 * (ul + (rereads - hits) + us),
    }
}

/// One pipe or memory level of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pipe {
    Issue,
    Fp32,
    Alu,
    Fp64,
    Sfu,
    Convert,
    Lsu,
    SharedWavefronts,
    L1Sectors,
    Tensor,
    L2,
    Dram,
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pipe::Issue => "issue",
            Pipe::Fp32 => "FP32",
            Pipe::Alu => "ALU",
            Pipe::Fp64 => "FP64",
            Pipe::Sfu => "SFU",
            Pipe::Convert => "convert",
            Pipe::Lsu => "LSU/MIO",
            Pipe::SharedWavefronts => "shared wavefronts",
            Pipe::L1Sectors => "L1 sectors",
            Pipe::Tensor => "tensor (mma.sync)",
            Pipe::L2 => "L2",
            Pipe::Dram => "DRAM",
        })
    }
}

/// The pipe an instruction class issues to (besides the issue slot every instruction takes).
pub fn pipe_of(class: OpClass) -> Option<Pipe> {
    use OpClass::*;
    Some(match class {
        IntAlu | Move | Predicate => Pipe::Alu,
        FloatAlu => Pipe::Fp32,
        Fp64 => Pipe::Fp64,
        Transcendental => Pipe::Sfu,
        Convert => Pipe::Convert,
        LoadGlobal | StoreGlobal | LoadShared | StoreShared | LoadLocal | StoreLocal | Atomic | AsyncCopy
        | WarpCollective => Pipe::Lsu,
        TensorCore => Pipe::Tensor,
        LoadParam | Control | Barrier | Fence => return None,
    })
}

/// Dense FLOPs of the tensor-core instructions of a launch, from their forms:
/// `mma*.m16n8k16` 2·16·8·16 = 4096 per warp instruction, `wmma.mma` m16n16k16 8192.
pub fn tensor_flops(c: &Counters) -> f64 {
    c.by_form
        .iter()
        .map(|(form, n)| {
            let per = if form.starts_with("wmma.mma") {
                8192.0
            } else if form.starts_with("mma") && form.contains("m16n8k16") {
                4096.0
            } else if form.starts_with("mma") && form.contains("m16n8k8") {
                2048.0
            } else {
                0.0
            };
            per * n.warp as f64
        })
        .sum()
}

/// A modeled launch: per-pipe times, the L2 split, occupancy and the limiting pipe.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfModel {
    pub gpu: &'static str,
    pub occupancy: Occupancy,
    /// CTAs resident per SM in the busiest wave and the number of waves
    pub resident_ctas: u32,
    pub waves: u64,
    /// latency-hiding efficiency of the issue-side pipes and of DRAM (Little's law)
    pub issue_efficiency: f64,
    pub memory_parallelism: f64,
    pub l2: L2Model,
    pub tensor_flops: f64,
    /// (pipe, modeled seconds), every pipe with work
    pub pipes: Vec<(Pipe, f64)>,
    pub modeled_time_s: f64,
    pub limiter: Pipe,
}

impl PerfModel {
    pub fn time_of(&self, pipe: Pipe) -> f64 {
        self.pipes.iter().find(|p| p.0 == pipe).map_or(0.0, |p| p.1)
    }
}

impl fmt::Display for PerfModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} model (not a measurement): {:.3} us limited by {}; occupancy {} CTAs/SM ({} warps, by {}), {} wave(s); DRAM {:.3e} B, L2 hits {:.0} of {:.0} sectors; pipes:",
            self.gpu,
            self.modeled_time_s * 1e6,
            self.limiter,
            self.occupancy.ctas_per_sm,
            self.occupancy.warps_per_sm,
            self.occupancy.limiter,
            self.waves,
            self.l2.dram_bytes,
            self.l2.l2_hit_sectors,
            self.l2.requested_sectors
        )?;
        for (p, t) in &self.pipes {
            write!(f, " {p} {:.3} us;", t * 1e6)?;
        }
        Ok(())
    }
}

/// Models `report` on `gpu` with `regs_per_thread` from ptxas (threads and shared memory come
/// from the report). `None` when one CTA does not fit on an SM.
pub fn model(report: &Report, gpu: &GpuSpec, regs_per_thread: u32) -> Option<PerfModel> {
    let res = KernelResources {
        threads_per_cta: report.threads_per_cta,
        regs_per_thread,
        shared_bytes_per_cta: report.shared_bytes_per_cta,
    };
    let occ = occupancy(gpu, &res);
    if occ.ctas_per_sm == 0 {
        return None;
    }
    let c = &report.counters;
    let ctas = report.total_ctas.max(1);
    let warps_per_cta = res.threads_per_cta.div_ceil(32).max(1) as f64;
    let resident = (occ.ctas_per_sm as u64).min(ctas.div_ceil(gpu.sms as u64)).max(1);
    let waves = ctas.div_ceil(gpu.sms as u64 * resident);
    let active_sms = ctas.min(gpu.sms as u64) as f64;
    let warps_per_scheduler = resident as f64 * warps_per_cta / gpu.schedulers;
    let issue_eff = (warps_per_scheduler / 4.0).min(1.0);
    // SM-side time of `work` units at `per_clk` units per clock per SM on the busiest SM.
    let sm_time = |work: f64, per_clk: f64| work / ctas as f64 * (resident * waves) as f64 / (per_clk * gpu.clock_hz * issue_eff);

    let mut work: Vec<(Pipe, f64, f64)> = vec![(Pipe::Issue, c.warp_instructions as f64, gpu.schedulers)];
    let lanes = |p: Pipe| match p {
        Pipe::Fp32 => gpu.fp32_lanes,
        Pipe::Alu => gpu.int_lanes,
        Pipe::Fp64 => gpu.fp64_lanes,
        Pipe::Sfu => gpu.sfu_lanes,
        Pipe::Convert => gpu.convert_lanes,
        _ => gpu.lsu_lanes,
    };
    for (class, n) in &c.by_class {
        if let Some(p) = pipe_of(*class).filter(|p| *p != Pipe::Tensor) {
            work.push((p, n.warp as f64, lanes(p) / 32.0));
        }
    }
    work.push((Pipe::SharedWavefronts, c.shared_wavefronts as f64, gpu.shared_wavefronts_per_clk));
    work.push((Pipe::L1Sectors, c.global_sectors() as f64, gpu.l1_sectors_per_clk));
    let mut pipes: Vec<(Pipe, f64)> = Vec::new();
    for (p, w, rate) in work {
        if w <= 0.0 {
            continue;
        }
        let t = sm_time(w, rate);
        match pipes.iter_mut().find(|x| x.0 == p) {
            Some(x) => x.1 += t,
            None => pipes.push((p, t)),
        }
    }
    let tflops = tensor_flops(c);
    if tflops > 0.0 {
        // the per-SM tensor rate, through the same wave/occupancy arithmetic
        let per_sm_clk = gpu.mma_sync_flops / (gpu.sms as f64 * gpu.clock_hz);
        pipes.push((Pipe::Tensor, sm_time(tflops, per_sm_clk)));
    }
    let l2 = l2_model(c, gpu);
    if l2.requested_sectors > 0.0 {
        pipes.push((Pipe::L2, l2.requested_sectors * 32.0 / gpu.l2_bytes_per_s));
    }
    // Little's law for DRAM
    let warps_total = ctas as f64 * warps_per_cta;
    let loads_per_warp = c.global_load_requests as f64 / warps_total;
    let waits_per_warp = (c.barriers as f64 / ctas as f64)
        + c.by_form.iter().filter(|(f, _)| f.starts_with("cp.async.wait")).map(|(_, n)| n.warp as f64).sum::<f64>() / warps_total;
    let in_flight = (loads_per_warp / (waits_per_warp + 1.0)).clamp(1.0, 8.0);
    let bytes_per_request = if c.global_load_requests > 0 { 32.0 * c.global_load_sectors as f64 / c.global_load_requests as f64 } else { 128.0 };
    let bytes_in_flight = active_sms * resident as f64 * warps_per_cta * bytes_per_request * in_flight;
    let mlp = (bytes_in_flight / (gpu.dram_bytes_per_s * gpu.dram_latency_s)).min(1.0);
    if l2.dram_bytes > 0.0 {
        pipes.push((Pipe::Dram, l2.dram_bytes / (gpu.dram_bytes_per_s * mlp)));
    }
    let (limiter, modeled) = pipes.iter().fold((Pipe::Issue, 0.0f64), |acc, p| if p.1 > acc.1 { (p.0, p.1) } else { acc });
    Some(PerfModel {
        gpu: gpu.name,
        occupancy: occ,
        resident_ctas: resident as u32,
        waves,
        issue_efficiency: issue_eff,
        memory_parallelism: mlp,
        l2,
        tensor_flops: tflops,
        pipes,
        modeled_time_s: modeled,
        limiter,
    })
}
