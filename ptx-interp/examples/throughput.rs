//! Measures interpreter throughput (thread-instructions per second) on the tiled GEMM fixture
//! with each checker switched on and off: `cargo run -p ptx-interp --example throughput --release`.
use ptx_interp::*;

fn main() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiled_gemm.ptx"
    ))
    .unwrap();
    let m = Module::parse(&src).unwrap();
    let n = 128usize;
    let mut dev = Device::new();
    let a = dev.alloc((n * n * 4) as u64).unwrap();
    let b = dev.alloc((n * n * 4) as u64).unwrap();
    let c = dev.alloc((n * n * 4) as u64).unwrap();
    let data: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.25).collect();
    dev.write_f32(a, &data).unwrap();
    dev.write_f32(b, &data).unwrap();
    let args = [
        ParamValue::U64(a),
        ParamValue::U64(b),
        ParamValue::U64(c),
        ParamValue::I32(n as i32),
        ParamValue::I32(n as i32),
        ParamValue::I32(n as i32),
    ];
    let cfg = LaunchConfig {
        grid: [(n / 16) as u32, (n / 16) as u32, 1],
        block: [16, 16, 1],
        dynamic_shared_bytes: 0,
    };
    for (name, opts) in [
        ("all checks", Options::default()),
        (
            "no racecheck",
            Options {
                racecheck: false,
                global_racecheck: false,
                ..Default::default()
            },
        ),
        (
            "no checks",
            Options {
                racecheck: false,
                global_racecheck: false,
                initcheck: false,
                memcheck: false,
                ..Default::default()
            },
        ),
    ] {
        let t0 = std::time::Instant::now();
        let r = dev.launch(&m, "tiled_gemm", &cfg, &args, &opts).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "{name:>14}: {:.1} M thread-inst/s ({} in {:.3} s)",
            r.counters.thread_instructions as f64 / dt / 1e6,
            r.counters.thread_instructions,
            dt
        );
    }
}
