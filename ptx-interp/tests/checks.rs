//! Sanitizer findings (each must name kernel, thread, PTX line and CUDA source line), scheduling
//! and counter tests on nvcc-compiled fixtures.
mod common;
use common::*;
use ptx_interp::*;

fn hazards() -> Module {
    module("hazards.ptx")
}

#[track_caller]
fn assert_diag(e: &EmuError, kernel: &str, ptx_contains: &str, source_lines: &[u32]) -> Diag {
    let d = e
        .diag()
        .unwrap_or_else(|| panic!("error has no diagnostic context: {e}"))
        .clone();
    assert_eq!(d.kernel, kernel, "{e}");
    assert!(
        d.ptx_line > 0 && d.ptx_text.contains(ptx_contains),
        "PTX line/text `{}` should contain `{ptx_contains}`: {e}",
        d.ptx_text
    );
    let line = d
        .source_line
        .unwrap_or_else(|| panic!("no source line: {e}"));
    assert!(
        source_lines.contains(&line),
        "source line {line} not in {source_lines:?}: {e}"
    );
    assert!(
        d.source_file.as_deref().unwrap().ends_with("hazards.cu"),
        "{e}"
    );
    let shown = format!("{e}");
    for needle in [
        kernel,
        &format!("PTX line {}", d.ptx_line),
        &format!("hazards.cu:{line}"),
    ] {
        assert!(shown.contains(needle), "Display lacks `{needle}`:\n{shown}");
    }
    d
}

#[test]
fn out_of_bounds_write_is_reported_with_thread_and_lines() {
    let m = hazards();
    let mut dev = Device::new();
    let n = 100u32;
    let out = dev.alloc(n as u64 * 4).unwrap();
    let e = dev
        .launch(
            &m,
            "oob_write",
            &cfg([1, 1, 1], [128, 1, 1]),
            &[ParamValue::U64(out), ParamValue::I32(n as i32)],
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::OutOfBounds { .. }), "{e}");
    let d = assert_diag(&e, "oob_write", "st.global", &[4]);
    assert_eq!(d.thread, [100, 0, 0]);
    assert_eq!((d.warp, d.lane), (3, 4));
    assert!(format!("{e}").contains("past the end"), "{e}");
}

#[test]
fn missing_syncthreads_is_a_shared_race() {
    let m = hazards();
    for seed in 0..3 {
        let mut dev = Device::new();
        let inp = upload_f32(&mut dev, &randf(3, 64));
        let out = dev.alloc(256).unwrap();
        let opts = Options {
            initcheck: false,
            schedule_seed: seed,
            ..Default::default()
        };
        let e = dev
            .launch(
                &m,
                "missing_syncthreads",
                &cfg([1, 1, 1], [64, 1, 1]),
                &[ParamValue::U64(inp), ParamValue::U64(out)],
                &opts,
            )
            .unwrap_err();
        assert!(matches!(e, EmuError::SharedRace { .. }), "{e}");
        assert_diag(&e, "missing_syncthreads", "shared", &[8, 10]);
        // with all checks on, the read of a not-yet-written word may surface first as initcheck
        let e = dev
            .launch(
                &m,
                "missing_syncthreads",
                &cfg([1, 1, 1], [64, 1, 1]),
                &[ParamValue::U64(inp), ParamValue::U64(out)],
                &Options {
                    schedule_seed: seed,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(e, EmuError::SharedRace { .. } | EmuError::UninitRead { .. }),
            "{e}"
        );
    }
}

#[test]
fn missing_syncwarp_is_a_race_even_though_lanes_ran_in_lockstep() {
    let m = hazards();
    let mut dev = Device::new();
    let x = randf(4, 32);
    let inp = upload_f32(&mut dev, &x);
    let out = dev.alloc(128).unwrap();
    let e = dev
        .launch(
            &m,
            "missing_syncwarp",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[ParamValue::U64(inp), ParamValue::U64(out)],
            &Options::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            EmuError::SharedRace {
                kind: "read after write",
                ..
            }
        ),
        "{e}"
    );
    assert_diag(&e, "missing_syncwarp", "ld.shared", &[16]);
    // the fixed kernel passes and computes the neighbour exchange
    dev.launch(
        &m,
        "with_syncwarp",
        &cfg([1, 1, 1], [32, 1, 1]),
        &[ParamValue::U64(inp), ParamValue::U64(out)],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, 32).unwrap();
    for t in 0..32 {
        assert_eq!(got[t], x[t ^ 1]);
    }
}

#[test]
fn divergent_barrier_is_reported() {
    let m = hazards();
    let mut dev = Device::new();
    let out = dev.alloc(256).unwrap();
    let e = dev
        .launch(
            &m,
            "divergent_barrier",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[ParamValue::U64(out)],
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::BarrierDivergence { .. }), "{e}");
    let d = assert_diag(&e, "divergent_barrier", "bar.sync", &[25]);
    assert!(
        d.thread[0] < 16,
        "the diagnostic names a waiting thread: {e}"
    );
    // with two warps the second warp never reaches the barrier either
    let e = dev
        .launch(
            &m,
            "divergent_barrier",
            &cfg([1, 1, 1], [64, 1, 1]),
            &[ParamValue::U64(out)],
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::BarrierDivergence { .. }), "{e}");
}

#[test]
fn unsupported_opcode_names_the_line() {
    let src = fixture("tiled_gemm.ptx");
    let line = src.lines().position(|l| l.contains("fma.rn.f32")).unwrap();
    let bad: Vec<String> = src
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                l.replace("fma.rn.f32", "fma.rn.sat.f32")
            } else {
                l.to_string()
            }
        })
        .collect();
    let e = Module::parse(&bad.join("\n")).unwrap_err();
    assert_eq!(e.line as usize, line + 1);
    assert!(e.text.contains("fma.rn.sat.f32"), "{e}");
    assert!(
        e.reason.contains("fma.rn.sat.f32") && e.reason.contains("allowlist"),
        "{e}"
    );
    let shown = format!("{e}");
    assert!(shown.contains(&format!("line {}", line + 1)), "{shown}");
    // cache-hint qualifiers are lexed whole and rejected by name
    let hint = src.replacen("ld.global.nc.f32", "ld.global.nc.L1::no_allocate.f32", 1);
    let e = Module::parse(&hint).unwrap_err();
    assert!(
        e.reason.contains("`ld.global.nc.L1::no_allocate.f32`"),
        "{e}"
    );
    // unknown directives and device-function calls are rejected too
    assert!(Module::parse(
        ".version 9.5\n.target sm_80\n.address_size 64\n.func foo()\n{\nret;\n}\n"
    )
    .is_err());
}

#[test]
fn nc_contract_and_initcheck() {
    let m = module("tiled_gemm.ptx");
    let mut dev = Device::new();
    let (mm, nn, kk) = (16, 16, 16);
    let a = upload_f32(&mut dev, &randf(5, mm * kk));
    let b = upload_f32(&mut dev, &randf(6, kk * nn));
    let args = |c: u64| {
        [
            ParamValue::U64(a),
            ParamValue::U64(b),
            ParamValue::U64(c),
            ParamValue::I32(16),
            ParamValue::I32(16),
            ParamValue::I32(16),
        ]
    };
    // C aliases A, which is read through ld.global.nc (const __restrict__)
    let e = dev
        .launch(
            &m,
            "tiled_gemm",
            &cfg([1, 1, 1], [16, 16, 1]),
            &args(a),
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::NcWrite { .. }), "{e}");
    // B never written: initcheck
    let b2 = dev.alloc(16 * 16 * 4).unwrap();
    let c = dev.alloc(16 * 16 * 4).unwrap();
    let args2 = [
        ParamValue::U64(a),
        ParamValue::U64(b2),
        ParamValue::U64(c),
        ParamValue::I32(16),
        ParamValue::I32(16),
        ParamValue::I32(16),
    ];
    let e = dev
        .launch(
            &m,
            "tiled_gemm",
            &cfg([1, 1, 1], [16, 16, 1]),
            &args2,
            &Options::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            EmuError::UninitRead {
                space: "global",
                ..
            }
        ),
        "{e}"
    );
    // wrong parameter count / size
    let e = dev
        .launch(
            &m,
            "tiled_gemm",
            &cfg([1, 1, 1], [16, 16, 1]),
            &args2[..5],
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::BadParams(_)), "{e}");
    let mut bad = args2;
    bad[3] = ParamValue::U64(16);
    assert!(matches!(
        dev.launch(
            &m,
            "tiled_gemm",
            &cfg([1, 1, 1], [16, 16, 1]),
            &bad,
            &Options::default()
        ),
        Err(EmuError::BadParams(_))
    ));
    let _ = (mm, nn, kk);
}

#[test]
fn global_race_between_ctas_and_schedule_seed_sensitivity() {
    let m = hazards();
    // data[1] = data[0] in CTA 1 relies on CTA 0 having run first: illegal ordering assumption
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let mut dev = Device::new();
        let data = zeros(&mut dev, 8);
        let opts = Options {
            schedule_seed: seed,
            global_racecheck: false,
            ..Default::default()
        };
        dev.launch(
            &m,
            "order_dependent",
            &cfg([2, 1, 1], [32, 1, 1]),
            &[ParamValue::U64(data)],
            &opts,
        )
        .unwrap();
        outcomes.insert(dev.read_f32(data, 2).unwrap()[1].to_bits());
    }
    assert_eq!(outcomes.len(), 2, "some seed must run CTA 1 before CTA 0");
    // the race checker flags it under every seed
    for seed in 0..4 {
        let mut dev = Device::new();
        let data = zeros(&mut dev, 8);
        let e = dev
            .launch(
                &m,
                "order_dependent",
                &cfg([2, 1, 1], [32, 1, 1]),
                &[ParamValue::U64(data)],
                &Options {
                    schedule_seed: seed,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(e, EmuError::GlobalRace { .. }), "{e}");
        assert_diag(&e, "order_dependent", "global", &[46, 48]);
    }
}

#[test]
fn coalescing_counter_distinguishes_strided_access() {
    let m = hazards();
    let mut spr = Vec::new();
    for stride in [1i32, 32] {
        let mut dev = Device::new();
        let inp = upload_f32(&mut dev, &randf(7, 128 * 32));
        let out = dev.alloc(128 * 4).unwrap();
        let r = dev
            .launch(
                &m,
                "copy_strided",
                &cfg([1, 1, 1], [128, 1, 1]),
                &[
                    ParamValue::U64(inp),
                    ParamValue::U64(out),
                    ParamValue::I32(stride),
                ],
                &Options::default(),
            )
            .unwrap();
        let c = &r.counters;
        assert_eq!(c.global_load_requests, 4);
        assert_eq!(
            c.global_store_sectors, 16,
            "coalesced stores: 4 sectors per warp"
        );
        spr.push(c.global_load_sectors as f64 / c.global_load_requests as f64);
    }
    assert_eq!(spr, vec![4.0, 32.0]);
}

#[test]
fn bank_conflict_counter_distinguishes_padding() {
    let m = hazards();
    let mut conflicts = Vec::new();
    for k in ["column_read_padded", "column_read_unpadded"] {
        let mut dev = Device::new();
        let inp = upload_f32(&mut dev, &randf(8, 32 * 32));
        let out = dev.alloc(128).unwrap();
        let r = dev
            .launch(
                &m,
                k,
                &cfg([1, 1, 1], [32, 1, 1]),
                &[ParamValue::U64(inp), ParamValue::U64(out)],
                &Options::default(),
            )
            .unwrap();
        conflicts.push((
            r.counters.shared_bank_conflicts,
            r.counters.shared_wavefronts,
        ));
    }
    assert_eq!(conflicts[0].0, 0, "stride 33: conflict-free");
    // stride 32: every column read hits one bank 32 times -> 31 extra wavefronts per request
    assert_eq!(conflicts[1].0, 32 * 31);
    assert_eq!(conflicts[1].1, 32 + 32 * 32);
}

#[test]
fn sampled_launch_scales_counters() {
    let m = module("tiled_gemm.ptx");
    let run = |sample: Option<u32>| {
        let mut dev = Device::new();
        let a = upload_f32(&mut dev, &randf(9, 64 * 64));
        let b = upload_f32(&mut dev, &randf(10, 64 * 64));
        let c = dev.alloc(64 * 64 * 4).unwrap();
        let args = [
            ParamValue::U64(a),
            ParamValue::U64(b),
            ParamValue::U64(c),
            ParamValue::I32(64),
            ParamValue::I32(64),
            ParamValue::I32(64),
        ];
        dev.launch(
            &m,
            "tiled_gemm",
            &cfg([4, 4, 1], [16, 16, 1]),
            &args,
            &Options {
                sample_ctas: sample,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let full = run(None);
    let part = run(Some(2));
    let all = run(Some(100));
    // a huge grid can be sampled without materialising it
    let nop = Module::parse(
        ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\nret;\n}\n",
    )
    .unwrap();
    let r = Device::new()
        .launch(
            &nop,
            "k",
            &cfg([1 << 30, 4, 1], [32, 1, 1]),
            &[],
            &Options {
                sample_ctas: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.executed_ctas, r.total_ctas), (3, 1 << 32));
    assert_eq!(r.counters.warp_instructions, 1 << 32);
    assert_eq!((all.executed_ctas, all.sampled), (16, false));
    assert_eq!(
        (part.executed_ctas, part.total_ctas, part.sampled),
        (2, 16, true)
    );
    assert_eq!(
        full.counters.warp_instructions,
        part.counters.warp_instructions
    );
    assert_eq!(
        full.counters.global_sectors(),
        part.counters.global_sectors()
    );
    assert!((full.counters.simt_efficiency() - 1.0).abs() < 1e-12);
    let model = full.roofline(2.0 * 64f64.powi(3), 3.0 * 64.0 * 64.0 * 4.0, false);
    assert!(model.modeled_time_s >= model.floor_time_s);
    assert!(format!("{model}").contains("model"));
}

#[test]
fn watchdog_and_divergent_collective() {
    let spin = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry spin()\n{\n$L:\nbra $L;\n}\n";
    let m = Module::parse(spin).unwrap();
    let e = Device::new()
        .launch(
            &m,
            "spin",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[],
            &Options {
                max_warp_steps: 1000,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::Watchdog { .. }), "{e}");
    assert!(format!("{e}").contains("PTX line 7: bra $L;"), "{e}");
    // half the warp leaves, the other half shuffles with a full mask: exited lanes are not waited
    // for (bfly 1 stays inside lanes 0-15), but reading an exited lane's value is an error
    for (shfl_op, ok) in [
        ("shfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;", true),
        ("shfl.sync.down.b32 %r2, %r1, 16, 31, -1;", false),
    ] {
        let src = format!(".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k()\n{{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\nmov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 bra $L_end;\n{shfl_op}\n$L_end:\nret;\n}}\n");
        let m = Module::parse(&src).unwrap();
        let r = Device::new().launch(
            &m,
            "k",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[],
            &Options::default(),
        );
        if ok {
            r.unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(matches!(e, EmuError::DivergentCollective { .. }), "{e}");
            assert_eq!(e.diag().unwrap().ptx_line, 11, "{e}");
        }
    }
    // __syncwarp at different call sites is legal on sm_70+; shfl at different sites is not
    for (op, ok) in [
        ("bar.warp.sync -1;", true),
        ("shfl.sync.idx.b32 %r2, %r1, 0, 31, -1;", false),
    ] {
        let src = format!(".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k()\n{{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\nmov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 bra $L_b;\n{op}\nbra.uni $L_end;\n$L_b:\n{op}\n$L_end:\nret;\n}}\n");
        let m = Module::parse(&src).unwrap();
        let r = Device::new().launch(
            &m,
            "k",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[],
            &Options::default(),
        );
        match (ok, r) {
            (true, r) => {
                r.unwrap();
            }
            (false, Err(e)) => assert!(matches!(e, EmuError::DivergentCollective { .. }), "{e}"),
            (false, Ok(_)) => panic!("shfl at two call sites must be reported"),
        }
    }
    // a bra.uni that is not uniform
    let uni = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\nmov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 bra.uni $L_end;\n$L_end:\nret;\n}\n";
    let m = Module::parse(uni).unwrap();
    let e = Device::new()
        .launch(
            &m,
            "k",
            &cfg([1, 1, 1], [32, 1, 1]),
            &[],
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(e, EmuError::NonUniformBranch { .. }), "{e}");
}

#[test]
fn lints_contraction_and_warpid() {
    let src = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_out)\n{\n.reg .f32 %f<4>;\n.reg .b32 %r<2>;\n.reg .b64 %rd<2>;\nld.param.u64 %rd1, [k_out];\nmov.f32 %f1, 0f3F800000;\nmul.f32 %f2, %f1, %f1;\nadd.f32 %f3, %f2, %f1;\nmov.u32 %r1, %warpid;\nst.global.f32 [%rd1], %f3;\nret;\n}\n";
    let m = Module::parse(src).unwrap();
    let mut dev = Device::new();
    let out = dev.alloc(4).unwrap();
    let r = dev
        .launch(
            &m,
            "k",
            &cfg([1, 1, 1], [1, 1, 1]),
            &[ParamValue::U64(out)],
            &Options::default(),
        )
        .unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("FFMA") && w.contains("[12]")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("%warpid")),
        "{:?}",
        r.warnings
    );
    // the nvcc fixtures pre-fuse into fma.rn, so they carry no contraction warning
    let g = module("tiled_gemm.ptx");
    assert!(g.opcode_forms().contains("fma.rn.f32"));
}

#[test]
fn dynamic_shared_memory_and_its_bounds() {
    let m = hazards();
    let mut dev = Device::new();
    let x = randf(40, 64);
    let inp = upload_f32(&mut dev, &x);
    let out = dev.alloc(256).unwrap();
    let launch = |dev: &mut Device, extra: i32, dyn_bytes: u32| {
        dev.launch(
            &m,
            "dynamic_reverse",
            &LaunchConfig {
                grid: [1, 1, 1],
                block: [64, 1, 1],
                dynamic_shared_bytes: dyn_bytes,
            },
            &[
                ParamValue::U64(inp),
                ParamValue::U64(out),
                ParamValue::I32(extra),
            ],
            &Options::default(),
        )
    };
    launch(&mut dev, 0, 256).unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, 64).unwrap();
    for t in 0..64 {
        assert_eq!(
            got[t],
            x[63 - t] + 256.0,
            "%dynamic_smem_size is the launch's dynamic size"
        );
    }
    // thread 0 reads one element past the dynamic allocation
    let e = launch(&mut dev, 1, 256).unwrap_err();
    assert!(
        matches!(
            e,
            EmuError::OutOfBounds {
                space: "shared",
                ..
            }
        ),
        "{e}"
    );
    let d = assert_diag(&e, "dynamic_reverse", "ld.shared", &[58]);
    assert_eq!(d.thread, [0, 0, 0]);
}

#[test]
fn schedule_seed_permutes_warps_inside_a_cta() {
    // lane 0 of every warp writes its warp index to one shared word; after the barrier thread 0
    // reads it: the winner depends on the warp order (a WAW race the checker reports)
    let src = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_out)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<6>;\n.reg .b64 %rd<2>;\n.shared .align 4 .b8 w[4];\nld.param.u64 %rd1, [k_out];\nmov.u32 %r1, %tid.x;\nand.b32 %r2, %r1, 31;\nshr.u32 %r3, %r1, 5;\nsetp.ne.u32 %p1, %r2, 0;\n@%p1 bra $L1;\nst.shared.u32 [w], %r3;\n$L1:\nbar.sync 0;\nsetp.ne.u32 %p1, %r1, 0;\n@%p1 bra $L2;\nld.shared.u32 %r4, [w];\nst.global.u32 [%rd1], %r4;\n$L2:\nret;\n}\n";
    let m = Module::parse(src).unwrap();
    let mut winners = std::collections::BTreeSet::new();
    for seed in 0..24 {
        let mut dev = Device::new();
        let out = zeros(&mut dev, 4);
        let opts = Options {
            schedule_seed: seed,
            racecheck: false,
            ..Default::default()
        };
        dev.launch(
            &m,
            "k",
            &cfg([1, 1, 1], [128, 1, 1]),
            &[ParamValue::U64(out)],
            &opts,
        )
        .unwrap();
        winners.insert(u32::from_le_bytes(
            dev.read(out, 4).unwrap().try_into().unwrap(),
        ));
    }
    assert!(winners.len() >= 2, "warp order never changed: {winners:?}");
    let mut dev = Device::new();
    let out = zeros(&mut dev, 4);
    let e = dev
        .launch(
            &m,
            "k",
            &cfg([1, 1, 1], [128, 1, 1]),
            &[ParamValue::U64(out)],
            &Options::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            EmuError::SharedRace {
                kind: "write after write",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn global_race_inside_a_cta_needs_a_barrier() {
    // thread 0 writes out[0]; thread 32 (another warp) reads it, with or without bar.sync between
    for (sync, racy) in [("", true), ("bar.sync 0;", false)] {
        let src = format!(".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_out)\n{{\n.reg .pred %p<3>;\n.reg .b32 %r<4>;\n.reg .b64 %rd<2>;\nld.param.u64 %rd1, [k_out];\nmov.u32 %r1, %tid.x;\nsetp.ne.u32 %p1, %r1, 0;\n@%p1 bra $L1;\nst.global.u32 [%rd1], 7;\n$L1:\n{sync}\nsetp.ne.u32 %p2, %r1, 32;\n@%p2 bra $L2;\nld.global.u32 %r2, [%rd1];\nst.global.u32 [%rd1+4], %r2;\n$L2:\nret;\n}}\n");
        let m = Module::parse(&src).unwrap();
        for seed in 0..4 {
            let mut dev = Device::new();
            let out = zeros(&mut dev, 8);
            let r = dev.launch(
                &m,
                "k",
                &cfg([1, 1, 1], [64, 1, 1]),
                &[ParamValue::U64(out)],
                &Options {
                    schedule_seed: seed,
                    ..Default::default()
                },
            );
            match (racy, r) {
                (true, Err(e)) => {
                    assert!(matches!(e, EmuError::GlobalRace { .. }), "{e}");
                    assert!(format!("{e}").contains("same CTA"), "{e}");
                }
                (true, Ok(_)) => {
                    panic!("seed {seed}: unsynchronised global write/read not reported")
                }
                (false, r) => {
                    r.unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(dev.read(out + 4, 4).unwrap(), 7u32.to_le_bytes());
                }
            }
        }
    }
}

#[test]
fn out_of_bounds_details_before_after_and_null() {
    let mut dev = Device::new();
    let a = dev.alloc(100).unwrap();
    let b = dev.alloc(100).unwrap();
    let msg = |r: Result<Vec<u8>, EmuError>| format!("{}", r.unwrap_err());
    assert!(msg(dev.read(a + 96, 8)).contains("4 B past the end"));
    assert!(msg(dev.read(b - 8, 4)).contains("8 B before the start"));
    assert!(msg(dev.read(16, 4)).contains("null"));
    assert!(msg(dev.read(u64::MAX - 2, 8)).contains("wraps"));
    dev.free(a).unwrap();
    assert!(
        msg(dev.read(a, 4)).contains("not inside any allocation")
            || msg(dev.read(a, 4)).contains("before the start")
    );
    assert!(dev.free(a).is_err());
    assert_eq!(a % 256, 0);
    assert_eq!(b % 256, 0);
    assert!(b - a >= 64 * 1024, "guard gap");
}
