//! Shared helpers for the integration tests.
#![allow(dead_code)]

use ptx_interp::*;

pub fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub fn module(name: &str) -> Module {
    Module::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn cfg(grid: [u32; 3], block: [u32; 3]) -> LaunchConfig {
    LaunchConfig {
        grid,
        block,
        dynamic_shared_bytes: 0,
    }
}

/// Deterministic pseudo-random floats in [-1, 1).
pub fn randf(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn upload_f32(dev: &mut Device, v: &[f32]) -> u64 {
    let p = dev.alloc(v.len() as u64 * 4).unwrap();
    dev.write_f32(p, v).unwrap();
    p
}

/// Allocates and zero-fills.
pub fn zeros(dev: &mut Device, bytes: u64) -> u64 {
    let p = dev.alloc(bytes).unwrap();
    dev.write(p, &vec![0u8; bytes as usize]).unwrap();
    p
}
