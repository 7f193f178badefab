//! Learning-rate schedules (SPEC: constant; linear warmup then polynomial decay to 0; cosine).

use serde::{Deserialize, Serialize};

/// A learning-rate schedule, evaluated at the 0-based step index.
///
/// Deserialized strictly: a key the kind does not take is an error, not silently dropped
/// (`--set optimizer.schedule.kind=constant` over a file's polynomial table would otherwise
/// drop its warmup without a word), and the values are range-checked ([`Schedule::check`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawSchedule")]
pub enum Schedule {
    /// The base rate at every step.
    #[default]
    Constant,
    /// Linear warmup over `warmup` steps, then `(1 - progress)^power` decay to 0 at `total`
    /// (Hugging Face's `get_polynomial_decay_schedule_with_warmup` with `lr_end = 0`).
    Polynomial {
        /// Warmup steps.
        warmup: u64,
        /// Total steps.
        total: u64,
        /// Decay power (1 = linear).
        #[serde(default = "one")]
        power: f64,
    },
    /// `0.5 (1 + cos(π t / total))`, no warmup, no restarts.
    Cosine {
        /// Total steps.
        total: u64,
    },
}

/// The keys of a schedule table, whatever its kind (see [`Schedule`]'s `TryFrom`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    kind: String,
    warmup: Option<u64>,
    total: Option<u64>,
    power: Option<f64>,
}

impl TryFrom<RawSchedule> for Schedule {
    type Error = String;
    fn try_from(r: RawSchedule) -> std::result::Result<Self, String> {
        let given: Vec<&str> = [("warmup", r.warmup.is_some()), ("total", r.total.is_some()), ("power", r.power.is_some())]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
        let takes: &[&str] = match r.kind.as_str() {
            "constant" => &[],
            "polynomial" => &["warmup", "total", "power"],
            "cosine" => &["total"],
            other => return Err(format!("unknown schedule kind `{other}`; expected constant, polynomial or cosine")),
        };
        let extra: Vec<String> = given.iter().filter(|k| !takes.contains(k)).map(|k| format!("`{k}`")).collect();
        if !extra.is_empty() {
            return Err(format!(
                "schedule kind `{}` does not take {}: remove {} (a `kind` changed with --set, an environment variable or a [[runs]] entry keeps the other keys of the schedule table it overrides; change the table where it is written instead)",
                r.kind,
                extra.join(", "),
                if extra.len() == 1 { "it" } else { "them" }
            ));
        }
        let need = |k: &str, v: Option<u64>| v.ok_or_else(|| format!("schedule kind `{}` needs `{k}`", r.kind));
        let s = match r.kind.as_str() {
            "constant" => Schedule::Constant,
            "polynomial" => {
                Schedule::Polynomial { warmup: need("warmup", r.warmup)?, total: need("total", r.total)?, power: r.power.unwrap_or(1.0) }
            }
            _ => Schedule::Cosine { total: need("total", r.total)? },
        };
        s.check()?;
        Ok(s)
    }
}

impl Schedule {
    /// Check the values: `power` in (0, ∞) and finite, `warmup ≤ total` (unless `total = 0`,
    /// which the training apps replace by the run's step count).
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Schedule::Polynomial { warmup, total, power } = *self {
            if !(power.is_finite() && power > 0.0) {
                return Err(format!("schedule `power` must be in (0, ∞) (finite), got {power}"));
            }
            if total > 0 && warmup > total {
                return Err(format!("schedule `warmup` ({warmup}) exceeds `total` ({total}): the rate would never reach its peak"));
            }
        }
        Ok(())
    }
}

impl Schedule {
    /// The multiplier of the base learning rate at step `t`.
    pub fn factor(&self, t: u64) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Polynomial { warmup, total, power } => {
                if t < warmup {
                    t as f64 / warmup.max(1) as f64
                } else if t >= total {
                    0.0
                } else {
                    let remaining = (total - t) as f64 / (total - warmup).max(1) as f64;
                    remaining.powf(power)
                }
            }
            Schedule::Cosine { total } => {
                let p = (t.min(total) as f64) / total.max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_warms_up_linearly_then_decays_to_zero() {
        let s = Schedule::Polynomial { warmup: 10, total: 50, power: 1.0 };
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(5) - 0.5).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(30) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(50), 0.0);
        let sq = Schedule::Polynomial { warmup: 0, total: 10, power: 2.0 };
        assert!((sq.factor(5) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn cosine_starts_at_one_and_ends_at_zero() {
        let s = Schedule::Cosine { total: 100 };
        assert!((s.factor(0) - 1.0).abs() < 1e-12);
        assert!((s.factor(50) - 0.5).abs() < 1e-12);
        assert!(s.factor(100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(1234), 1.0);
    }

    #[test]
    fn a_key_the_kind_does_not_take_is_an_error_not_dropped() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Schedule>(v).map_err(|e| e.to_string());
        // What `--set optimizer.schedule.kind=constant` over a polynomial table produces.
        let e = parse(serde_json::json!({"kind": "constant", "warmup": 10, "total": 50, "power": 1.0})).unwrap_err();
        assert!(e.contains("schedule kind `constant` does not take `warmup`, `total`, `power`"), "{e}");
        let e = parse(serde_json::json!({"kind": "cosine", "total": 5, "warmup": 1})).unwrap_err();
        assert!(e.contains("`cosine` does not take `warmup`"), "{e}");
        assert!(parse(serde_json::json!({"kind": "linear"})).unwrap_err().contains("unknown schedule kind `linear`"));
        assert!(parse(serde_json::json!({"kind": "constant", "warmpu": 1})).unwrap_err().contains("warmpu"));
        assert!(parse(serde_json::json!({"kind": "polynomial", "warmup": 1})).unwrap_err().contains("needs `total`"));
        assert_eq!(parse(serde_json::json!({"kind": "constant"})).unwrap(), Schedule::Constant);
        assert_eq!(
            parse(serde_json::json!({"kind": "polynomial", "warmup": 1, "total": 4})).unwrap(),
            Schedule::Polynomial { warmup: 1, total: 4, power: 1.0 }
        );
        // Round trip through the tagged form.
        let s = Schedule::Cosine { total: 7 };
        assert_eq!(parse(serde_json::to_value(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn meaningless_values_are_refused_with_the_range() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Schedule>(v).map_err(|e| e.to_string());
        let e = parse(serde_json::json!({"kind": "polynomial", "warmup": 0, "total": 4, "power": 0.0})).unwrap_err();
        assert!(e.contains("`power` must be in (0, ∞)"), "{e}");
        let e = parse(serde_json::json!({"kind": "polynomial", "warmup": 10, "total": 4})).unwrap_err();
        assert!(e.contains("`warmup` (10) exceeds `total` (4)"), "{e}");
        assert!(parse(serde_json::json!({"kind": "polynomial", "warmup": 10, "total": 0})).is_ok(), "total 0: the run's steps");
    }
}
