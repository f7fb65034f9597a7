//! The performance model (`ptx_interp::perf`) on small fixture kernels, every expected value
//! derived by hand from the kernel's access pattern and the model's stated formulas.

mod common;
use common::*;
use ptx_interp::perf::{l2_model, model, occupancy, tensor_flops, KernelResources, Pipe};
use ptx_interp::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-30)
}

#[test]
fn occupancy_is_the_tightest_of_warps_registers_and_shared_memory() {
    // 256 threads = 8 warps, 104 registers: 104·32 = 3328 = 13·256 per warp, 26624 per CTA,
    // 65536 / 26624 = 2 CTAs; shared 29088 + 1024 reserved: 233472 / 30112 = 7; warps 64 / 8 = 8.
    let res = KernelResources { threads_per_cta: 256, regs_per_thread: 104, shared_bytes_per_cta: 29088 };
    let o = occupancy(&H100_SXM, &res);
    assert_eq!((o.ctas_per_sm, o.warps_per_sm, o.limiter), (2, 16, "registers"));
    // 40 KiB of shared memory per CTA: H100 233472 / 41984 = 5, A100 167936 / 41984 = 4.
    let res = KernelResources { threads_per_cta: 128, regs_per_thread: 32, shared_bytes_per_cta: 40 * 1024 };
    assert_eq!(occupancy(&H100_SXM, &res).ctas_per_sm, 5);
    let o = occupancy(&A100_SXM, &res);
    assert_eq!((o.ctas_per_sm, o.limiter), (4, "shared memory"));
    // 4 warps, 32 registers (4096 per CTA), no shared memory: 16 by warps, 16 by registers.
    let res = KernelResources { threads_per_cta: 128, regs_per_thread: 32, shared_bytes_per_cta: 0 };
    let o = occupancy(&H100_SXM, &res);
    assert_eq!((o.ctas_per_sm, o.warps_per_sm, o.limiter), (16, 64, "warps"));
    // 64 threads of 255 registers: 8160 -> 8192 per warp, 16384 per CTA: 4 CTAs.
    let res = KernelResources { threads_per_cta: 64, regs_per_thread: 255, shared_bytes_per_cta: 0 };
    assert_eq!(occupancy(&H100_SXM, &res).ctas_per_sm, 4);
    // A CTA that cannot fit at all has no model.
    let res = KernelResources { threads_per_cta: 1024, regs_per_thread: 128, shared_bytes_per_cta: 0 };
    assert_eq!(occupancy(&H100_SXM, &res).ctas_per_sm, 0);
}

fn column_read(kernel: &str) -> Report {
    let m = module("hazards.ptx");
    let mut dev = Device::new();
    let inp = upload_f32(&mut dev, &randf(8, 32 * 32));
    let out = dev.alloc(128).unwrap();
    dev.launch(&m, kernel, &cfg([1, 1, 1], [32, 1, 1]), &[ParamValue::U64(inp), ParamValue::U64(out)], &Options::default())
        .unwrap()
}

#[test]
fn bank_conflicts_cost_shared_wavefront_time() {
    let (padded, unpadded) = (column_read("column_read_padded"), column_read("column_read_unpadded"));
    // One warp writes a 32x32 tile row-wise (32 conflict-free wavefronts) and reads 32 columns:
    // stride 33 words hits 32 banks (1 wavefront each), stride 32 one bank (32 each).
    assert_eq!(padded.counters.shared_wavefronts, 32 + 32);
    assert_eq!(unpadded.counters.shared_wavefronts, 32 + 32 * 32);
    // One CTA of one warp: 1 CTA resident, 1 wave, 1/4 warp per scheduler -> e = 1/16;
    // shared time = wavefronts / (1 per clock · 1.98 GHz · 1/16).
    for (r, wf) in [(&padded, 64.0), (&unpadded, 1056.0)] {
        let p = model(r, &H100_SXM, 32).unwrap();
        assert_eq!((p.resident_ctas, p.waves), (1, 1));
        assert!(close(p.issue_efficiency, 1.0 / 16.0));
        assert!(close(p.time_of(Pipe::SharedWavefronts), wf * 16.0 / 1.98e9), "{p}");
    }
    let p = model(&unpadded, &H100_SXM, 32).unwrap();
    assert_eq!(p.limiter, Pipe::SharedWavefronts, "{p}");
    assert!(close(p.modeled_time_s, 1056.0 * 16.0 / 1.98e9));
}

fn tiled_gemm_64(sample: Option<u32>) -> Report {
    let m = module("tiled_gemm.ptx");
    let mut dev = Device::new();
    let pa = upload_f32(&mut dev, &randf(1, 64 * 64));
    let pb = upload_f32(&mut dev, &randf(2, 64 * 64));
    let pc = dev.alloc(64 * 64 * 4).unwrap();
    let args = [ParamValue::U64(pa), ParamValue::U64(pb), ParamValue::U64(pc), ParamValue::I32(64), ParamValue::I32(64), ParamValue::I32(64)];
    let opts = Options { sample_ctas: sample, initcheck: sample.is_none(), ..Default::default() };
    dev.launch(&m, "tiled_gemm", &cfg([4, 4, 1], [16, 16, 1]), &args, &opts).unwrap()
}

#[test]
fn l2_model_counts_tile_rereads_by_several_ctas_as_hits() {
    let r = tiled_gemm_64(None);
    let c = &r.counters;
    // 16 CTAs each read a 16x64 panel of A and a 64x16 panel of B (4 KiB = 128 sectors each):
    // 16 · 256 = 4096 sectors requested; A and B are 16 KiB each: 1024 distinct sectors.
    // C is written once: 512 sectors.
    assert_eq!(c.global_load_sectors, 4096);
    assert_eq!((c.global_unique_load_sectors, c.global_unique_store_sectors), (1024, 512));
    let l2 = l2_model(c, &H100_SXM);
    // footprint 1536 · 32 B fits in 50 MB: every re-read (4096 - 1024) hits.
    assert_eq!(l2.footprint_bytes, 1536.0 * 32.0);
    assert_eq!(l2.l2_hit_sectors, 3072.0);
    assert_eq!(l2.dram_bytes, 1536.0 * 32.0);
    // An L2 of half the footprint keeps a re-read with probability 1/2: 1536 hits, 1536 misses.
    let half = GpuSpec { l2_bytes: 1536.0 * 16.0, ..H100_SXM };
    let l2 = l2_model(c, &half);
    assert_eq!(l2.l2_hit_sectors, 1536.0);
    assert_eq!(l2.dram_bytes, (1024.0 + 1536.0 + 512.0) * 32.0);
    // Sampled: 2 CTAs touch two panels of A and of B (128 sectors each) -> x8 = 1024 per
    // matrix, capped at the allocation's 512 sectors; C: 2 tiles of 32 sectors x 8 = 512.
    let s = tiled_gemm_64(Some(2));
    assert_eq!(s.counters.global_load_sectors, 4096);
    assert_eq!((s.counters.global_unique_load_sectors, s.counters.global_unique_store_sectors), (1024, 512));
}

#[test]
fn mma_gemm_runs_on_the_tensor_pipe_at_the_mma_sync_rate() {
    let module = module("mma_gemm.ptx");
    let (m, n, k) = (32usize, 32usize, 48usize);
    let bits = |seed| randf(seed, 2048).iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect::<Vec<u8>>();
    let mut dev = Device::new();
    let pa = dev.alloc(2 * (m * k) as u64).unwrap();
    dev.write(pa, &bits(21)[..2 * m * k]).unwrap();
    let pb = dev.alloc(2 * (k * n) as u64).unwrap();
    dev.write(pb, &bits(22)[..2 * k * n]).unwrap();
    let pc = dev.alloc(4 * (m * n) as u64).unwrap();
    let args = [ParamValue::U64(pa), ParamValue::U64(pb), ParamValue::U64(pc), ParamValue::I32(32), ParamValue::I32(32), ParamValue::I32(48), ParamValue::I32(1)];
    let r = dev.launch(&module, "mma_gemm", &cfg([2, 2, 1], [32, 1, 1]), &args, &Options::default()).unwrap();
    // 4 CTAs x 3 K-steps x 2 mma.m16n8k16 x 4096 FLOPs = 2·M·N·K.
    assert_eq!(tensor_flops(&r.counters), 2.0 * (m * n * k) as f64);
    for gpu in [&H100_SXM, &A100_SXM] {
        let p = model(&r, gpu, 64).unwrap();
        // 4 CTAs on 4 SMs, one warp each (e = 1/16): per CTA 24576 FLOPs at the per-SM mma.sync rate.
        let per_sm = gpu.mma_sync_flops / gpu.sms as f64;
        assert!(close(p.time_of(Pipe::Tensor), 24576.0 / per_sm * 16.0), "{p}");
    }
    // Hopper's mma.sync rate is half its dense (wgmma) peak; Ampere's is the full peak.
    assert!(close(H100_SXM.mma_sync_flops, H100_SXM.dense_tensor_peak_flops / 2.0 * (132.0 * 4096.0 * 1.83e9 / 989e12)));
    assert_eq!(A100_SXM.mma_sync_flops, A100_SXM.dense_tensor_peak_flops);
}

#[test]
fn waves_and_occupancy_enter_the_modeled_time() {
    // The 16-CTA GEMM on 132 SMs is one wave of one CTA per SM; its FP32 time is one CTA's
    // fma count (8 warps x 4 K-steps x 16 fma) at 4 warp-instructions per clock, e = 8/4/4 = 1/2.
    let r = tiled_gemm_64(None);
    let fmas = r.counters.by_class[&OpClass::FloatAlu].warp as f64;
    assert_eq!(fmas, 16.0 * 8.0 * 4.0 * 16.0);
    let p = model(&r, &H100_SXM, 40).unwrap();
    assert_eq!((p.resident_ctas, p.waves), (1, 1));
    assert!(close(p.issue_efficiency, 0.5));
    assert!(close(p.time_of(Pipe::Fp32), (fmas / 16.0) / (4.0 * 1.98e9 * 0.5)), "{p}");
    // Registers cap it at 1 CTA per SM on a 1-SM GPU: 16 waves, 16x the single-wave time at
    // the same efficiency.
    let one = GpuSpec { sms: 1, ..H100_SXM };
    let q = model(&r, &one, 255).unwrap();
    assert_eq!((q.occupancy.ctas_per_sm, q.resident_ctas, q.waves), (1, 1, 16));
    assert!(close(q.time_of(Pipe::Fp32), 16.0 * p.time_of(Pipe::Fp32)));
    // With 32 registers, 8 CTAs fit (64 warps / 8): 2 waves of 8 CTAs, e = min(1, 64/4/4) = 1:
    // 16 CTAs' fmas at full rate = 16 · 0.5 = 8x the 132-SM time (half of the 255-register case).
    let q = model(&r, &one, 32).unwrap();
    assert_eq!((q.resident_ctas, q.waves), (8, 2));
    assert!(close(q.issue_efficiency, 1.0));
    assert!(close(q.time_of(Pipe::Fp32), 8.0 * p.time_of(Pipe::Fp32)));
}
