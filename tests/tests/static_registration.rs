//! The static route for third-party components: a crate outside the framework (this test
//! crate) links `tram` as an ordinary dependency and registers a distance and an alias with
//! `tram::inventory::submit!`. They appear in `Registry::builtin()` beside the built-ins, with
//! origin "built-in", and TRAM-x with the new distance trains. `inventory` keeps one registry
//! per binary: these registrations exist only in this test binary, not in the other tests'.

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tram::registry::{param_docs, parse_params, resolved, AliasRegistration, Component, Kind, Registration};
use tram::{Distance, Optimizer, OptimizerConfig, Reduction, Registry, Result};
use tram_tests::{eval_loss, synthetic_batches, ClassifierShape, EmbeddingClassifier};

/// Parameters of `sq-l2`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SqL2Config {
    /// Multiplier of the mean squared distance.
    weight: f64,
}

impl Default for SqL2Config {
    fn default() -> Self {
        Self { weight: 1.0 }
    }
}

/// `weight · mean_rows ‖f_t − f_c‖²`.
struct SqL2 {
    weight: f64,
}

impl Distance for SqL2 {
    fn name(&self) -> &str {
        "sq-l2"
    }
    fn distance(&self, target: &Tensor, current: &Tensor, _reduction: Reduction, _examples: usize) -> Result<Tensor> {
        let rows = target.dim(0)?.max(1) as f64;
        Ok(target.sub(current)?.sqr()?.sum(D::Minus1)?.sum_all()?.affine(self.weight / rows, 0.0)?)
    }
}

fn build(v: &Value) -> Result<Component> {
    let c: SqL2Config = parse_params("distance `sq-l2`", v)?;
    Ok(Component::Distance(Box::new(SqL2 { weight: c.weight })))
}

tram::inventory::submit! {
    Registration {
        kind: Kind::Distance,
        name: "sq-l2",
        summary: "mean squared L2 distance of logits (registered statically by a test crate)",
        params: || param_docs::<SqL2Config>(&[("weight", "multiplier of the mean squared distance")]),
        build,
        resolve: Some(resolved::<SqL2Config>),
    }
}

tram::inventory::submit! {
    AliasRegistration { name: "tram-noise-sq-l2", composition: "noise(distance=sq-l2)+ball+adam", summary: "TRAM-x with the squared L2 distance" }
}

const SHAPE: ClassifierShape = ClassifierShape { vocab: 32, embed: 8, hidden: 16, layers: 1, classes: 4 };

#[test]
fn a_component_submitted_with_inventory_outside_the_framework_is_built_in() {
    // The built-in components are linked through tram_plugins; ours through this crate.
    let r = tram_plugins::registry().unwrap();
    let e = r.find("sq-l2").expect("sq-l2 registered");
    assert_eq!((e.kind, e.origin.as_str()), (Kind::Distance, "built-in"));
    assert_eq!((e.params[0].name.as_str(), e.params[0].default.as_str()), ("weight", "1.0"));
    assert_eq!(r.alias("tram-noise-sq-l2").unwrap().composition, "noise(distance=sq-l2)+ball+adam");
    assert!(r.find("kl").is_some() && r.plugins().next().is_none());
    // The same registry as Registry::builtin(): registration needs no call.
    assert!(Registry::builtin().unwrap().find("sq-l2").is_some());

    // Its parameters are checked like any component's.
    let Component::Distance(d) = r.build(Kind::Distance, "sq-l2", &serde_json::json!({ "weight": 2.0 })).unwrap() else { unreachable!() };
    let t = Tensor::new(&[[1f32, 2.0], [0.0, 0.0]], &Device::Cpu).unwrap();
    let c = Tensor::new(&[[0f32, 0.0], [0.0, 3.0]], &Device::Cpu).unwrap();
    let v = d.distance(&t, &c, Reduction::Mean, 2).unwrap().to_scalar::<f32>().unwrap();
    assert!((v - 2.0 * (5.0 + 9.0) / 2.0).abs() < 1e-5, "{v}");
    let err = r.build(Kind::Distance, "sq-l2", &serde_json::json!({ "wieght": 2.0 })).err().unwrap().to_string();
    assert!(err.contains("wieght"), "{err}");
}

#[test]
fn tram_x_with_a_statically_registered_distance_decreases_the_loss() {
    let r = tram_plugins::registry().unwrap();
    let data = synthetic_batches(SHAPE, 4, 16, 6, 7, &Device::Cpu).unwrap();
    let m = EmbeddingClassifier::random(SHAPE, 1, &Device::Cpu).unwrap();
    let cfg = OptimizerConfig::new("tram-noise-sq-l2", 0.01).with("noise", "sigma", 1e-3);
    let mut opt = Optimizer::new(&r, cfg).unwrap();
    assert_eq!(opt.describe()["region"]["distance"]["name"], "sq-l2");
    // SqL2 does not implement describe(): its resolved parameters are recorded all the same.
    assert_eq!(opt.describe()["region"]["distance"]["params"], serde_json::json!({"weight": 1.0}));
    let before = eval_loss(&m, &data).unwrap();
    for s in 0..40 {
        let rep = opt.step(&m, std::slice::from_ref(&data[s % data.len()])).unwrap();
        assert!(!rep.skipped, "step {s} skipped");
        assert!(rep.delta.is_some_and(|d| d.is_finite() && d > 0.0), "step {s}: δ = {:?}", rep.delta);
    }
    let after = eval_loss(&m, &data).unwrap();
    assert!(after < 0.8 * before, "loss {before:.4} -> {after:.4}");
}
