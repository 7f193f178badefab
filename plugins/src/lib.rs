//! # tram-plugins
//!
//! The built-in components of [`tram`], one per file, each declared once with
//! [`tram::component!`] and submitted to `inventory`:
//!
//! | kind | names |
//! |---|---|
//! | trust region | `prev`, `pretrained`, `noise`, `ema` |
//! | distance | `kl`, `kl-reverse`, `kl-sym`, `mmd`, `l2` |
//! | neighborhood | `ball`, `fisher` |
//! | base optimizer | `sgd`, `adam`, `adamw` |
//!
//! plus one alias per row of the TRAM paper's tables (`sam`, `tram-noise`, ...), declared in
//! the tables' order in [`aliases::PAPER_ROWS`].
//! Call [`registry`] to get them all (it also makes sure this crate is linked).

pub mod aliases;
pub mod base {
    //! Base optimizers.
    pub mod adam;
    pub mod adamw;
    #[cfg(test)]
    mod fused_tests;
    pub mod sgd;
}
pub mod distances {
    //! Distances between target and current logits.
    pub mod kl;
    pub mod l2;
    pub mod mmd;
}
pub mod neighborhoods {
    //! Ascent neighborhoods.
    pub mod ball;
    pub mod fisher;
}
pub mod regions {
    //! Trust-region targets.
    pub mod ema;
    pub mod noise;
    pub mod pretrained;
    pub mod prev;
}

/// The registry of every built-in component and alias.
pub fn registry() -> tram::Result<tram::Registry> {
    tram::Registry::builtin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_documents_every_parameter() {
        let r = registry().unwrap();
        for e in r.entries() {
            for p in &e.params {
                assert!(!p.doc.is_empty(), "{}.{} has no doc", e.name, p.name);
            }
            // A table with only the documented keys builds; an undocumented key is refused.
            let documented: serde_json::Map<_, _> = serde_json::Map::new();
            assert!((e.build)(&serde_json::Value::Object(documented)).is_ok(), "{} does not build from defaults", e.name);
            let bad = serde_json::json!({"no_such_key": 1});
            let err = (e.build)(&bad).err().unwrap_or_else(|| panic!("{} accepted an unknown key", e.name));
            assert!(err.to_string().contains("no_such_key"), "{err}");
        }
    }

    #[test]
    fn every_listed_parameter_is_a_real_key_and_its_listed_default_builds() {
        // `tram list` prints `params` (name, default, doc): param_docs lists every config field,
        // so a field without a doc shows up with an empty one (refused above); here every listed
        // key must also be accepted by the component, at the default it is listed with.
        let r = registry().unwrap();
        for e in r.entries() {
            for p in &e.params {
                if p.default == "(none)" {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&p.default).unwrap_or_else(|err| panic!("{}.{} default `{}`: {err}", e.name, p.name, p.default));
                let table = serde_json::json!({ p.name.clone(): v });
                if let Err(err) = (e.build)(&table) {
                    panic!("{}: its listed parameter `{}` = {} is refused: {err}", e.name, p.name, p.default);
                }
            }
        }
    }

    #[test]
    fn registry_has_every_builtin() {
        let r = registry().unwrap();
        for n in ["prev", "pretrained", "noise", "ema", "kl", "kl-reverse", "kl-sym", "mmd", "l2", "ball", "fisher", "sgd", "adam", "adamw"]
        {
            assert!(r.find(n).is_some(), "{n} missing");
        }
    }

    #[test]
    fn base_optimizer_checkpoint_keys_are_the_saved_ones() {
        // Saved checkpoints name their tensors with these keys: they must never change.
        use candle_core::{Device, Tensor, Var};
        let dev = Device::Cpu;
        let params = tram::Params::new([("w.weight".to_string(), Var::new(&[1f32, 2.0], &dev).unwrap())]).unwrap();
        let g = [Tensor::new(&[0.5f32, -1.0], &dev).unwrap()];
        let r = registry().unwrap();
        for (name, keys) in [
            ("sgd", &["momentum/w.weight"][..]),
            ("adam", &["exp_avg/w.weight", "exp_avg_sq/w.weight", "step"][..]),
            ("adamw", &["exp_avg/w.weight", "exp_avg_sq/w.weight", "step"][..]),
        ] {
            let tram::Component::Base(mut b) = r.build(tram::Kind::Base, name, &serde_json::Value::Null).unwrap() else { panic!() };
            b.update(&params, &g, 0.1).unwrap();
            let mut got: Vec<String> = b.state(&params).unwrap().into_iter().map(|(k, _)| k).collect();
            got.sort();
            assert_eq!(got, keys, "{name}");
        }
    }
}
