//! The integer and float conversions the importer needs, in one place, so that every
//! other `as` is lossless and clippy's `cast_possible_truncation` / `cast_sign_loss`
//! stay on for the crate.
//!
//! Ferry builds for 64-bit targets only (io_uring, VDDK and 40 TiB disks all assume
//! it), so a `u64` that indexes memory always fits a `usize`.

#[cfg(not(target_pointer_width = "64"))]
compile_error!("Ferry supports 64-bit targets only: a usize must hold any u64");

/// `n` as a `usize`: lossless on the 64-bit targets Ferry builds for (checked above).
#[allow(clippy::cast_possible_truncation)]
pub const fn usize_of(n: u64) -> usize {
    n as usize
}

/// `x` rounded up to a whole number of bytes, saturating: NaN and negatives are 0,
/// anything at or past 2^64 is `u64::MAX`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn u64_ceil(x: f64) -> u64 {
    // `as` from float saturates and maps NaN to 0 (Rust reference, "numeric cast").
    x.ceil() as u64
}

/// `x` rounded down, saturating as [`u64_ceil`] does.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn u64_floor(x: f64) -> u64 {
    x.floor() as u64
}

/// `v` as a `u64`, saturating at `u64::MAX`.
pub fn u64_saturating(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_conversions_saturate() {
        assert_eq!(u64_ceil(1.2), 2);
        assert_eq!(u64_ceil(-3.0), 0);
        assert_eq!(u64_ceil(f64::NAN), 0);
        assert_eq!(u64_ceil(1e30), u64::MAX);
        assert_eq!(u64_floor(7.9), 7);
        assert_eq!(u64_saturating(u128::MAX), u64::MAX);
        assert_eq!(u64_saturating(5), 5);
        assert_eq!(usize_of(1 << 40), 1usize << 40);
    }
}
