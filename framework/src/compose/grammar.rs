//! Composition strings: how an optimizer is spelled.
//!
//! ```text
//! composition := term ( "+" term )*
//! term        := [ "reg:" ] name [ "(" key "=" value ( "," key "=" value )* ")" ]
//! value       := true | false | number | word | "quoted string"
//! ```
//!
//! Terms are resolved by name in the registry and put in canonical order:
//! penalties (`reg:<trust region>`, a one-pass regulariser `L + λ R`), then at most one trust
//! region that sizes the neighborhood (TRAM) or noises its first pass (TRAM-Fisher), then at
//! most one neighborhood, then exactly one base optimizer, last. An alias may stand for
//! everything before the base: `sam` is `ball+adam`, `sam+sgd` is `ball+sgd`.

use crate::compose::registry::{Kind, Registry};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// One named component with inline parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// The component name.
    pub name: String,
    /// Inline parameters, sorted by key.
    pub params: BTreeMap<String, Value>,
}

impl Term {
    /// A term without parameters.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), params: BTreeMap::new() }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.params.is_empty() {
            let parts: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={}", value_literal(v))).collect();
            write!(f, "({})", parts.join(","))?;
        }
        Ok(())
    }
}

/// A parsed, validated composition.
#[derive(Clone, Debug, PartialEq)]
pub struct Composition {
    /// One-pass regularisers `λ·D(target ‖ current)` added to the loss.
    pub penalties: Vec<Term>,
    /// The trust region sizing (or noising) the neighborhood.
    pub region: Option<Term>,
    /// The ascent neighborhood.
    pub neighborhood: Option<Term>,
    /// The base optimizer.
    pub base: Term,
}

impl fmt::Display for Composition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.penalties.iter().map(|t| format!("reg:{t}")).collect();
        parts.extend(self.region.iter().map(|t| t.to_string()));
        parts.extend(self.neighborhood.iter().map(|t| t.to_string()));
        parts.push(self.base.to_string());
        f.write_str(&parts.join("+"))
    }
}

/// A raw term before resolution.
struct RawTerm {
    penalty: bool,
    term: Term,
    text: String,
}

impl Composition {
    /// Parse `input` (a composition or an alias) against `registry`.
    pub fn parse(input: &str, registry: &Registry) -> Result<Composition> {
        let raw = split_terms(input)?;
        let raw = expand_alias(input, raw, registry)?;
        Self::resolve(input, raw, registry)
    }

    fn resolve(input: &str, raw: Vec<RawTerm>, registry: &Registry) -> Result<Composition> {
        let err = |reason: String| Error::composition(input, reason);
        let (mut penalties, mut region, mut neighborhood, mut base) = (Vec::new(), None, None, None);
        let n = raw.len();
        for (i, r) in raw.into_iter().enumerate() {
            let Some(entry) = registry.find(&r.term.name) else {
                let mut valid = registry.names(None);
                valid.extend(registry.aliases().map(|a| format!("{} (alias)", a.name)));
                return Err(Error::UnknownComponent {
                    kind: "component".into(),
                    name: r.term.name,
                    valid: valid.join(", ") + &registry.refusal_note(),
                });
            };
            if base.is_some() {
                return Err(err(format!("`{}` follows the base optimizer; the base optimizer must be the last term", r.text)));
            }
            match (entry.kind, r.penalty) {
                (Kind::TrustRegion, true) => penalties.push(r.term),
                (_, true) => return Err(err(format!("`reg:` takes a trust region, and `{}` is a {}", r.term.name, entry.kind))),
                (Kind::TrustRegion, false) => {
                    if region.is_some() {
                        return Err(err(format!(
                            "two trust regions size the neighborhood (`{}`); write extra ones as penalties, e.g. `reg:{}`",
                            r.text, r.text
                        )));
                    }
                    if neighborhood.is_some() {
                        return Err(err(format!("trust region `{}` must come before the neighborhood", r.text)));
                    }
                    region = Some(r.term);
                }
                (Kind::Neighborhood, false) => {
                    if neighborhood.is_some() {
                        return Err(err(format!("more than one neighborhood (`{}`)", r.text)));
                    }
                    neighborhood = Some(r.term);
                }
                (Kind::Base, false) => {
                    if i + 1 != n {
                        return Err(err(format!("base optimizer `{}` must be the last term", r.text)));
                    }
                    base = Some(r.term);
                }
                (Kind::Distance, false) => {
                    return Err(err(format!(
                        "`{}` is a distance, not a term of its own: set it on a trust region, e.g. `noise(distance={})+ball+adam`",
                        r.term.name, r.term.name
                    )))
                }
            }
        }
        let Some(base) = base else {
            return Err(err(format!(
                "no base optimizer; end the composition with one of: {}",
                registry.names(Some(Kind::Base)).join(", ")
            )));
        };
        if region.is_some() && neighborhood.is_none() {
            let r = region.as_ref().map(|t| t.to_string()).unwrap_or_default();
            return Err(err(format!(
                "trust region `{r}` has no neighborhood to size: write `{r}+ball+{}` for TRAM or `reg:{r}+{}` for a penalty",
                base.name, base.name
            )));
        }
        Ok(Composition { penalties, region, neighborhood, base })
    }
}

fn split_terms(input: &str) -> Result<Vec<RawTerm>> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut quoted) = (0i32, 0usize, false);
    for (i, c) in input.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '+' if !quoted && depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(Error::composition(input, "unbalanced `)`"));
        }
    }
    if depth != 0 || quoted {
        return Err(Error::composition(input, "unbalanced `(` or `\"`"));
    }
    parts.push(&input[start..]);
    parts.into_iter().map(|p| parse_term(input, p.trim())).collect()
}

fn parse_term(input: &str, text: &str) -> Result<RawTerm> {
    let err = |r: String| Error::composition(input, r);
    if text.is_empty() {
        return Err(err("empty term (two `+` in a row, or a leading/trailing `+`)".into()));
    }
    let (penalty, rest) = match text.strip_prefix("reg:") {
        Some(r) => (true, r.trim()),
        None => (false, text),
    };
    let (name, args) = match rest.find('(') {
        Some(i) => {
            let close =
                rest.rfind(')').filter(|&c| c == rest.len() - 1).ok_or_else(|| err(format!("`{text}`: parameters must end with `)`")))?;
            (rest[..i].trim(), Some(&rest[i + 1..close]))
        }
        None => (rest, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(err(format!("`{name}` is not a component name (letters, digits, `-`, `_`, `.`)")));
    }
    let mut params = BTreeMap::new();
    if let Some(args) = args.filter(|a| !a.trim().is_empty()) {
        for kv in split_args(args) {
            let (k, v) = kv.split_once('=').ok_or_else(|| err(format!("`{kv}` in `{text}` is not `key=value`")))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(err(format!("empty key in `{text}`")));
            }
            let v = v.trim();
            if v.parse::<f64>().is_ok_and(|f| !f.is_finite()) {
                return Err(err(format!(
                    "`{k}={v}` in `{text}`: `{v}` is not a finite number; every numeric parameter must be finite (quote it, `{k}=\"{v}\"`, if it is a word)"
                )));
            }
            if params.insert(k.to_string(), parse_value(v)).is_some() {
                return Err(err(format!("`{k}` given twice in `{text}`")));
            }
        }
    }
    Ok(RawTerm { penalty, term: Term { name: name.to_string(), params }, text: text.to_string() })
}

fn split_args(args: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in args.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(args[start..].trim());
    out
}

fn parse_value(v: &str) -> Value {
    if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Value::String(s.to_string());
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => {
            if let Ok(i) = v.parse::<i64>() {
                Value::from(i)
            } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
                Value::from(f)
            } else {
                Value::String(v.to_string())
            }
        }
    }
}

/// A value as written in a composition string (parses back to the same value).
pub fn value_literal(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && parse_value(s) == *v => {
            s.clone()
        }
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Replace a leading alias (`sam`, `asam+trpo`, ...) by its composition; a base optimizer
/// written after the alias replaces the alias's default base.
fn expand_alias(input: &str, raw: Vec<RawTerm>, registry: &Registry) -> Result<Vec<RawTerm>> {
    let plain = |ts: &[RawTerm]| -> Option<String> {
        ts.iter()
            .all(|t| !t.penalty && t.term.params.is_empty())
            .then(|| ts.iter().map(|t| t.term.name.as_str()).collect::<Vec<_>>().join("+"))
    };
    for cut in (1..=raw.len()).rev() {
        let Some(name) = plain(&raw[..cut]) else { continue };
        let Some(alias) = registry.alias(&name).filter(|a| a.composition != a.name) else { continue };
        let rest = &raw[cut..];
        let is_base = |t: &RawTerm| registry.find(&t.term.name).is_some_and(|e| e.kind == Kind::Base);
        if !(rest.is_empty() || (rest.len() == 1 && is_base(&rest[0]))) {
            return Err(Error::composition(
                input,
                format!("alias `{}` may only be followed by a base optimizer (e.g. `{}+sgd`)", alias.name, alias.name),
            ));
        }
        let mut expanded = split_terms(&alias.composition)?;
        if let Some(base) = rest.first() {
            let last = expanded.pop();
            if !last.as_ref().is_some_and(is_base) {
                return Err(Error::composition(input, format!("alias `{}` does not end with a base optimizer", alias.name)));
            }
            expanded.push(RawTerm { penalty: base.penalty, term: base.term.clone(), text: base.text.clone() });
        }
        return Ok(expanded);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_literals() {
        for v in [
            Value::from(0.05),
            Value::from(2),
            Value::Bool(true),
            Value::String("kl-sym".into()),
            Value::String("a b".into()),
            Value::String("true".into()),
        ] {
            assert_eq!(parse_value(&value_literal(&v)), v, "{v}");
        }
    }

    #[test]
    fn split_respects_parentheses_and_quotes() {
        let t = split_terms("reg:noise(distance=kl-sym,lambda=1)+ball(rho=\"a+b\")+adam").unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[0].penalty);
        assert_eq!(t[0].term.params["lambda"], Value::from(1));
        assert_eq!(t[1].term.params["rho"], Value::String("a+b".into()));
        assert!(split_terms("ball(rho=1+adam").is_err());
        assert!(split_terms("ball++adam").is_err());
    }

    #[test]
    fn a_non_finite_inline_number_is_an_error_naming_the_key_and_the_value() {
        for v in ["nan", "inf", "-inf", "NaN", "infinity", "1e400"] {
            let text = format!("ball(rho={v})+adam");
            let e = split_terms(&text).err().unwrap_or_else(|| panic!("{text} accepted")).to_string();
            assert!(e.contains(&format!("`rho={v}`")) && e.contains("not a finite number"), "{e}");
        }
        // Quoted, it is a word.
        assert_eq!(split_terms("noise(distance=\"inf\")+adam").unwrap()[0].term.params["distance"], Value::String("inf".into()));
    }
}
