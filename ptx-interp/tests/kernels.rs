//! Kernel-level tests: nvcc-compiled fixtures against CPU references.
mod common;
use common::*;
use ptx_interp::*;

fn gemm_ref(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
        }
    }
    c
}

fn run_gemm(
    m: usize,
    n: usize,
    k: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>, Report) {
    let module = module("tiled_gemm.ptx");
    let mut dev = Device::new();
    let a = randf(1, m * k);
    let b = randf(2, k * n);
    let pa = upload_f32(&mut dev, &a);
    let pb = upload_f32(&mut dev, &b);
    let pc = dev.alloc((m * n * 4) as u64).unwrap();
    let opts = Options {
        schedule_seed: seed,
        ..Default::default()
    };
    let rep = dev
        .launch(
            &module,
            "tiled_gemm",
            &cfg(
                [n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1],
                [16, 16, 1],
            ),
            &[
                ParamValue::U64(pa),
                ParamValue::U64(pb),
                ParamValue::U64(pc),
                ParamValue::I32(m as i32),
                ParamValue::I32(n as i32),
                ParamValue::I32(k as i32),
            ],
            &opts,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let c = dev.read_f32(pc, m * n).unwrap();
    (c, gemm_ref(&a, &b, m, n, k), a, b, rep)
}

#[test]
fn tiled_gemm_matches_f64_reference_with_tails() {
    for seed in [0, 1, 2] {
        let (m, n, k) = (37, 29, 45);
        let (c, r, a, b, rep) = run_gemm(m, n, k, seed);
        let mut worst = (0usize, 0f64);
        for i in 0..m * n {
            // fma chain of length k: |err| <= k * 2^-24 * sum |a||b|
            let (row, col) = (i / n, i % n);
            let mag: f64 = (0..k)
                .map(|p| (a[row * k + p] as f64 * b[p * n + col] as f64).abs())
                .sum();
            let tol = k as f64 * f32::EPSILON as f64 * mag + 1e-30;
            let err = (c[i] as f64 - r[i]).abs();
            assert!(
                err <= tol,
                "seed {seed}: C[{row},{col}] = {} vs {} (err {err:e} > tol {tol:e})",
                c[i],
                r[i]
            );
            if err > worst.1 {
                worst = (i, err);
            }
        }
        assert_eq!(rep.total_ctas, 6);
        assert!(rep.counters.barriers > 0);
        assert!(
            rep.counters.shared_bank_conflicts > 0,
            "the store As[ty][tx] with 17-word rows is 2-way; report:\n{rep}"
        );
    }
}

#[test]
fn row_sqnorm_with_shuffles_and_atomics() {
    let m = module("warp_reduce.ptx");
    for seed in [0, 7] {
        let (rows, n4) = (5usize, 100usize);
        let x = randf(11, rows * n4 * 4);
        let mut dev = Device::new();
        let px = upload_f32(&mut dev, &x);
        let out = dev.alloc(rows as u64 * 4).unwrap();
        let total = zeros(&mut dev, 4);
        let amax = zeros(&mut dev, 4);
        let rep = dev
            .launch(
                &m,
                "row_sqnorm",
                &cfg([rows as u32, 1, 1], [128, 1, 1]),
                &[
                    ParamValue::U64(px),
                    ParamValue::I32(n4 as i32),
                    ParamValue::U64(out),
                    ParamValue::U64(total),
                    ParamValue::U64(amax),
                ],
                &Options {
                    schedule_seed: seed,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let got = dev.read_f32(out, rows).unwrap();
        let mut sum_all = 0f64;
        for r in 0..rows {
            let row = &x[r * n4 * 4..(r + 1) * n4 * 4];
            let want: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
            sum_all += want;
            let tol = row.len() as f64 * f32::EPSILON as f64 * want;
            assert!(
                (got[r] as f64 - want).abs() <= tol,
                "row {r}: {} vs {want}",
                got[r]
            );
        }
        let t = dev.read_f32(total, 1).unwrap()[0] as f64;
        assert!(
            (t - sum_all).abs() <= 1e-5 * sum_all,
            "total {t} vs {sum_all}"
        );
        let am = f32::from_bits(u32::from_le_bytes(
            dev.read(amax, 4).unwrap().try_into().unwrap(),
        ));
        let want_am = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
        assert_eq!(am, want_am);
        assert_eq!(rep.counters.atomics, rows as u64 * (1 + 4));
        assert!(rep.counters.warp_collectives > 0);
        // float4 loads: each warp request covers 512 contiguous bytes = 16 sectors
        let lines = &rep.counters.by_line;
        let v4 = lines
            .values()
            .find(|l| l.text.contains("ld.global.nc.v4.f32"))
            .unwrap();
        assert!(
            v4.source.as_deref().unwrap().contains("warp_reduce.cu:10"),
            "{:?}",
            v4.source
        );
    }
}

#[test]
fn masked_block_sum_u8_masks_and_tree_reduction() {
    let m = module("warp_reduce.ptx");
    let (rows, n) = (3usize, 1000usize);
    let x = randf(12, rows * n);
    let mask: Vec<u8> = (0..rows * n).map(|i| ((i * 7919) % 3 == 0) as u8).collect();
    let mut dev = Device::new();
    let px = upload_f32(&mut dev, &x);
    let pm = dev.alloc((rows * n) as u64).unwrap();
    dev.write(pm, &mask).unwrap();
    let out = dev.alloc(rows as u64 * 4).unwrap();
    dev.launch(
        &m,
        "masked_block_sum",
        &cfg([rows as u32, 1, 1], [256, 1, 1]),
        &[
            ParamValue::U64(px),
            ParamValue::U64(pm),
            ParamValue::I32(n as i32),
            ParamValue::U64(out),
        ],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, rows).unwrap();
    for r in 0..rows {
        let want: f64 = (0..n)
            .filter(|&i| mask[r * n + i] != 0)
            .map(|i| x[r * n + i] as f64)
            .sum();
        let mag: f64 = (0..n).map(|i| (x[r * n + i] as f64).abs()).sum();
        assert!(
            (got[r] as f64 - want).abs() <= 1e-6 * mag,
            "row {r}: {} vs {want}",
            got[r]
        );
    }
}

#[test]
fn ticket_sum_last_block_pattern() {
    let m = module("warp_reduce.ptx");
    let n = 3000usize;
    let x = randf(13, n);
    for seed in 0..3 {
        let mut dev = Device::new();
        let px = upload_f32(&mut dev, &x);
        let partials = dev.alloc(4 * 4).unwrap();
        let ticket = zeros(&mut dev, 4);
        let result = dev.alloc(4).unwrap();
        dev.launch(
            &m,
            "ticket_sum",
            &cfg([4, 1, 1], [32, 1, 1]),
            &[
                ParamValue::U64(px),
                ParamValue::I32(n as i32),
                ParamValue::U64(partials),
                ParamValue::U64(ticket),
                ParamValue::U64(result),
            ],
            &Options {
                schedule_seed: seed,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got = dev.read_f32(result, 1).unwrap()[0] as f64;
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }
}

#[test]
fn bf16_and_f16_conversions_bit_exact() {
    let m = module("convert.ptx");
    let n = 300usize;
    let xs = randf(14, n);
    let a: Vec<u16> = xs
        .iter()
        .map(|&v| half::bf16::from_f32(v * 3.0).to_bits())
        .collect();
    let h: Vec<u16> = xs
        .iter()
        .map(|&v| half::f16::from_f32(v * 0.5).to_bits())
        .collect();
    let mut dev = Device::new();
    let pa = dev.alloc(2 * n as u64).unwrap();
    dev.write(
        pa,
        &a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    let ph = dev.alloc(2 * n as u64).unwrap();
    dev.write(
        ph,
        &h.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    let out = dev.alloc(4 * n as u64).unwrap();
    let obf = dev.alloc(2 * n as u64).unwrap();
    let oh = dev.alloc(2 * n as u64).unwrap();
    let scale = 1.7f32;
    dev.launch(
        &m,
        "bf16_to_f32_scale",
        &cfg([3, 1, 1], [128, 1, 1]),
        &[
            ParamValue::U64(pa),
            ParamValue::U64(ph),
            ParamValue::U64(out),
            ParamValue::U64(obf),
            ParamValue::U64(oh),
            ParamValue::F32(scale),
            ParamValue::I32(n as i32),
        ],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, n).unwrap();
    let gbf = dev.read(obf, 2 * n as u64).unwrap();
    let gh = dev.read(oh, 2 * n as u64).unwrap();
    for i in 0..n {
        let v = half::bf16::from_bits(a[i])
            .to_f32()
            .mul_add(scale, half::f16::from_bits(h[i]).to_f32());
        assert_eq!(got[i].to_bits(), v.to_bits(), "i={i}");
        assert_eq!(
            u16::from_le_bytes([gbf[2 * i], gbf[2 * i + 1]]),
            half::bf16::from_f32(v).to_bits(),
            "bf16 i={i}"
        );
        assert_eq!(
            u16::from_le_bytes([gh[2 * i], gh[2 * i + 1]]),
            half::f16::from_f32(v).to_bits(),
            "f16 i={i}"
        );
    }
}

#[test]
fn float_int_casts_match_cuda_semantics() {
    let m = module("convert.ptx");
    let mut xs: Vec<f32> = randf(15, 60).iter().map(|v| v * 1000.0).collect();
    xs.extend([2.5, -2.5, 3.5, -0.5, 1e10, -1e10, 0.0, -0.0, 7.999]);
    let n = xs.len();
    let mut dev = Device::new();
    let px = upload_f32(&mut dev, &xs);
    let (oi, ou, ol, od) = (
        dev.alloc(4 * n as u64).unwrap(),
        dev.alloc(4 * n as u64).unwrap(),
        dev.alloc(8 * n as u64).unwrap(),
        dev.alloc(8 * n as u64).unwrap(),
    );
    dev.launch(
        &m,
        "casts",
        &cfg([1, 1, 1], [128, 1, 1]),
        &[
            ParamValue::U64(px),
            ParamValue::U64(oi),
            ParamValue::U64(ou),
            ParamValue::U64(ol),
            ParamValue::U64(od),
            ParamValue::I32(n as i32),
        ],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bi = dev.read(oi, 4 * n as u64).unwrap();
    let bu = dev.read(ou, 4 * n as u64).unwrap();
    let bl = dev.read(ol, 8 * n as u64).unwrap();
    let bd = dev.read(od, 8 * n as u64).unwrap();
    for (i, &v) in xs.iter().enumerate() {
        let want_i = (v.round_ties_even() as i32)
            .wrapping_add(v as i32)
            .wrapping_add(v.floor() as i32)
            .wrapping_add(v.ceil() as i32);
        assert_eq!(
            i32::from_le_bytes(bi[4 * i..4 * i + 4].try_into().unwrap()),
            want_i,
            "v={v}"
        );
        assert_eq!(
            u32::from_le_bytes(bu[4 * i..4 * i + 4].try_into().unwrap()),
            v as u32,
            "v={v}"
        );
        assert_eq!(
            i64::from_le_bytes(bl[8 * i..8 * i + 8].try_into().unwrap()),
            (v as i64).wrapping_mul(3),
            "v={v}"
        );
        let want_d = v as f64 / 3.0 + (v.abs() as f64).sqrt();
        assert_eq!(
            f64::from_le_bytes(bd[8 * i..8 * i + 8].try_into().unwrap()).to_bits(),
            want_d.to_bits(),
            "v={v}"
        );
    }
}

#[test]
fn interpreter_throughput() {
    // 64x64x64 GEMM: report thread-instructions per second (informative; asserted loosely)
    let (m, n, k) = (64, 64, 64);
    let t0 = std::time::Instant::now();
    let (_, _, _, _, rep) = run_gemm(m, n, k, 0);
    let dt = t0.elapsed().as_secs_f64();
    let rate = rep.counters.thread_instructions as f64 / dt;
    eprintln!(
        "tiled_gemm 64^3: {} thread-instructions in {:.3} s = {:.1} M/s\n{rep}",
        rep.counters.thread_instructions,
        dt,
        rate / 1e6
    );
    assert!(rate > 1e6, "interpreter too slow: {rate:.0} thread-inst/s");
}

/// (C from the interpreter, f64 reference, Σ|a||b| per element, report)
type MmaRun = (Vec<f32>, Vec<f64>, Vec<f64>, Report);

fn run_mma(m: usize, n: usize, k: usize, sync: i32) -> Result<MmaRun, EmuError> {
    let module = module("mma_gemm.ptx");
    let a: Vec<half::bf16> = randf(21, m * k)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let b: Vec<half::bf16> = randf(22, k * n)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let mut dev = Device::new();
    let pa = dev.alloc(2 * (m * k) as u64).unwrap();
    dev.write(
        pa,
        &a.iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let pb = dev.alloc(2 * (k * n) as u64).unwrap();
    dev.write(
        pb,
        &b.iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let pc = dev.alloc(4 * (m * n) as u64).unwrap();
    let rep = dev.launch(
        &module,
        "mma_gemm",
        &cfg([(n / 16) as u32, (m / 16) as u32, 1], [32, 1, 1]),
        &[
            ParamValue::U64(pa),
            ParamValue::U64(pb),
            ParamValue::U64(pc),
            ParamValue::I32(m as i32),
            ParamValue::I32(n as i32),
            ParamValue::I32(k as i32),
            ParamValue::I32(sync),
        ],
        &Options::default(),
    )?;
    let c = dev.read_f32(pc, m * n).unwrap();
    let mut want = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let x = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                want[i * n + j] += x;
                mag[i * n + j] += x.abs();
            }
        }
    }
    Ok((c, want, mag, rep))
}

#[test]
fn mma_gemm_cp_async_ldmatrix_matches_reference() {
    let (m, n, k) = (32, 32, 48);
    let (c, want, mag, rep) = run_mma(m, n, k, 1).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..m * n {
        // tensor-core accumulation order/rounding is unspecified: tolerance K * 2^-23 * sum|a||b|
        let tol = k as f64 * 2f64.powi(-23) * mag[i];
        assert!(
            (c[i] as f64 - want[i]).abs() <= tol,
            "C[{i}] = {} vs {}",
            c[i],
            want[i]
        );
    }
    let cn = &rep.counters;
    // ldmatrix on 48-B rows is conflict-free; each cp.async quarter-warp writes rows 0-3 (or 4-7..)
    // at byte offsets {0,16,48,64,96,112,144,160}: rows 0 and 3 share banks 4-7 -> 2 wavefronts.
    // 3 K-steps x 2 cp.async x 4 CTAs x 4 quarter-warps = 96 extra wavefronts, all from cp.async.
    assert_eq!(cn.shared_bank_conflicts, 96, "{rep}");
    // cp.async of a 16x16 bf16 tile: 16 rows of 32 B -> 16 sectors per request
    let cp_line = cn
        .by_line
        .iter()
        .find(|(_, l)| l.text.contains("cp.async.cg"))
        .unwrap();
    assert!(cp_line.1.warp > 0);
    assert_eq!(cn.global_load_sectors, cn.global_load_requests * 16);
}

#[test]
fn cp_async_without_syncwarp_is_a_race() {
    let e = run_mma(16, 16, 16, 0).unwrap_err();
    assert!(matches!(e, EmuError::SharedRace { .. }), "{e}");
    let d = e.diag().unwrap();
    assert!(d.ptx_text.contains("ldmatrix"), "{e}");
    assert_eq!(d.source_line, Some(31), "{e}");
}

#[test]
fn cuda_math_library_functions_within_ulps() {
    let m = module("math.ptx");
    let mut xs: Vec<f32> = randf(31, 200).iter().map(|v| v * 4.0).collect();
    xs.extend([0.0, -0.0, 1e-20, 3.0, -3.0, 10.0, 1234.5]);
    let n = xs.len();
    let mut dev = Device::new();
    let px = upload_f32(&mut dev, &xs);
    let py = dev.alloc(9 * 4 * n as u64).unwrap();
    let rep = dev
        .launch(
            &m,
            "math_funcs",
            &cfg([(n as u32).div_ceil(64), 1, 1], [64, 1, 1]),
            &[
                ParamValue::U64(px),
                ParamValue::U64(py),
                ParamValue::I32(n as i32),
            ],
            &Options::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let y = dev.read_f32(py, 9 * n).unwrap();
    type RefFn = (&'static str, fn(f64) -> f64);
    let refs: [RefFn; 9] = [
        ("expf", |v| v.exp()),
        ("logf", |v| (((v as f32).abs() + 1e-3f32) as f64).ln()),
        ("tanhf", |v| v.tanh()),
        ("powf", |v| v.abs().powf(1.5)),
        ("erff", erf),
        ("log1pf", |v| v.abs().ln_1p()),
        ("sinf", |v| ((v as f32 * 1000.0) as f64).sin()),
        ("sqrt+rsqrt", |v| {
            v.abs().sqrt() + 1.0 / (((v as f32).abs() + 1.0) as f64).sqrt()
        }),
        ("copysignf", |v| ((v as f32 * v as f32) as f64).copysign(-v)),
    ];
    for (fi, (name, f)) in refs.iter().enumerate() {
        for (i, &v) in xs.iter().enumerate() {
            let want = f(v as f64);
            let got = y[fi * n + i] as f64;
            // CUDA documents <= 2-4 ulp for these; the interpreter's approximate ops are exact
            let ulp = (want.abs().max(f32::MIN_POSITIVE as f64)) * 2f64.powi(-23);
            assert!(
                got == want || (got - want).abs() <= 4.0 * ulp + 1e-37,
                "{name}({v}) = {got}, expected {want}"
            );
        }
    }
    assert!(rep.counters.approx_results > 0);
    assert!(
        rep.counters.by_class.contains_key(&OpClass::LoadLocal),
        "sinf's slow path uses local memory"
    );
}

/// erf via its Taylor/continued expansion in f64 (reference only).
fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; use the series for |x| < 3 and erfc asymptotics beyond.
    let ax = x.abs();
    let r = if ax < 3.0 {
        let mut sum = 0.0f64;
        let mut term = ax;
        let mut k = 0.0f64;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || k < 5.0 {
            sum += term / (2.0 * k + 1.0);
            k += 1.0;
            term *= -ax * ax / k;
            if k > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // continued fraction for erfc
        let mut f = 0.0f64;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (ax + f);
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * (ax + f))
    };
    r.copysign(x)
}

#[test]
fn double_atomics_and_exchange() {
    let m = module("math.ptx");
    let n = 100usize;
    let xs = randf(32, 2 * n);
    let mut dev = Device::new();
    let px = upload_f32(&mut dev, &xs);
    let sum = zeros(&mut dev, 8);
    let last = zeros(&mut dev, 4);
    dev.launch(
        &m,
        "atomics64",
        &cfg([2, 1, 1], [64, 1, 1]),
        &[
            ParamValue::U64(px),
            ParamValue::U64(sum),
            ParamValue::U64(last),
            ParamValue::I32(n as i32),
        ],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = f64::from_le_bytes(dev.read(sum, 8).unwrap().try_into().unwrap());
    let want: f64 = (0..n)
        .map(|i| xs[2 * i] as f64 * xs[2 * i + 1] as f64)
        .sum();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let l = dev.read_f32(last, 1).unwrap()[0];
    assert!((0..n).any(|i| xs[2 * i] == l));
}

#[test]
fn wmma_gemm_matches_reference() {
    let module = module("mma_gemm.ptx");
    let (m, n, k) = (32usize, 48usize, 64usize);
    let a: Vec<half::bf16> = randf(23, m * k)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let b: Vec<half::bf16> = randf(24, k * n)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let mut dev = Device::new();
    let pa = dev.alloc(2 * (m * k) as u64).unwrap();
    dev.write(
        pa,
        &a.iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let pb = dev.alloc(2 * (k * n) as u64).unwrap();
    dev.write(
        pb,
        &b.iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let pc = dev.alloc(4 * (m * n) as u64).unwrap();
    let rep = dev
        .launch(
            &module,
            "wmma_gemm",
            &cfg([(n / 16) as u32, (m / 16) as u32, 1], [32, 1, 1]),
            &[
                ParamValue::U64(pa),
                ParamValue::U64(pb),
                ParamValue::U64(pc),
                ParamValue::I32(m as i32),
                ParamValue::I32(n as i32),
                ParamValue::I32(k as i32),
            ],
            &Options::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let c = dev.read_f32(pc, m * n).unwrap();
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut mag) = (0f64, 0f64);
            for p in 0..k {
                let x = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                want += x;
                mag += x.abs();
            }
            let tol = k as f64 * 2f64.powi(-23) * mag;
            assert!(
                (c[i * n + j] as f64 - want).abs() <= tol,
                "C[{i},{j}] = {} vs {want}",
                c[i * n + j]
            );
        }
    }
    assert!(rep.counters.by_class.contains_key(&OpClass::TensorCore));
}
