//! Scalar maths the kernels share: a float trait over f32 / f64 and branch-free f32 `exp`,
//! `tanh` and `erf` that the compiler vectorises (libm's are scalar calls).

use candle_core::WithDType;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The element types the CPU kernels compute in: f32 (fast, vectorisable approximations within
/// a few ulp) and f64 (libm-exact, for finite-difference checks). Half types are cast to f32 by
/// the public wrappers.
pub trait Float:
    WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + MulAssign
    + SubAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    /// The larger of two values; NaN in `self` propagates.
    #[inline(always)]
    fn maxp(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        tanh_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn erf(self) -> Self {
        erf_f64(self)
    }
}

/// `eˣ` in f32, branch-free (Cephes `expf`'s range reduction and polynomial, ~1 ulp): 0 below
/// −87, +∞ above 88.7, NaN for NaN. Written as selects so that loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.7;
    // Clamp (NaN stays NaN and is returned as such at the end).
    let xc = x.clamp(LO, HI);
    // n = round(x / ln 2) by the 1.5·2²³ trick (round to nearest even, exact for |n| < 2²²).
    const MAGIC: f32 = 12_582_912.0;
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let y = 1.0 + r + r * r * p;
    let bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000).wrapping_add(127) as u32;
    let y = y * f32::from_bits(bits << 23);
    let y = if x < LO { 0.0 } else { y };
    let y = if x > HI { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh` in f32 from [`exp_f32`]: `sign(u) (1 − e^{−2|u|}) / (1 + e^{−2|u|})` (absolute error
/// about 1e-7).
#[inline(always)]
pub fn tanh_f32(u: f32) -> f32 {
    let e = exp_f32(-2.0 * u.abs());
    let t = (1.0 - e) / (1.0 + e);
    // sign of u, NaN kept (t is NaN then too)
    f32::from_bits(t.to_bits() | (u.to_bits() & 0x8000_0000))
}

/// `erf` in f32: Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7 in exact arithmetic, 5e-7
/// in f32; the formula PyTorch's vectorised CPU `erf` uses too), branch-free.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let y = 1.0 - p * exp_f32(-a * a);
    // sign of x, NaN kept (y is NaN then too)
    f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// `erf` in f64 to about 1e-15: its Maclaurin series below |x| = 3, the continued fraction of
/// `erfc` above.
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    if a.is_nan() {
        return x;
    }
    let y = if a < 3.0 {
        // erf(a) = 2/√π Σ (−1)ⁿ a^{2n+1} / (n! (2n+1))
        let (mut term, mut sum, a2) = (a, a, a * a);
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = e^{−a²}/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …))))
        let mut k = a;
        for n in (1..80).rev() {
            k = a + (n as f64 / 2.0) / k;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * k)
    };
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// Largest element (8 lanes; NaN in `x` reaches the caller through the later `exp` sums).
#[inline(always)]
pub fn max_of<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INF; 8];
    let c = x.chunks_exact(8);
    let mut m = T::NEG_INF;
    for v in c.remainder() {
        m = m.maxp(*v);
    }
    for v in c {
        for i in 0..8 {
            acc[i] = acc[i].maxp(v[i]);
        }
    }
    acc.iter().fold(m, |a, b| a.maxp(*b))
}

/// `out[i] = exp(x[i] − shift)`.
#[inline(always)]
pub fn exp_shifted<T: Float>(x: &[T], shift: T, out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - shift).exp();
    }
}

/// Σ a (8 lanes).
#[inline(always)]
pub fn sum<T: Float>(a: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let c = a.chunks_exact(8);
    let mut s = T::ZERO;
    for x in c.remainder() {
        s += *x;
    }
    for x in c {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().fold(s, |a, b| a + *b)
}

/// Σ a·b (8 lanes).
#[inline(always)]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    acc.iter().fold(s, |a, b| a + *b)
}

/// `max + log Σ exp(x − max)` of a row, using `scratch` (the row's length) for the exponentials.
#[inline(always)]
pub fn logsumexp<T: Float>(x: &[T], scratch: &mut [T]) -> T {
    let m = max_of(x);
    exp_shifted(x, m, scratch);
    m + sum(scratch).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_f32_functions_match_libm() {
        let mut worst = (0f64, 0f64, 0f64);
        let mut x = -100.0f64;
        while x < 100.0 {
            let e = exp_f32(x as f32) as f64;
            let want = (x as f32 as f64).exp();
            if want > 1e-37 && want < 1e38 {
                worst.0 = worst.0.max(((e - want) / want).abs());
            }
            worst.1 = worst.1.max((tanh_f32(x as f32) as f64 - (x as f32 as f64).tanh()).abs());
            worst.2 = worst.2.max((erf_f32(x as f32) as f64 - erf_f64(x as f32 as f64)).abs());
            x += 0.00137;
        }
        assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
        assert!(worst.1 < 2e-7, "tanh absolute error {}", worst.1);
        assert!(worst.2 < 5e-7, "erf absolute error {}", worst.2);
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(1e9), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan() && erf_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(1e9), 1.0);
        assert_eq!(tanh_f32(-1e9), -1.0);
    }

    #[test]
    fn erf_f64_matches_tabulated_values() {
        // Abramowitz & Stegun table 7.1 and erfc(5) = 1.5374597944280349e-12.
        for (x, want) in
            [(0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (2.0, 0.995_322_265_018_952_7), (3.5, 0.999_999_256_901_627_7)]
        {
            assert!((erf_f64(x) - want).abs() < 1e-15, "erf({x}) = {}", erf_f64(x));
            assert!((erf_f64(-x) + want).abs() < 1e-15);
        }
        assert!(((1.0 - erf_f64(5.0)) - 1.537_459_794_428_035e-12).abs() < 1e-15);
    }
}
