//! Range checks for numeric parameters, shared by every component and engine setting: one
//! [`Range`] per parameter, checked at construction, and the error names the component, the
//! key, the value and the valid range.
//!
//! ```
//! use tram::check::Range;
//! const MOMENTUM: Range = Range::closed_open(0.0, 1.0);
//! assert!(MOMENTUM.check("base optimizer `sgd`", "momentum", 0.9).is_ok());
//! let e = MOMENTUM.check("base optimizer `sgd`", "momentum", 2.0).unwrap_err();
//! assert_eq!(e.to_string(), "invalid parameters for base optimizer `sgd`: `momentum` must be in [0, 1), got 2");
//! ```

use crate::error::{Error, Result};
use std::fmt;

/// An interval of valid values. Every range excludes NaN and ±∞: an unbounded side means
/// "any finite value".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    lo: f64,
    hi: f64,
    lo_open: bool,
    hi_open: bool,
}

impl Range {
    /// `[lo, hi]`.
    pub const fn closed(lo: f64, hi: f64) -> Self {
        Self { lo, hi, lo_open: false, hi_open: false }
    }
    /// `[lo, hi)`.
    pub const fn closed_open(lo: f64, hi: f64) -> Self {
        Self { lo, hi, lo_open: false, hi_open: true }
    }
    /// `(lo, hi]`.
    pub const fn open_closed(lo: f64, hi: f64) -> Self {
        Self { lo, hi, lo_open: true, hi_open: false }
    }
    /// `[lo, ∞)`, finite.
    pub const fn at_least(lo: f64) -> Self {
        Self { lo, hi: f64::INFINITY, lo_open: false, hi_open: true }
    }
    /// `(lo, ∞)`, finite.
    pub const fn above(lo: f64) -> Self {
        Self { lo, hi: f64::INFINITY, lo_open: true, hi_open: true }
    }
    /// Any finite number.
    pub const FINITE: Range = Range { lo: f64::NEG_INFINITY, hi: f64::INFINITY, lo_open: true, hi_open: true };
    /// `[0, ∞)`, finite.
    pub const NON_NEGATIVE: Range = Range::at_least(0.0);
    /// `(0, ∞)`, finite.
    pub const POSITIVE: Range = Range::above(0.0);
    /// `[0, 1]`.
    pub const UNIT: Range = Range::closed(0.0, 1.0);

    /// Whether `v` lies in the range (never for NaN or ±∞).
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite() && if self.lo_open { v > self.lo } else { v >= self.lo } && if self.hi_open { v < self.hi } else { v <= self.hi }
    }

    /// `Ok` when `value` is in the range, else an [`Error::Config`] for `component` naming
    /// `key`, the value and the range.
    pub fn check(&self, component: &str, key: &str, value: f64) -> Result<()> {
        if self.contains(value) {
            return Ok(());
        }
        Err(Error::Config { component: component.to_string(), reason: format!("`{key}` must be in {self}, got {}", number(value)) })
    }

    /// [`Range::check`] for an optional value (`None` passes).
    pub fn check_opt(&self, component: &str, key: &str, value: Option<f64>) -> Result<()> {
        value.map_or(Ok(()), |v| self.check(component, key, v))
    }
}

/// `v` written short: `1e300`, not three hundred digits.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if v.is_finite() && a != 0.0 && !(1e-4..1e6).contains(&a) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

fn bound(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "∞" } else { "-∞" }.into()
    } else {
        number(v)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { '(' } else { '[' },
            bound(self.lo),
            bound(self.hi),
            if self.hi_open { ')' } else { ']' }
        )?;
        if self.lo.is_infinite() || self.hi.is_infinite() {
            f.write_str(" (finite)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exclude_non_finite_values_and_respect_open_ends() {
        for r in [Range::FINITE, Range::NON_NEGATIVE, Range::POSITIVE, Range::UNIT, Range::closed_open(0.0, 1.0)] {
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(!r.contains(v), "{r} contains {v}");
            }
        }
        assert!(Range::NON_NEGATIVE.contains(0.0) && !Range::POSITIVE.contains(0.0));
        assert!(Range::closed_open(0.0, 1.0).contains(0.0) && !Range::closed_open(0.0, 1.0).contains(1.0));
        assert!(Range::open_closed(0.0, 1.0).contains(1.0) && !Range::open_closed(0.0, 1.0).contains(0.0));
        assert!(Range::NON_NEGATIVE.contains(1e300) && !Range::closed(0.0, 1e3).contains(1e308));
    }

    #[test]
    fn the_error_names_component_key_value_and_range() {
        let e = Range::POSITIVE.check("trust region `ema`", "temperature", 0.0).unwrap_err().to_string();
        assert_eq!(e, "invalid parameters for trust region `ema`: `temperature` must be in (0, ∞) (finite), got 0");
        let e = Range::NON_NEGATIVE.check("x", "lambda", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("`lambda` must be in [0, ∞) (finite), got NaN"), "{e}");
        assert!(Range::UNIT.check_opt("x", "k", None).is_ok());
        let e = Range::closed(0.0, 1e6).check("x", "eta", 1e300).unwrap_err().to_string();
        assert!(e.ends_with("`eta` must be in [0, 1e6], got 1e300"), "{e}");
    }
}
