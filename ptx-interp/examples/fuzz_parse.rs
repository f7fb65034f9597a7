//! Robustness check: deleting or truncating any single line of the fixtures must give a clean
//! parse error or a module, never a panic. `cargo run -p ptx-interp --release --example fuzz_parse`
fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x != "ptx").unwrap_or(true) {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        for i in 0..lines.len() {
            for variant in 0..2 {
                let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                if variant == 0 {
                    v.remove(i);
                } else {
                    let l = &v[i];
                    v[i] = l[..l.len() / 2].to_string();
                }
                let text = v.join("\n");
                let r = std::panic::catch_unwind(|| ptx_interp::Module::parse(&text).is_ok());
                if r.is_err() {
                    println!("PANIC: {} line {} variant {variant}", p.display(), i + 1);
                }
                n += 1;
            }
        }
    }
    println!("{n} mutated modules parsed without panics");
    // execution: every single-line deletion of the GEMM and reduction fixtures either runs or
    // reports an error, never panics
    use ptx_interp::*;
    let mut runs = 0;
    let mut errors = 0;
    for (file, kernel) in [
        ("tiled_gemm.ptx", "tiled_gemm"),
        ("warp_reduce.ptx", "row_sqnorm"),
        ("mma_gemm.ptx", "mma_gemm"),
    ] {
        let src = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        for i in 0..lines.len() {
            let mut v: Vec<&str> = lines.clone();
            v.remove(i);
            let text = v.join("\n");
            let Ok(m) = Module::parse(&text) else {
                continue;
            };
            let r = std::panic::catch_unwind(|| {
                let mut dev = Device::new();
                let a = dev.alloc(64 * 64 * 4).unwrap();
                dev.write(a, &vec![0x3fu8; 64 * 64 * 4]).unwrap();
                let b = dev.alloc(64 * 64 * 4).unwrap();
                dev.write(b, &vec![0x3fu8; 64 * 64 * 4]).unwrap();
                let c = dev.alloc(64 * 64 * 4).unwrap();
                let d = dev.alloc(64).unwrap();
                let e = dev.alloc(64).unwrap();
                let opts = Options {
                    max_warp_steps: 2_000_000,
                    ..Default::default()
                };
                let (grid, block, params): ([u32; 3], [u32; 3], Vec<ParamValue>) = match kernel {
                    "tiled_gemm" => (
                        [2, 2, 1],
                        [16, 16, 1],
                        vec![
                            ParamValue::U64(a),
                            ParamValue::U64(b),
                            ParamValue::U64(c),
                            ParamValue::I32(32),
                            ParamValue::I32(32),
                            ParamValue::I32(32),
                        ],
                    ),
                    "row_sqnorm" => (
                        [2, 1, 1],
                        [64, 1, 1],
                        vec![
                            ParamValue::U64(a),
                            ParamValue::I32(16),
                            ParamValue::U64(c),
                            ParamValue::U64(d),
                            ParamValue::U64(e),
                        ],
                    ),
                    _ => (
                        [1, 1, 1],
                        [32, 1, 1],
                        vec![
                            ParamValue::U64(a),
                            ParamValue::U64(b),
                            ParamValue::U64(c),
                            ParamValue::I32(16),
                            ParamValue::I32(16),
                            ParamValue::I32(32),
                            ParamValue::I32(1),
                        ],
                    ),
                };
                dev.launch(
                    &m,
                    kernel,
                    &LaunchConfig {
                        grid,
                        block,
                        dynamic_shared_bytes: 0,
                    },
                    &params,
                    &opts,
                )
                .is_ok()
            });
            match r {
                Err(_) => println!(
                    "EXEC PANIC: {file} without line {}: {}",
                    i + 1,
                    lines[i].trim()
                ),
                Ok(false) => errors += 1,
                Ok(true) => {}
            }
            runs += 1;
        }
    }
    println!("{runs} mutated launches, {errors} reported errors, no panics unless listed above");
}
