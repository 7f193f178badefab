//! The registry and composition strings: parsing, canonical display, errors that name the fix.

use tram::registry::{Entry, Kind};
use tram::{Composition, Error, Optimizer, OptimizerConfig, Registry};

fn registry() -> Registry {
    tram_plugins::registry().unwrap()
}

fn canonical(s: &str) -> String {
    Composition::parse(s, &registry()).unwrap().to_string()
}

fn err(s: &str) -> String {
    match Optimizer::new(&registry(), OptimizerConfig::new(s, 1e-3)) {
        Ok(o) => panic!("`{s}` was accepted as `{o}`"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn noise_ball_adam_is_tram_x_on_adam() {
    let c = Composition::parse("noise+ball+adam", &registry()).unwrap();
    assert_eq!(c.region.as_ref().unwrap().name, "noise");
    assert_eq!(c.neighborhood.as_ref().unwrap().name, "ball");
    assert_eq!(c.base.name, "adam");
    assert_eq!(canonical("tram-noise"), "noise+ball+adam");
    // The ball is adaptive because the trust region sizes it.
    let o = Optimizer::new(&registry(), OptimizerConfig::new("noise+ball+adam", 1e-3)).unwrap();
    assert_eq!(o.describe()["neighborhood"]["params"]["adaptive"], true);
    let sam = Optimizer::new(&registry(), OptimizerConfig::new("sam", 1e-3)).unwrap();
    assert_eq!(sam.describe()["neighborhood"]["params"]["adaptive"], false);
    assert_eq!(sam.describe()["neighborhood"]["params"]["rho"], 0.05);
}

#[test]
fn every_paper_row_has_an_alias_that_builds() {
    let r = registry();
    // The rows are declared once, with the aliases (tram_plugins::aliases).
    let rows: Vec<&str> = tram_plugins::aliases::PAPER_ROWS.iter().map(|a| a.name).collect();
    for must in
        ["sgd", "sam", "asam", "fsam", "trpo", "r3f", "mesa", "asam+mesa", "tram-prev", "tram-pretrained", "tram-noise", "tram-fisher"]
    {
        assert!(rows.contains(&must), "paper row {must} is not declared");
    }
    for a in rows {
        assert!(r.alias(a).is_some(), "alias {a} missing");
        Optimizer::new(&r, OptimizerConfig::new(a, 1e-3)).unwrap_or_else(|e| panic!("{a}: {e}"));
        if !["sgd", "adam", "adamw"].contains(&a) {
            let o = Optimizer::new(&r, OptimizerConfig::new(format!("{a}+sgd"), 1e-3)).unwrap_or_else(|e| panic!("{a}+sgd: {e}"));
            assert_eq!(o.composition().base.name, "sgd");
        }
    }
}

#[test]
fn display_round_trips_to_the_canonical_string() {
    let r = registry();
    let mut inputs: Vec<String> = r.aliases().map(|a| a.name.clone()).collect();
    inputs.extend(
        [
            "noise(distance=mmd,sigma=0.001)+ball(rho=0.5)+adamw(weight_decay=0.1)",
            "reg:prev(lambda=0.5) + reg:noise(sample=uniform) + ball + sgd(nesterov=true)",
            "pretrained(reduction=reference,scale=2)+ball(ascent=reference)+adam",
            "sam+sgd",
            "asam+mesa+adamw",
            "noise(distance=\"kl-sym\")+fisher(rho=0.2)+adam",
        ]
        .map(String::from),
    );
    for s in inputs {
        let c1 = canonical(&s);
        let c2 = canonical(&c1);
        assert_eq!(c1, c2, "`{s}` did not round-trip");
        assert_eq!(Composition::parse(&c1, &r).unwrap(), Composition::parse(&s, &r).unwrap());
    }
    assert_eq!(canonical("reg:prev(lambda=0.5) + ball + sgd"), "reg:prev(lambda=0.5)+ball+sgd");
    assert_eq!(canonical("sam+sgd"), "ball+sgd");
    assert_eq!(canonical("asam+trpo+sgd"), "reg:prev+ball(adaptive=true)+sgd");
}

#[test]
fn an_unknown_name_lists_every_valid_one() {
    let e = err("noise+bal+adam");
    assert!(e.contains("`bal`"), "{e}");
    for valid in ["ball", "fisher", "adam", "prev", "tram-noise (alias)"] {
        assert!(e.contains(valid), "{e} does not list {valid}");
    }
    let e = err("adam(lr=1)");
    assert!(e.contains("lr"), "{e}");
    let e = err("noise(distance=kld)+ball+adam");
    assert!(e.contains("unknown distance `kld`") && e.contains("kl-sym") && e.contains("mmd"), "{e}");
}

#[test]
fn malformed_compositions_say_how_to_fix_them() {
    assert!(err("noise+adam").contains("noise+ball+adam"));
    assert!(err("noise+adam").contains("reg:noise+adam"));
    assert!(err("kl+ball+adam").contains("noise(distance=kl)"));
    assert!(err("adam+ball").contains("last"));
    assert!(err("ball").contains("no base optimizer"));
    assert!(err("reg:ball+adam").contains("takes a trust region"));
    assert!(err("prev+fisher+adam").contains("TRAM-Fisher"));
    assert!(err("prev+noise+ball+adam").contains("reg:noise"));
    assert!(err("ball+fisher+adam").contains("more than one neighborhood"));
    assert!(err("ball(rho=0.1+adam").contains("unbalanced"));
    assert!(err("ball(rho)+adam").contains("key=value"));
    assert!(err("noise(lambda=2)+ball+adam").contains("penalties only"));
    assert!(err("ball(rho=-1)+adam").contains("rho"));
    assert!(err("sam+ball").contains("followed by a base"));
}

#[test]
fn tables_configure_components_and_inline_values_win() {
    let r = registry();
    let cfg =
        OptimizerConfig::new("ball(rho=0.3)+sgd", 0.1).with("ball", "rho", 0.2).with("ball", "eta", 0.01).with("sgd", "momentum", 0.5);
    let o = Optimizer::new(&r, cfg).unwrap();
    let d = o.describe();
    assert_eq!(d["neighborhood"]["params"]["rho"], 0.3);
    assert_eq!(d["neighborhood"]["params"]["eta"], 0.01);
    assert_eq!(d["base"]["params"]["momentum"], 0.5);
    // A table for a registered component the composition does not use is ignored...
    Optimizer::new(&r, OptimizerConfig::new("sam", 0.1).with("fisher", "rho", 0.1)).unwrap();
    // ...a table naming nothing registered is an error naming it and the components in use.
    let bad = OptimizerConfig::new("sam", 0.1).with("fisherr", "rho", 0.1);
    let e = Optimizer::new(&r, bad).err().unwrap().to_string();
    assert!(e.contains("`fisherr`") && e.contains("ball"), "{e}");
    let wrong_type = OptimizerConfig::new("sam", 0.1).with("ball", "rho", "big");
    let e = Optimizer::new(&r, wrong_type).err().unwrap().to_string();
    assert!(e.contains("ball") && e.contains("invalid type"), "{e}");
    let pen = OptimizerConfig::new("trpo", 0.1).with("reg:prev", "lambda", 0.25);
    let o = Optimizer::new(&r, pen).unwrap();
    assert_eq!(o.describe()["penalties"][0]["penalty"]["lambda"], 0.25);
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn optimizer_config_loads_from_toml_and_environment_with_figment() {
    use figment::providers::{Env, Format, Toml};
    let toml = r#"
        [optimizer]
        name = "tram-noise"
        lr = 2e-5
        max_grad_norm = 1.0
        schedule = { kind = "polynomial", warmup = 10, total = 100 }
        [optimizer.noise]
        sigma = 1e-4
    "#;
    figment::Jail::expect_with(|jail| {
        jail.set_env("TRAM_OPTIMIZER.LR", "0.00003");
        let cfg: OptimizerConfig =
            figment::Figment::new().merge(Toml::string(toml)).merge(Env::prefixed("TRAM_").split(".")).extract_inner("optimizer").unwrap();
        assert_eq!(cfg.lr, 3e-5);
        assert_eq!(cfg.schedule, tram::Schedule::Polynomial { warmup: 10, total: 100, power: 1.0 });
        let o = Optimizer::new(&registry(), cfg).unwrap();
        assert_eq!(o.describe()["region"]["params"]["sigma"], 1e-4);
        Ok(())
    });
}

#[test]
fn a_duplicate_registration_is_an_error() {
    let mut r = registry();
    let ball = r.find("ball").unwrap().clone();
    let e = r.register(Entry { origin: "plugin libfoo.so".into(), ..ball }).unwrap_err();
    assert!(matches!(e, Error::DuplicateComponent { .. }));
    assert!(e.to_string().contains("ball") && e.to_string().contains("libfoo"), "{e}");
    let mut empty = Registry::empty();
    let kl = registry().find("kl").unwrap().clone();
    empty.register(kl.clone()).unwrap();
    assert!(empty.register(kl).is_err());
    assert!(registry().get(Kind::Base, "ball").is_err());
}

#[test]
fn the_shipped_config_builds_every_alias() {
    use figment::providers::{Format, Toml};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/optimizers.toml");
    let base: OptimizerConfig = figment::Figment::new().merge(Toml::file(path)).extract_inner("optimizer").unwrap();
    assert_eq!(base.name, "tram-noise");
    let r = registry();
    for a in r.aliases() {
        let cfg = OptimizerConfig { name: a.name.clone(), ..base.clone() };
        Optimizer::new(&r, cfg).unwrap_or_else(|e| panic!("{}: {e}", a.name));
    }
}

#[test]
fn every_parameter_out_of_its_range_is_refused_naming_the_key_the_value_and_the_range() {
    for (composition, expected) in [
        ("reg:noise(lambda=-1)+adam", "`lambda` must be in [0, ∞) (finite), got -1"),
        ("sgd(momentum=-1)", "`momentum` must be in [0, 1), got -1"),
        ("sgd(momentum=2)", "`momentum` must be in [0, 1), got 2"),
        ("sgd(momentum=1)", "`momentum` must be in [0, 1), got 1"),
        ("sgd(dampening=5)", "`dampening` must be in [0, 1], got 5"),
        ("sgd(weight_decay=1e300)", "`weight_decay` must be in [0, 1000], got 1e300"),
        ("noise(scale=0)+ball+adam", "`scale` must be in (0, ∞) (finite), got 0"),
        ("reg:noise(scale=-2)+adam", "`scale` must be in (0, ∞) (finite), got -2"),
        ("reg:ema(temperature=0)+adam", "`temperature` must be in (0, ∞) (finite), got 0"),
        ("reg:prev(temperature=-1)+adam", "`temperature` must be in (0, ∞) (finite), got -1"),
        ("noise(sigma=1e300)+ball+adam", "`sigma` must be in [0, 1000], got 1e300"),
        ("noise(sigma=-1)+fisher+adam", "`sigma` must be in [0, 1000], got -1"),
        ("reg:ema(decay=2)+adam", "`decay` must be in [0, 1], got 2"),
        ("ball(rho=1e308)+adam", "`rho` must be in [0, 1000], got 1e308"),
        ("ball(eta=-0.1)+adam", "`eta` must be in [0, 1000], got -0.1"),
        ("fisher(rho=-1)+adam", "`rho` must be in [0, 1000], got -1"),
        ("fisher(eta=1e300)+adam", "`eta` must be in [0, 1e6], got 1e300"),
        ("adam(beta1=1)", "`beta1` must be in [0, 1), got 1"),
        ("adam(beta2=-0.5)", "`beta2` must be in [0, 1), got -0.5"),
        ("adam(eps=0)", "`eps` must be in (0, 1], got 0"),
        ("adamw(weight_decay=-1)", "`weight_decay` must be in [0, 1000], got -1"),
    ] {
        let e = err(composition);
        assert!(e.contains(expected), "{composition}: {e}");
    }
    let r = registry();
    let e = Optimizer::new(&r, OptimizerConfig::new("adam", -1.0)).err().unwrap().to_string();
    assert!(e.contains("`lr` must be in [0, ∞) (finite), got -1"), "{e}");
    let cfg = OptimizerConfig { max_grad_norm: Some(0.0), ..OptimizerConfig::new("adam", 1e-3) };
    let e = Optimizer::new(&r, cfg).err().unwrap().to_string();
    assert!(e.contains("`max_grad_norm` must be in (0, ∞) (finite), got 0"), "{e}");
    let cfg =
        OptimizerConfig { schedule: tram::Schedule::Polynomial { warmup: 5, total: 2, power: 1.0 }, ..OptimizerConfig::new("adam", 1e-3) };
    let e = Optimizer::new(&r, cfg).err().unwrap().to_string();
    assert!(e.contains("`warmup` (5) exceeds `total` (2)"), "{e}");
    // The edges of every range are accepted.
    for ok in ["sgd(momentum=0,dampening=1,weight_decay=0)", "reg:ema(decay=1,lambda=0)+ball(rho=1000,eta=0)+adam(beta1=0,eps=1)"] {
        Optimizer::new(&r, OptimizerConfig::new(ok, 1e-3)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn a_non_finite_value_is_an_error_naming_the_key_never_the_default() {
    // JSON has no NaN: `Value::from(f64::NAN)` is null, which used to read as "unset" (ρ = 0.05).
    let r = registry();
    for (component, key) in [("ball", "rho"), ("noise", "sigma"), ("adam", "eps"), ("reg:prev", "lambda"), ("noise", "temperature")] {
        let comp = if component == "reg:prev" {
            "trpo"
        } else if component == "noise" {
            "tram-noise"
        } else {
            "sam"
        };
        for v in [f64::NAN, f64::INFINITY] {
            let cfg = OptimizerConfig::new(comp, 1e-3).with(component, key, v);
            let e = Optimizer::new(&r, cfg).err().unwrap_or_else(|| panic!("{component}.{key} = {v} accepted")).to_string();
            assert!(e.contains(&format!("`{key}` has no value")) && e.contains("finite"), "{e}");
        }
    }
    for c in ["ball(rho=nan)+adam", "sgd(momentum=inf)", "noise(sigma=-inf)+ball+adam"] {
        assert!(err(c).contains("is not a finite number"), "{c}: {}", err(c));
    }
}

#[test]
fn bind_alone_builds_the_components_and_splits_the_framework_settings() {
    use tram::compose::bind::bind;
    // Inline parameters win over the table; region and penalty settings are taken out of the
    // region's parameters before it is built.
    let cfg = OptimizerConfig::new("reg:noise(lambda=0.5,distance=kl-sym)+ball(rho=0.1)+sgd", 1e-3)
        .with("noise", "sigma", 1e-3)
        .with("noise", "lambda", 2.0)
        .with("noise", "temperature", 2.0)
        .with("sgd", "momentum", 0.5);
    let b = bind(&registry(), &cfg).unwrap();
    assert_eq!(b.composition.to_string(), "reg:noise(distance=kl-sym,lambda=0.5)+ball(rho=0.1)+sgd");
    let p = &b.penalties[0];
    assert_eq!((p.settings.lambda, p.bound.settings.temperature), (0.5, 2.0));
    assert_eq!((p.bound.region.name(), p.bound.distance.name()), ("noise", "kl-sym"));
    assert_eq!(p.bound.region.describe()["sigma"], 1e-3);
    assert!(b.region.is_none());
    assert_eq!(b.neighborhood.as_ref().unwrap().rho(), 0.1);
    assert_eq!((b.base.name(), b.base.describe()["momentum"].as_f64()), ("sgd", Some(0.5)));
    // A penalty setting on a region that sizes the ascent names the fix.
    let err = bind(&registry(), &OptimizerConfig::new("noise(lambda=1)+ball+adam", 1e-3)).err().unwrap().to_string();
    assert!(err.contains("apply to penalties only") && err.contains("reg:noise"), "{err}");
}

/// A component that does not implement `describe()` has its resolved parameters recorded: the
/// config struct it was built from, defaults filled in, inline parameters and tables applied.
#[test]
fn a_component_without_describe_records_the_parameters_it_was_built_with() {
    use tram::components::state::StateReader;
    use tram::compose::registry::{parse_params, Component};
    use tram::{Logits, Params, TargetCtx, TrustRegion};

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct StillConfig {
        keep: f64,
        label: String,
    }
    impl Default for StillConfig {
        fn default() -> Self {
            Self { keep: 0.5, label: "still".into() }
        }
    }
    struct Still;
    impl TrustRegion for Still {
        fn name(&self) -> &str {
            "still"
        }
        fn init(&mut self, _: &Params) -> tram::Result<()> {
            Ok(())
        }
        fn target(&mut self, ctx: &mut TargetCtx<'_>, _: bool) -> tram::Result<Logits> {
            ctx.model.forward(&ctx.model.params().detached(), ctx.batch, ctx.mode)
        }
        fn tracks_current(&self) -> bool {
            true
        }
        fn state(&self, _: &Params) -> tram::Result<Vec<(String, candle_core::Tensor)>> {
            Ok(Vec::new())
        }
        fn load_state(&mut self, _: &Params, _: &StateReader<'_>) -> tram::Result<()> {
            Ok(())
        }
    }
    fn build(v: &serde_json::Value) -> tram::Result<Component> {
        let _: StillConfig = parse_params(WHAT, v)?;
        Ok(Component::TrustRegion(Box::new(Still)))
    }
    tram::component! {
        trust_region "still",
        summary: "the current function (a test region without describe())",
        config: StillConfig { keep: "a number", label: "a word" },
        build: build,
    }
    let mut r = tram_plugins::registry().unwrap();
    r.register(REGISTRATION.entry()).unwrap();
    let cfg = tram::OptimizerConfig::new("still(keep=0.25)+ball+sgd", 0.1).with("ball", "rho", 0.5);
    let d = tram::Optimizer::new(&r, cfg).unwrap().describe();
    assert_eq!(d["region"]["params"], serde_json::json!({"keep": 0.25, "label": "still"}));
    assert_eq!(d["region"]["distance"]["name"], "kl");
    // Built-ins that implement describe() keep their own record.
    assert_eq!(d["neighborhood"]["params"]["rho"], 0.5);
}
