//! Prints what a context runs on: for `cuda` the device, driver and the kernel image set and
//! architecture that were loaded (`kernel images: cuda12 sm_86 SASS`), or the typed error that
//! prevented it; for `interp` the PTX interpreter and the image set whose PTX it executes.
//! Used by `scripts/gpu-check.sh` so that its report says which image set a GPU loaded.
//!
//! Usage: `cargo run --example describe -- cuda|interp`

use ghostgrad::Context;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "cuda".into());
    let ctx = match which.as_str() {
        "cuda" => Context::cuda(0),
        #[cfg(feature = "interp")]
        "interp" => ghostgrad::runtime::interp::InterpRuntime::new()
            .map(|rt| Context::with_runtime(std::sync::Arc::new(rt))),
        other => {
            eprintln!("describe: unknown context `{other}` (cuda or interp)");
            std::process::exit(2);
        }
    };
    match ctx {
        Ok(ctx) => println!("{which}: {}", ctx.describe()),
        Err(e) => {
            println!("{which}: no context: {e}");
            std::process::exit(1);
        }
    }
}
