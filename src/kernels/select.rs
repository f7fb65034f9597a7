//! Which kernel image a device loads: a pure function of the driver's CUDA version
//! (`cuDriverGetVersion`, e.g. 12040 for 12.4), the device's compute capability and the image
//! sets this build embeds. No GPU is needed to test it.
//!
//! Rules (CUDA's compatibility rules, applied before the driver sees anything):
//! * a driver older than CUDA 12.0 runs none of our images: [`GhostError::DriverTooOld`];
//! * CUDA 13 images need a CUDA 13 driver (R580+); below that the CUDA 12 set is used, whose
//!   ptxas 12.9 cubins load on every CUDA 12 driver (minor-version compatibility);
//! * within a set, the cubin of the device's exact SM, else the highest lower SM of the same
//!   major (an sm_80 cubin runs on sm_86 / sm_89; sm_90 only on 9.0), else the set's PTX,
//!   JIT-compiled by the driver — which requires the device to be at least the PTX's
//!   architecture and the driver to know the PTX's ISA version (ISA 8.8 needs 12.9, R575);
//! * a set whose images the device cannot use leaves the next set to try (a CUDA 13 driver
//!   tries CUDA 13, then CUDA 12).

use crate::error::{GhostError, Result};
use crate::kernels::ImageSet;

/// A CUDA driver API version as `cuDriverGetVersion` reports it: `1000·major + 10·minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DriverVersion(pub i32);

impl DriverVersion {
    pub const CUDA_12_0: DriverVersion = DriverVersion(12000);
    pub const CUDA_13_0: DriverVersion = DriverVersion(13000);

    pub fn major(self) -> i32 {
        self.0 / 1000
    }
    pub fn minor(self) -> i32 {
        (self.0 % 1000) / 10
    }

    /// The oldest driver branch that supports this CUDA version, where known (NVIDIA's CUDA
    /// toolkit release notes, table 3).
    pub fn driver_branch(self) -> Option<&'static str> {
        Some(match (self.major(), self.minor()) {
            (12, 0) => "R525",
            (12, 1) => "R530",
            (12, 2) => "R535",
            (12, 3) => "R545",
            (12, 4) => "R550",
            (12, 5) => "R555",
            (12, 6) => "R560",
            (12, 8) => "R570",
            (12, 9) => "R575",
            (13, 0) => "R580",
            _ => return None,
        })
    }

    /// The driver version needed to JIT-compile PTX of ISA version `major.minor`.
    pub fn for_ptx_isa((major, minor): (u32, u32)) -> DriverVersion {
        let cuda = match (major, minor) {
            (8, m @ 0..=5) => (12, m),
            (8, m) => (12, m + 1), // ISA 8.6 came with CUDA 12.7, 8.7 with 12.8, 8.8 with 12.9
            (9, m) => (13, m),
            (ma, mi) if ma < 8 => (11, mi.min(8)), // older ISAs: some CUDA 11 driver
            (ma, mi) => (ma + 4, mi),
        };
        DriverVersion(1000 * cuda.0 as i32 + 10 * cuda.1 as i32)
    }
}

impl std::fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CUDA {}.{}", self.major(), self.minor())?;
        match self.driver_branch() {
            Some(b) => write!(f, " ({b}+)"),
            None => Ok(()),
        }
    }
}

/// A device's compute capability, e.g. `(8, 6)`; `sm()` is `86`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeCapability(pub u32, pub u32);

impl ComputeCapability {
    pub fn sm(self) -> u32 {
        10 * self.0 + self.1
    }
}

impl std::fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} (sm_{})", self.0, self.1, self.sm())
    }
}

/// What one embedded image set offers: cubins for `sass` SMs and PTX of architecture `ptx_arch`
/// with ISA `ptx_isa`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetContents {
    pub set: ImageSet,
    pub sass: Vec<u32>,
    pub ptx_arch: u32,
    pub ptx_isa: (u32, u32),
}

/// The code loaded from a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The cubin (SASS) assembled for `sm_N`.
    Sass(u32),
    /// The PTX of `compute_N`, JIT-compiled by the driver.
    Ptx(u32),
}

/// The image a device loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageChoice {
    pub set: ImageSet,
    pub code: Code,
}

impl std::fmt::Display for ImageChoice {
    /// `cuda12 sm_80 SASS` or `cuda13 compute_75 PTX (JIT)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Code::Sass(sm) => write!(f, "{} sm_{sm} SASS", self.set),
            Code::Ptx(a) => write!(f, "{} compute_{a} PTX (JIT)", self.set),
        }
    }
}

/// The code of one set a device can run: exact SM, else the highest lower SM of the same major,
/// else the PTX when the device and the driver can JIT it.
fn choose_in_set(driver: DriverVersion, cc: ComputeCapability, c: &SetContents) -> Option<Code> {
    let sass = c.sass.iter().copied().filter(|&s| s / 10 == cc.0 && s % 10 <= cc.1).max();
    if let Some(sm) = sass {
        return Some(Code::Sass(sm));
    }
    (cc.sm() >= c.ptx_arch && driver >= DriverVersion::for_ptx_isa(c.ptx_isa)).then_some(Code::Ptx(c.ptx_arch))
}

/// The image set and code for a device of compute capability `cc` on a driver of version
/// `driver`, from the sets this build embeds (`sets`; at most one per [`ImageSet`]).
///
/// Errors: [`GhostError::KernelsNotBuilt`] with no set; [`GhostError::DriverTooOld`] naming the
/// version found and the one needed; [`GhostError::UnsupportedDevice`] for a device older than
/// every set's lowest architecture.
pub fn choose_image(driver: DriverVersion, cc: ComputeCapability, sets: &[SetContents]) -> Result<ImageChoice> {
    if sets.is_empty() {
        return Err(GhostError::KernelsNotBuilt);
    }
    if driver < DriverVersion::CUDA_12_0 {
        return Err(GhostError::DriverTooOld {
            found: driver.to_string(),
            needed: DriverVersion::CUDA_12_0.to_string(),
            needed_for: "every ghostgrad kernel image (CUDA 12 and CUDA 13 sets)".into(),
        });
    }
    let order: &[ImageSet] =
        if driver >= DriverVersion::CUDA_13_0 { &[ImageSet::Cuda13, ImageSet::Cuda12] } else { &[ImageSet::Cuda12] };
    for &set in order {
        if let Some(c) = sets.iter().find(|c| c.set == set) {
            if let Some(code) = choose_in_set(driver, cc, c) {
                return Ok(ImageChoice { set, code });
            }
        }
    }
    // Nothing loads: say what would.
    let lowest = sets.iter().map(|c| c.ptx_arch).min().unwrap_or(0);
    if cc.sm() < lowest {
        return Err(GhostError::UnsupportedDevice {
            compute_capability: cc.to_string(),
            reason: format!("ghostgrad's kernels are built for sm_{lowest} and newer"),
        });
    }
    if driver < DriverVersion::CUDA_13_0 && !sets.iter().any(|c| c.set == ImageSet::Cuda12) {
        return Err(GhostError::DriverTooOld {
            found: driver.to_string(),
            needed: DriverVersion::CUDA_13_0.to_string(),
            needed_for: "the CUDA 13 kernel images (this build has no CUDA 12 set: it was built without \
                         NVRTC 12 / ptxas 12, see scripts/setup-cuda.sh)"
                .into(),
        });
    }
    // The device has no cubin in any usable set: only a PTX JIT could run it.
    let needed = sets
        .iter()
        .filter(|c| order.contains(&c.set))
        .map(|c| DriverVersion::for_ptx_isa(c.ptx_isa))
        .min()
        .unwrap_or(DriverVersion::CUDA_13_0);
    Err(GhostError::DriverTooOld {
        found: driver.to_string(),
        needed: needed.to_string(),
        needed_for: format!("JIT-compiling ghostgrad's PTX for a device of compute capability {cc} (no cubin for it)"),
    })
}

/// What this build embeds, in [`choose_image`]'s terms (sets not built are left out).
pub fn embedded_sets() -> Vec<SetContents> {
    use crate::kernels;
    let isa = |ptx: &mut dyn Iterator<Item = &'static str>| ptx.filter_map(kernels::ptx_isa_version).max();
    let mut sets = Vec::new();
    if kernels::KERNELS_BUILT && !kernels::CUDA_ARCHS.is_empty() {
        // The fatbin's PTX comes from the same nvcc as the interpreter's PTX.
        if let Some(ptx_isa) = isa(&mut kernels::KERNEL_FILES.iter().map(|f| f.ptx)) {
            sets.push(SetContents {
                set: ImageSet::Cuda13,
                sass: kernels::CUDA_ARCHS.to_vec(),
                ptx_arch: kernels::CUDA_ARCHS[0],
                ptx_isa,
            });
        }
    }
    if kernels::CUDA12_BUILT && !kernels::CUDA12_ARCHS.is_empty() {
        if let Some(ptx_isa) = isa(&mut kernels::CUDA12_FILES.iter().map(|f| f.jit_ptx.0)) {
            sets.push(SetContents {
                set: ImageSet::Cuda12,
                sass: kernels::CUDA12_ARCHS.to_vec(),
                ptx_arch: kernels::CUDA12_ARCHS[0],
                ptx_isa,
            });
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCHS: &[u32] = &[75, 80, 86, 89, 90, 100, 120];

    fn sets() -> Vec<SetContents> {
        vec![
            SetContents { set: ImageSet::Cuda13, sass: ARCHS.to_vec(), ptx_arch: 75, ptx_isa: (9, 2) },
            SetContents { set: ImageSet::Cuda12, sass: ARCHS.to_vec(), ptx_arch: 75, ptx_isa: (8, 8) },
        ]
    }

    fn pick(driver: i32, cc: (u32, u32), s: &[SetContents]) -> Result<ImageChoice> {
        choose_image(DriverVersion(driver), ComputeCapability(cc.0, cc.1), s)
    }

    fn ok(set: ImageSet, code: Code) -> Result<ImageChoice> {
        Ok(ImageChoice { set, code })
    }

    #[test]
    fn driver_version_decides_the_set() {
        let s = sets();
        // R525 .. R575: CUDA 12 images; R580+: CUDA 13.
        for d in [12000, 12020, 12040, 12080, 12090] {
            assert_eq!(pick(d, (8, 0), &s), ok(ImageSet::Cuda12, Code::Sass(80)), "driver {d}");
        }
        for d in [13000, 13020, 14000] {
            assert_eq!(pick(d, (8, 0), &s), ok(ImageSet::Cuda13, Code::Sass(80)), "driver {d}");
        }
    }

    #[test]
    fn exact_sm_else_highest_lower_minor_of_the_same_major() {
        let s = sets();
        let cases = [
            ((7, 5), Code::Sass(75)),
            ((8, 0), Code::Sass(80)),
            ((8, 6), Code::Sass(86)),
            ((8, 7), Code::Sass(86)), // Orin: the sm_86 cubin
            ((8, 9), Code::Sass(89)),
            ((9, 0), Code::Sass(90)),
            ((10, 0), Code::Sass(100)),
            ((10, 3), Code::Sass(100)),
            ((12, 0), Code::Sass(120)),
            ((12, 1), Code::Sass(120)),
        ];
        for (cc, code) in cases {
            assert_eq!(pick(12040, cc, &s), ok(ImageSet::Cuda12, code), "cc {cc:?}");
        }
        // Only sm_80 built: an sm_86 device runs it, an sm_90 one must JIT the PTX.
        let only80 = vec![SetContents { set: ImageSet::Cuda12, sass: vec![80], ptx_arch: 80, ptx_isa: (8, 8) }];
        assert_eq!(pick(12090, (8, 6), &only80), ok(ImageSet::Cuda12, Code::Sass(80)));
        assert_eq!(pick(12090, (8, 9), &only80), ok(ImageSet::Cuda12, Code::Sass(80)));
        assert_eq!(pick(12090, (9, 0), &only80), ok(ImageSet::Cuda12, Code::Ptx(80)));
        // No lower minor of the same major: an sm_86-only build does not run on sm_80.
        let only86 = vec![SetContents { set: ImageSet::Cuda12, sass: vec![86], ptx_arch: 86, ptx_isa: (8, 8) }];
        assert!(matches!(pick(12090, (8, 0), &only86), Err(GhostError::UnsupportedDevice { .. })));
    }

    #[test]
    fn a_device_without_a_cubin_jits_the_ptx_when_the_driver_knows_its_isa() {
        let s = sets();
        // A future sm_110 device: no cubin of major 11.
        assert_eq!(pick(12090, (11, 0), &s), ok(ImageSet::Cuda12, Code::Ptx(75)));
        // ISA 8.8 needs a 12.9 driver: on 12.4 nothing can run it.
        match pick(12040, (11, 0), &s) {
            Err(GhostError::DriverTooOld { found, needed, .. }) => {
                assert_eq!(found, "CUDA 12.4 (R550+)");
                assert_eq!(needed, "CUDA 12.9 (R575+)");
            }
            other => panic!("{other:?}"),
        }
        // A 13.0 driver cannot JIT ISA 9.2 (CUDA 13.2) but can JIT the CUDA 12 set's 8.8.
        assert_eq!(pick(13000, (11, 0), &s), ok(ImageSet::Cuda12, Code::Ptx(75)));
        assert_eq!(pick(13020, (11, 0), &s), ok(ImageSet::Cuda13, Code::Ptx(75)));
    }

    #[test]
    fn old_drivers_and_devices_get_typed_errors() {
        let s = sets();
        match pick(11080, (8, 0), &s) {
            Err(GhostError::DriverTooOld { found, needed, .. }) => {
                assert_eq!(found, "CUDA 11.8");
                assert_eq!(needed, "CUDA 12.0 (R525+)");
            }
            other => panic!("{other:?}"),
        }
        let e = pick(12040, (7, 0), &s).unwrap_err();
        assert!(matches!(&e, GhostError::UnsupportedDevice { compute_capability, .. } if compute_capability == "7.0 (sm_70)"));
        assert!(matches!(pick(12040, (8, 0), &[]), Err(GhostError::KernelsNotBuilt)));
    }

    #[test]
    fn a_build_without_one_set() {
        let s = sets();
        let only13 = vec![s[0].clone()];
        let only12 = vec![s[1].clone()];
        // CUDA 12 driver, CUDA 13 images only: the error names 13.0 and why.
        match pick(12080, (8, 0), &only13) {
            Err(GhostError::DriverTooOld { found, needed, needed_for }) => {
                assert_eq!(found, "CUDA 12.8 (R570+)");
                assert_eq!(needed, "CUDA 13.0 (R580+)");
                assert!(needed_for.contains("no CUDA 12 set"), "{needed_for}");
            }
            other => panic!("{other:?}"),
        }
        // A CUDA 13 driver runs the CUDA 12 set when that is all there is.
        assert_eq!(pick(13000, (9, 0), &only12), ok(ImageSet::Cuda12, Code::Sass(90)));
    }

    #[test]
    fn ptx_isa_to_driver_and_display() {
        assert_eq!(DriverVersion::for_ptx_isa((8, 0)), DriverVersion(12000));
        assert_eq!(DriverVersion::for_ptx_isa((8, 5)), DriverVersion(12050));
        assert_eq!(DriverVersion::for_ptx_isa((8, 8)), DriverVersion(12090));
        assert_eq!(DriverVersion::for_ptx_isa((9, 0)), DriverVersion(13000));
        assert_eq!(ImageChoice { set: ImageSet::Cuda12, code: Code::Sass(86) }.to_string(), "cuda12 sm_86 SASS");
        assert_eq!(ImageChoice { set: ImageSet::Cuda13, code: Code::Ptx(75) }.to_string(), "cuda13 compute_75 PTX (JIT)");
        assert_eq!(ComputeCapability(8, 6).to_string(), "8.6 (sm_86)");
    }
}
