//! Launch reports: counters at PTX level and a modeled H100 roofline.

use std::collections::BTreeMap;
use std::fmt;

use crate::ir::OpClass;

/// Warp-level issues and thread-level executions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstCount {
    pub warp: u64,
    pub thread: u64,
}

/// Per PTX line counts with the line text and CUDA source location.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineCount {
    pub warp: u64,
    pub thread: u64,
    pub text: String,
    pub source: Option<String>,
}

/// PTX-level dynamic counters. In sampled mode every count is scaled by total/executed CTAs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// lane groups issued (one per warp step)
    pub warp_instructions: u64,
    /// lanes that executed an issued instruction (guard true)
    pub thread_instructions: u64,
    /// lanes of an issued group whose guard predicate was false
    pub predicated_off_lanes: u64,
    /// thread-level results of approximate instructions (`.approx`, `div.full`)
    pub approx_results: u64,
    pub by_class: BTreeMap<OpClass, InstCount>,
    pub by_form: BTreeMap<String, InstCount>,
    /// keyed by 1-based PTX line
    pub by_line: BTreeMap<u32, LineCount>,
    /// warp-level global load / store / atomic requests (lane groups with >= 1 active lane)
    pub global_load_requests: u64,
    pub global_store_requests: u64,
    pub global_atomic_requests: u64,
    /// distinct 32-B sectors touched, summed over requests
    pub global_load_sectors: u64,
    pub global_store_sectors: u64,
    pub global_atomic_sectors: u64,
    /// minimal sectors for the same useful bytes (ceil(unique bytes / 32) per request)
    pub global_ideal_sectors: u64,
    /// bytes requested by active lanes
    pub global_bytes: u64,
    /// distinct 32-B sectors read (loads, `cp.async` sources) / written (stores, atomics) over
    /// the whole launch: the compulsory DRAM traffic of the L2 model. Exact when every CTA ran;
    /// in sampled mode estimated per allocation as the executed CTAs' distinct sectors times
    /// total/executed, capped by the allocation's size. Not scaled by [`Counters::scale`].
    pub global_unique_load_sectors: u64,
    pub global_unique_store_sectors: u64,
    pub shared_requests: u64,
    /// shared-memory wavefronts (32 banks x 4 B; identical words broadcast; 8-B accesses per
    /// half-warp, 16-B per quarter-warp)
    pub shared_wavefronts: u64,
    pub shared_ideal_wavefronts: u64,
    pub shared_bank_conflicts: u64,
    /// thread-level atomic operations
    pub atomics: u64,
    /// CTA barrier releases
    pub barriers: u64,
    /// completed warp collectives (`bar.warp.sync`, `shfl`, `vote`, `redux`)
    pub warp_collectives: u64,
}

impl Counters {
    /// Σ lanes in the issued lane groups / (32 · warp instructions): the divergence measure
    /// (Nsight's "average active threads per warp" / 32). Guard-false lanes count as active.
    pub fn simt_efficiency(&self) -> f64 {
        if self.warp_instructions == 0 {
            return 1.0;
        }
        (self.thread_instructions + self.predicated_off_lanes) as f64
            / (32.0 * self.warp_instructions as f64)
    }
    /// Σ lanes whose guard was true / (32 · warp instructions) (Nsight's "not predicated off").
    pub fn predicated_efficiency(&self) -> f64 {
        if self.warp_instructions == 0 {
            return 1.0;
        }
        self.thread_instructions as f64 / (32.0 * self.warp_instructions as f64)
    }
    /// All global sectors (loads + stores + atomics): the DRAM traffic of a cache-less model.
    pub fn global_sectors(&self) -> u64 {
        self.global_load_sectors + self.global_store_sectors + self.global_atomic_sectors
    }
    pub fn global_requests(&self) -> u64 {
        self.global_load_requests + self.global_store_requests + self.global_atomic_requests
    }
    /// Mean distinct sectors per global request (4 is ideal for 32 lanes x 4 B).
    pub fn sectors_per_request(&self) -> f64 {
        let r = self.global_requests();
        if r == 0 {
            0.0
        } else {
            self.global_sectors() as f64 / r as f64
        }
    }

    pub(crate) fn scale(&mut self, f: f64) {
        let s = |x: &mut u64| *x = (*x as f64 * f).round() as u64;
        s(&mut self.warp_instructions);
        s(&mut self.thread_instructions);
        s(&mut self.predicated_off_lanes);
        s(&mut self.approx_results);
        for v in self.by_class.values_mut().chain(self.by_form.values_mut()) {
            s(&mut v.warp);
            s(&mut v.thread);
        }
        for v in self.by_line.values_mut() {
            s(&mut v.warp);
            s(&mut v.thread);
        }
        for x in [
            &mut self.global_load_requests,
            &mut self.global_store_requests,
            &mut self.global_atomic_requests,
            &mut self.global_load_sectors,
            &mut self.global_store_sectors,
            &mut self.global_atomic_sectors,
            &mut self.global_ideal_sectors,
            &mut self.global_bytes,
            &mut self.shared_requests,
            &mut self.shared_wavefronts,
            &mut self.shared_ideal_wavefronts,
            &mut self.shared_bank_conflicts,
            &mut self.atomics,
            &mut self.barriers,
            &mut self.warp_collectives,
        ] {
            s(x);
        }
    }
}

/// Result of a launch.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub kernel: String,
    pub counters: Counters,
    pub executed_ctas: u64,
    pub total_ctas: u64,
    /// true when `sample_ctas` limited execution (memory contents are then not meaningful)
    pub sampled: bool,
    /// non-fatal observations (e.g. `%warpid` read, approximate instructions used)
    pub warnings: Vec<String>,
    /// threads of one CTA (block x · y · z)
    pub threads_per_cta: u32,
    /// static + dynamic shared memory of one CTA as the PTX declares it (bytes)
    pub shared_bytes_per_cta: u32,
}

/// H100 SXM figures used by the model.
pub const H100_DRAM_BYTES_PER_S: f64 = 3.35e12;
pub const H100_FP32_FLOPS: f64 = 67e12;
pub const H100_BF16_TENSOR_FLOPS: f64 = 989e12;

/// A *modeled* H100 time from PTX-level counts: no caches, no latency, no occupancy.
#[derive(Clone, Debug, PartialEq)]
pub struct RooflineModel {
    /// global sectors x 32 B (every sector assumed to come from DRAM)
    pub modeled_dram_bytes: f64,
    pub min_bytes: f64,
    pub flops: f64,
    pub memory_time_s: f64,
    pub compute_time_s: f64,
    /// min_bytes / bandwidth: the floor for any implementation
    pub floor_time_s: f64,
    /// max(memory, compute)
    pub modeled_time_s: f64,
    pub uses_tensor_cores: bool,
}

impl RooflineModel {
    /// floor / modeled: fraction of the roofline the modeled kernel reaches.
    pub fn efficiency(&self) -> f64 {
        let floor = self.floor_time_s.max(self.compute_time_s);
        if self.modeled_time_s == 0.0 {
            1.0
        } else {
            floor / self.modeled_time_s
        }
    }
}

impl fmt::Display for RooflineModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "H100 roofline model (not a measurement): modeled time {:.3} us (memory {:.3} us from {:.0} modeled DRAM bytes, compute {:.3} us for {:.3e} flops on {}), floor {:.3} us from {:.0} minimum bytes",
            self.modeled_time_s * 1e6,
            self.memory_time_s * 1e6,
            self.modeled_dram_bytes,
            self.compute_time_s * 1e6,
            self.flops,
            if self.uses_tensor_cores { "bf16 tensor cores" } else { "fp32 CUDA cores" },
            self.floor_time_s * 1e6,
            self.min_bytes
        )
    }
}

impl Report {
    /// Modeled H100 time: max(DRAM sectors·32 B / 3.35 TB/s, flops / 67 TFLOP/s (fp32) or
    /// / 989 TFLOP/s (bf16 tensor)), with the floor min_bytes / 3.35 TB/s.
    pub fn roofline(&self, flops: f64, min_bytes: f64, uses_tensor_cores: bool) -> RooflineModel {
        let bytes = self.counters.global_sectors() as f64 * 32.0;
        let memory_time_s = bytes / H100_DRAM_BYTES_PER_S;
        let compute_time_s = flops
            / if uses_tensor_cores {
                H100_BF16_TENSOR_FLOPS
            } else {
                H100_FP32_FLOPS
            };
        let floor_time_s = min_bytes / H100_DRAM_BYTES_PER_S;
        RooflineModel {
            modeled_dram_bytes: bytes,
            min_bytes,
            flops,
            memory_time_s,
            compute_time_s,
            floor_time_s,
            modeled_time_s: memory_time_s.max(compute_time_s).max(floor_time_s),
            uses_tensor_cores,
        }
    }
}

impl Report {
    /// The `n` PTX lines with the most thread-instructions: (line, counts).
    pub fn hot_lines(&self, n: usize) -> Vec<(u32, &LineCount)> {
        let mut hot: Vec<(u32, &LineCount)> =
            self.counters.by_line.iter().map(|(l, c)| (*l, c)).collect();
        hot.sort_by_key(|h| (std::cmp::Reverse(h.1.thread), h.0));
        hot.truncate(n);
        hot
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "kernel `{}`: {} of {} CTAs executed{}",
            self.kernel,
            self.executed_ctas,
            self.total_ctas,
            if self.sampled {
                " (sampled; counters scaled)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  warp instructions {}, thread instructions {}, SIMT efficiency {:.3}",
            c.warp_instructions,
            c.thread_instructions,
            c.simt_efficiency()
        )?;
        writeln!(
            f,
            "  global: {} requests, {} sectors ({:.2}/request, ideal {}), {} bytes requested",
            c.global_requests(),
            c.global_sectors(),
            c.sectors_per_request(),
            c.global_ideal_sectors,
            c.global_bytes
        )?;
        writeln!(
            f,
            "  shared: {} requests, {} wavefronts, {} bank conflicts; atomics {}; barriers {}",
            c.shared_requests, c.shared_wavefronts, c.shared_bank_conflicts, c.atomics, c.barriers
        )?;
        for (line, lc) in self.hot_lines(5) {
            writeln!(
                f,
                "  hot PTX line {line}: {} thread-inst  {}  [{}]",
                lc.thread,
                lc.text,
                lc.source.as_deref().unwrap_or("-")
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
