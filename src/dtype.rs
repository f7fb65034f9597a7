//! Element types accepted by the operations.

use std::fmt;

/// Element type of a buffer. Factor inputs may be `F32`, `BF16` or `F16`; masks are `U8`
/// (nonzero = keep); segment offsets and sample ids are `I32`; token ids are `I32` or `I64`
/// (torch's default integer type); results are `F32`, except the value accumulator of In-Run
/// Data Shapley, which is `F64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 0,
    BF16 = 1,
    F16 = 2,
    U8 = 3,
    I32 = 4,
    F64 = 5,
    I64 = 6,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
            DType::F64 | DType::I64 => 8,
        }
    }
    /// True for the factor (activation/gradient) dtypes.
    pub const fn is_float_input(self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }
    /// Suffix of the kernel instantiation for this input dtype.
    pub const fn kernel_suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::F64 => "f64",
            DType::I64 => "i64",
        }
    }
    /// True for the dtypes token ids may have.
    pub const fn is_token_id(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
    pub fn from_u32(v: u32) -> Option<DType> {
        Some(match v {
            0 => DType::F32,
            1 => DType::BF16,
            2 => DType::F16,
            3 => DType::U8,
            4 => DType::I32,
            5 => DType::F64,
            6 => DType::I64,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::F64 => "f64",
            DType::I64 => "i64",
        })
    }
}
