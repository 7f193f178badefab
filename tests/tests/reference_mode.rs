//! Reference mode (`reduction = "reference"`, `radius_precision = "f32"`): the official TRAM
//! code's behaviours, and the range checks of the trust-region settings that size δ.

mod common;
use common::*;
use tram::{Optimizer, OptimizerConfig};

fn build(composition: &str) -> tram::Result<Optimizer> {
    Optimizer::new(&tram_plugins::registry().unwrap(), OptimizerConfig::new(composition, 0.01).with("noise", "sigma", 1e-3))
}

#[test]
fn a_zero_radius_perturbs_only_in_reference_mode_and_changes_nothing() {
    // `prev` at t = 0: δ = 0 exactly. The paper mode skips the ascent; reference mode runs it,
    // as the official code does, with ε = 0, so the step equals the plain one bitwise.
    let (paper, reference) = (model(3), model(3));
    let b = batches(1, 4);
    let r1 = optimizer("prev+ball+adam").step(&paper, &b).unwrap();
    let r2 = optimizer("prev(reduction=reference)+ball+adam").step(&reference, &b).unwrap();
    assert_eq!((r1.delta, r2.delta), (Some(0.0), Some(0.0)));
    assert!(!r1.ascent && r2.ascent, "{r1:?}\n{r2:?}");
    assert_eq!(r2.epsilon_norm, 0.0);
    // Paper: forward + target. Reference: the same, and the second pass at θ + 0.
    assert_eq!((r1.forward_passes, r2.forward_passes), (2, 3));
    assert_bitwise_equal(&paper, &reference, "ε = 0");
}

#[test]
fn a_negative_radius_perturbs_in_reference_mode() {
    // A negative logit_scale makes every δ negative: the official code ascends with it anyway
    // (in the opposite direction), so the step differs from the base optimizer's.
    let (m, base) = (model(5), model(5));
    let b = batches(1, 6);
    let r = build("noise(sigma=0.5,reduction=reference,scale=-1000)+ball+sgd").unwrap().step(&m, &b).unwrap();
    assert!(r.delta.unwrap() < 0.0 && r.ascent && r.epsilon_norm > 0.0, "{r:?}");
    build("sgd").unwrap().step(&base, &b).unwrap();
    assert!(max_abs_diff(&m, &base) > 0.0);
}

#[test]
fn f32_radius_precision_is_accepted_and_exact_is_the_default() {
    let m = model(7);
    let b = batches(1, 8);
    let delta = |c: &str| build(c).unwrap().step(&clone_model(&m), &b).unwrap().delta.unwrap();
    let exact = delta("noise(sigma=0.3,reduction=reference)+ball+adam");
    let explicit = delta("noise(sigma=0.3,reduction=reference,radius_precision=exact)+ball+adam");
    let f32 = delta("noise(sigma=0.3,reduction=reference,radius_precision=f32)+ball+adam");
    assert_eq!(exact, explicit);
    // At σ = 0.3 the f32 δ is close to the exact one but carries f32 rounding (at σ = 1e-5 it
    // is noise: tests/golden.rs, `f32_radius_reproduces_the_reference_codes_rounding_noise`).
    assert!(exact > 0.0 && f32 != exact && ((f32 - exact) / exact).abs() < 0.5, "exact {exact:e}, f32 {f32:e}");
}

#[test]
fn region_settings_out_of_range_are_rejected_with_the_valid_range() {
    for (composition, needles) in [
        ("noise(scale=-1)+ball+adam", &["`scale`", "-1", "(0, ∞)", "reference"][..]),
        ("noise(scale=0)+ball+adam", &["`scale`", "got 0", "(0, ∞)", "reference"]),
        ("reg:prev(scale=-2)+adam", &["`scale`", "(0, ∞)"]),
        ("noise(temperature=0)+ball+adam", &["`temperature`", "(0, ∞)"]),
        ("reg:ema(temperature=-5)+adam", &["`temperature`", "(0, ∞)", "-5"]),
        ("noise(radius_precision=f64)+ball+adam", &["f64", "exact", "f32"]),
    ] {
        let e = build(composition).err().unwrap_or_else(|| panic!("{composition} was accepted")).to_string();
        for n in needles {
            assert!(e.contains(n), "{composition}: `{n}` not in: {e}");
        }
    }
    // Non-finite values cannot be written in a composition or JSON; TOML's `inf` / `nan` can.
    for (scale, temperature) in [(f64::INFINITY, 1.0), (f64::NAN, 1.0), (1.0, f64::INFINITY), (1.0, f64::NAN)] {
        let s = tram::RegionSettings { scale, temperature, ..Default::default() };
        let e = s.validate("trust region `noise`").err().unwrap_or_else(|| panic!("{scale} / {temperature} accepted")).to_string();
        assert!(e.contains("finite") && e.contains("`noise`"), "{e}");
    }
}
