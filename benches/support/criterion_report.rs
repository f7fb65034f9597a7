//! Reading criterion's results and formatting them, shared by the benches that write their own
//! markdown reports (included with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where criterion writes its results: `$CRITERION_HOME`, else `<target dir>/criterion`.
pub fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's median and 95 % interval of the median (seconds per call) of one benchmark.
pub struct Timing {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Reads `<dir>/<group>/<id>/new/estimates.json` (times in ns). A minimal extraction, so that
/// the benches need no JSON dependency: the object after `"median":` holds
/// `confidence_interval {lower_bound, upper_bound}` and `point_estimate`.
pub fn read_timing(dir: &Path, group: &str, id: &str) -> Option<Timing> {
    let text = std::fs::read_to_string(dir.join(group).join(id).join("new").join("estimates.json")).ok()?;
    let median = &text[text.find("\"median\":")?..];
    let num = |key: &str| -> Option<f64> {
        let at = median.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = &median[at..];
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse::<f64>().ok()
    };
    Some(Timing { median: num("point_estimate")? * 1e-9, lo: num("lower_bound")? * 1e-9, hi: num("upper_bound")? * 1e-9 })
}

/// Seconds as `1.23 s`, `4.5 ms` or `67 µs`.
pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}
