//! The component registry: one map built once from every `inventory` registration (built-ins)
//! plus whatever run-time plugins add. A duplicate name is an error; an unknown name lists
//! every valid one.

use crate::components::base::BaseOptimizer;
use crate::components::distance::Distance;
use crate::components::neighborhood::Neighborhood;
use crate::components::region::TrustRegion;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The kinds of component a composition is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A trust region target (prev, pretrained, noise, ema).
    TrustRegion,
    /// A distance between target and current logits (kl, mmd, l2, ...).
    Distance,
    /// An ascent neighborhood (ball, fisher).
    Neighborhood,
    /// A base optimizer (sgd, adam, adamw).
    Base,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::TrustRegion => "trust region",
            Kind::Distance => "distance",
            Kind::Neighborhood => "neighborhood",
            Kind::Base => "base optimizer",
        })
    }
}

/// A built component.
pub enum Component {
    /// A trust region.
    TrustRegion(Box<dyn TrustRegion>),
    /// A distance.
    Distance(Box<dyn Distance>),
    /// A neighborhood.
    Neighborhood(Box<dyn Neighborhood>),
    /// A base optimizer.
    Base(Box<dyn BaseOptimizer>),
}

/// One documented parameter of a component.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDoc {
    /// Key in the component's table.
    pub name: String,
    /// Default value, as it would be written in TOML.
    pub default: String,
    /// One-line meaning.
    pub doc: String,
}

/// Build a component from its parameter table (a JSON object).
pub type BuildFn = dyn Fn(&Value) -> Result<Component> + Send + Sync;

/// A component's resolved parameters from its parameter table: the config struct it is built
/// from, with every default filled in, serialized back (see [`resolved`]).
pub type ResolveFn = dyn Fn(&Value) -> Result<Value> + Send + Sync;

/// A registered component.
#[derive(Clone)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Its unique name.
    pub name: String,
    /// One-line summary naming the paper.
    pub summary: String,
    /// Its parameters with defaults.
    pub params: Vec<ParamDoc>,
    /// Where it came from ("built-in" or a plugin path).
    pub origin: String,
    /// The constructor.
    pub build: Arc<BuildFn>,
    /// The resolved parameters of a parameter table, recorded with each run
    /// ([`Optimizer::describe`](crate::Optimizer::describe)) for a component whose
    /// `describe()` returns `null`. [`component!`](crate::component) with a `config:` struct
    /// sets it; `None` records the table as given.
    pub resolve: Option<Arc<ResolveFn>>,
}

impl Entry {
    /// A component entry (origin "built-in"; the plugin loader sets it to the plugin's path).
    pub fn new(
        kind: Kind,
        name: impl Into<String>,
        summary: impl Into<String>,
        params: Vec<ParamDoc>,
        build: impl Fn(&Value) -> Result<Component> + Send + Sync + 'static,
    ) -> Entry {
        Entry { kind, name: name.into(), summary: summary.into(), params, origin: "built-in".into(), build: Arc::new(build), resolve: None }
    }

    /// The same entry, resolving its parameters with `resolve` (e.g. [`resolved::<Config>`](resolved)).
    pub fn with_resolve(self, resolve: impl Fn(&Value) -> Result<Value> + Send + Sync + 'static) -> Entry {
        Entry { resolve: Some(Arc::new(resolve)), ..self }
    }

    /// The parameters this entry's component is built with from `params`: [`Entry::resolve`]'s
    /// result, or `params` itself (an empty table for `null`) without one.
    pub fn resolve_params(&self, params: &Value) -> Result<Value> {
        match &self.resolve {
            Some(r) => r(params),
            None if params.is_null() => Ok(Value::Object(Default::default())),
            None => Ok(params.clone()),
        }
    }
}

/// A component's declaration: everything the registry lists about it and its constructor.
/// Write it with [`component!`](crate::component), which also names the component once for its
/// trait impl and its errors. In-tree and statically linked crates submit it with
/// `tram::inventory::submit!(REGISTRATION);` ([`Registry::builtin`] collects them); a run-time
/// plugin registers it with `registrar.register(REGISTRATION.entry())`.
#[derive(Clone, Copy)]
pub struct Registration {
    /// Kind.
    pub kind: Kind,
    /// Unique name.
    pub name: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Parameter documentation.
    pub params: fn() -> Vec<ParamDoc>,
    /// Constructor.
    pub build: fn(&Value) -> Result<Component>,
    /// The resolved parameters of a table ([`resolved::<Config>`](resolved)), recorded with
    /// each run; `None` records the table as given. [`component!`](crate::component) sets it.
    pub resolve: Option<fn(&Value) -> Result<Value>>,
}
inventory::collect!(Registration);

impl Registration {
    /// The registry entry of this declaration (origin "built-in"; the plugin loader sets a
    /// plugin's path).
    pub fn entry(&self) -> Entry {
        let entry = Entry::new(self.kind, self.name, self.summary, (self.params)(), self.build);
        match self.resolve {
            Some(r) => entry.with_resolve(r),
            None => entry,
        }
    }
}

/// Declare a component once: its kind and name, its one-line summary, the doc of every key of
/// its parameter table, and its constructor. Defines, in the calling module:
///
/// - `NAME`: the registered name (return it from the trait's `name()`);
/// - `WHAT`: how errors name it, e.g. ``"trust region `ema`"`` (pass it to `parse_params`);
/// - `REGISTRATION`: its [`Registration`]. Submit it with `tram::inventory::submit!(REGISTRATION);`
///   in a linked crate, or register `REGISTRATION.entry()` from a plugin's register function.
///
/// The kind is one of `trust_region`, `distance`, `neighborhood`, `base`. Parameter docs are
/// given per field of the config struct (its `Default` gives the defaults `tram list` shows), or
/// as `params: <fn() -> Vec<ParamDoc>>` where they need computing.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use tram::compose::registry::{parse_params, Component};
/// #[derive(Default, Serialize, Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct HalfConfig { scale: f64 }
/// fn build(v: &serde_json::Value) -> tram::Result<Component> {
///     let _c: HalfConfig = parse_params(WHAT, v)?;
///     # Err(tram::Error::Model("not built in this example".into()))
/// }
/// tram::component! {
///     neighborhood "half",
///     summary: "an example",
///     config: HalfConfig { scale: "multiplier of ε" },
///     build: build,
/// }
/// assert_eq!((NAME, WHAT), ("half", "neighborhood `half`"));
/// let entry = REGISTRATION.entry();
/// assert_eq!((entry.params[0].name.as_str(), entry.params[0].default.as_str()), ("scale", "0.0"));
/// ```
#[macro_export]
macro_rules! component {
    (@kind trust_region) => { $crate::Kind::TrustRegion };
    (@kind distance) => { $crate::Kind::Distance };
    (@kind neighborhood) => { $crate::Kind::Neighborhood };
    (@kind base) => { $crate::Kind::Base };
    (@what trust_region $name:literal) => { concat!("trust region `", $name, "`") };
    (@what distance $name:literal) => { concat!("distance `", $name, "`") };
    (@what neighborhood $name:literal) => { concat!("neighborhood `", $name, "`") };
    (@what base $name:literal) => { concat!("base optimizer `", $name, "`") };
    ($kind:ident $name:literal, summary: $summary:expr, config: $config:ty { $($key:ident: $doc:expr),* $(,)? }, build: $build:expr $(,)?) => {
        $crate::component!(@declare $kind $name, summary: $summary,
            params: || $crate::compose::registry::param_docs::<$config>(&[$((stringify!($key), $doc)),*]), build: $build,
            resolve: ::core::option::Option::Some($crate::compose::registry::resolved::<$config>));
    };
    ($kind:ident $name:literal, summary: $summary:expr, params: $params:expr, build: $build:expr $(,)?) => {
        $crate::component!(@declare $kind $name, summary: $summary, params: $params, build: $build, resolve: ::core::option::Option::None);
    };
    (@declare $kind:ident $name:literal, summary: $summary:expr, params: $params:expr, build: $build:expr, resolve: $resolve:expr) => {
        /// The registered name of this component.
        pub const NAME: &str = $name;
        /// How errors name this component.
        pub const WHAT: &str = $crate::component!(@what $kind $name);
        /// The declaration of this component (kind, name, summary, parameter docs, constructor).
        pub const REGISTRATION: $crate::Registration = $crate::Registration {
            kind: $crate::component!(@kind $kind),
            name: NAME,
            summary: $summary,
            params: $params,
            build: $build,
            resolve: $resolve,
        };
    };
}

/// A short name for a composition (a paper row).
#[derive(Clone, Debug)]
pub struct Alias {
    /// The alias.
    pub name: String,
    /// The composition it stands for (with its default base optimizer).
    pub composition: String,
    /// The paper row it reproduces.
    pub summary: String,
}

/// A static alias registration.
pub struct AliasRegistration {
    /// The alias.
    pub name: &'static str,
    /// The composition.
    pub composition: &'static str,
    /// The paper row.
    pub summary: &'static str,
}
inventory::collect!(AliasRegistration);

/// A run-time plugin library that a registry keeps loaded (made by `Registry::load_plugin`,
/// see [`crate::plugin`]): it stays mapped while the registry, or anything built from it, lives.
pub trait LoadedPlugin: Send + Sync {
    /// The canonical path it was loaded from.
    fn path(&self) -> &std::path::Path;
}

/// Every component and alias known to this process.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, Alias>,
    /// Run-time plugin libraries loaded into this registry (see [`Registry::load_plugin`]).
    pub(crate) plugins: Vec<Arc<dyn LoadedPlugin>>,
    /// Plugins a lenient load refused: `(path, reason)`.
    pub(crate) refused: Vec<(String, String)>,
    /// Where each alias a plugin registered came from (its canonical path); absent: built-in.
    pub(crate) alias_origins: BTreeMap<String, String>,
}

impl Registry {
    /// A registry with nothing in it.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every `inventory` registration linked into this binary, built once. Link the
    /// built-in components by calling `tram_plugins::registry()` (or referencing that crate).
    pub fn builtin() -> Result<Registry> {
        static BUILTIN: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let mut r = Registry::empty();
                for reg in inventory::iter::<Registration> {
                    r.register(reg.entry()).map_err(|e| e.to_string())?;
                }
                for a in inventory::iter::<AliasRegistration> {
                    r.register_alias(Alias { name: a.name.into(), composition: a.composition.into(), summary: a.summary.into() })
                        .map_err(|e| e.to_string())?;
                }
                Ok(r)
            })
            .clone()
            .map_err(|reason| Error::Composition { input: "<built-in registry>".into(), reason })
    }

    /// Add a component; a name already used by a component or alias is an error.
    pub fn register(&mut self, entry: Entry) -> Result<()> {
        if let Some(old) = self.entries.get(&entry.name) {
            return Err(Error::DuplicateComponent {
                name: entry.name.clone(),
                first: format!("{} {}", old.origin, old.kind),
                second: format!("{} {}", entry.origin, entry.kind),
            });
        }
        if self.aliases.contains_key(&entry.name) {
            return Err(Error::DuplicateComponent { name: entry.name.clone(), first: "alias".into(), second: entry.origin.clone() });
        }
        self.entries.insert(entry.name.clone(), entry);
        Ok(())
    }

    /// Add an alias; a name already used is an error.
    pub fn register_alias(&mut self, alias: Alias) -> Result<()> {
        let identity = alias.composition == alias.name;
        if self.aliases.contains_key(&alias.name) || (self.entries.contains_key(&alias.name) && !identity) {
            return Err(Error::DuplicateComponent { name: alias.name.clone(), first: "existing name".into(), second: "alias".into() });
        }
        self.aliases.insert(alias.name.clone(), alias);
        Ok(())
    }

    /// Every component, sorted by kind then name.
    pub fn entries(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        v
    }

    /// Every alias, sorted by name.
    pub fn aliases(&self) -> impl Iterator<Item = &Alias> {
        self.aliases.values()
    }

    /// The alias called `name`.
    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.get(name)
    }

    /// Where alias `name` came from: the canonical path of the plugin that registered it, or
    /// "built-in" (linked into the program, or registered with [`Registry::register_alias`]).
    pub fn alias_origin(&self, name: &str) -> &str {
        self.alias_origins.get(name).map_or("built-in", String::as_str)
    }

    /// The component called `name`, of any kind, if registered.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The component called `name` of kind `kind`; an unknown name lists the valid ones.
    pub fn get(&self, kind: Kind, name: &str) -> Result<&Entry> {
        match self.entries.get(name) {
            Some(e) if e.kind == kind => Ok(e),
            _ => Err(Error::UnknownComponent {
                kind: kind.to_string(),
                name: name.into(),
                valid: self.names(Some(kind)).join(", ") + &self.refusal_note(),
            }),
        }
    }

    /// Names of every component (of one kind, if given), sorted.
    pub fn names(&self, kind: Option<Kind>) -> Vec<String> {
        self.entries.values().filter(|e| kind.is_none_or(|k| e.kind == k)).map(|e| e.name.clone()).collect()
    }

    /// The plugin libraries loaded into this registry.
    pub fn plugins(&self) -> impl Iterator<Item = &dyn LoadedPlugin> {
        self.plugins.iter().map(|l| l.as_ref())
    }

    /// Plugins a lenient load (`Registry::load_plugins_lenient`) refused, as `(path, reason)`.
    pub fn refused_plugins(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refused.iter().map(|(p, r)| (p.as_str(), r.as_str()))
    }

    /// Appended to "unknown name" errors: the plugins that were refused and might define it.
    pub(crate) fn refusal_note(&self) -> String {
        if self.refused.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self.refused.iter().map(|(p, r)| format!("{p} ({r})")).collect();
        format!("; {} plugin(s) could not be loaded and may define it: {}", list.len(), list.join("; "))
    }

    /// Build component `name` of `kind` from its parameter table.
    pub fn build(&self, kind: Kind, name: &str, params: &Value) -> Result<Component> {
        (self.get(kind, name)?.build)(params)
    }

    /// Build component `name` of `kind` from its parameter table, with its resolved parameters
    /// ([`Entry::resolve_params`]).
    pub fn build_resolved(&self, kind: Kind, name: &str, params: &Value) -> Result<(Component, Value)> {
        let entry = self.get(kind, name)?;
        let component = (entry.build)(params)?;
        Ok((component, entry.resolve_params(params)?))
    }
}

/// Parameter docs for a component config `C`: defaults from `C::default()`, one doc per field.
/// A field of `C` missing from `docs` is listed after them with an empty doc, so every field
/// shows up in `tram list` (and `tram_plugins`' tests refuse the empty doc).
pub fn param_docs<C: Default + Serialize>(docs: &[(&str, &str)]) -> Vec<ParamDoc> {
    let defaults = serde_json::to_value(C::default()).unwrap_or(Value::Null);
    let doc = |name: &str, doc: &str| ParamDoc {
        name: name.to_string(),
        default: defaults.get(name).map(toml_literal).unwrap_or_else(|| "(none)".into()),
        doc: doc.to_string(),
    };
    let mut out: Vec<ParamDoc> = docs.iter().map(|(name, d)| doc(name, d)).collect();
    if let Value::Object(fields) = &defaults {
        out.extend(fields.keys().filter(|k| !docs.iter().any(|(name, _)| name == k)).map(|k| doc(k, "")));
    }
    out
}

/// The resolved parameters of a component built from config struct `C`: `params` parsed into
/// `C` (defaults filled in) and serialized back. What [`Optimizer::describe`](crate::Optimizer::describe)
/// records for a component that does not implement `describe()` itself; set by
/// [`component!`](crate::component) for its `config:` struct.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Config { weight: f64, kernel: String }
/// impl Default for Config { fn default() -> Self { Config { weight: 1.0, kernel: "rbf".into() } } }
/// let v = tram::compose::registry::resolved::<Config>(&serde_json::json!({"weight": 2.0}))?;
/// assert_eq!(v, serde_json::json!({"weight": 2.0, "kernel": "rbf"}));
/// # Ok::<(), tram::Error>(())
/// ```
pub fn resolved<C: DeserializeOwned + Serialize>(params: &Value) -> Result<Value> {
    let c: C = parse_params("component parameters", params)?;
    serde_json::to_value(c).map_err(|e| Error::Config { component: "component parameters".into(), reason: e.to_string() })
}

/// Deserialize a component's parameter table into its config struct (which should be
/// `#[serde(default, deny_unknown_fields)]`); errors name the component and the key.
///
/// A key whose value is `null` is an error, not "unset": JSON has no NaN or ∞, so a
/// non-finite number put into a parameter table (`serde_json::Value::from(f64::NAN)`, or a TOML
/// `nan` read into a table) arrives as `null`, and taking it for the default would silently
/// replace the value given.
pub fn parse_params<C: DeserializeOwned>(component: &str, params: &Value) -> Result<C> {
    let v = if params.is_null() { Value::Object(Default::default()) } else { params.clone() };
    reject_nulls(component, &v)?;
    serde_json::from_value(v).map_err(|e| Error::Config { component: component.to_string(), reason: e.to_string() })
}

/// An error naming `component` and the key when a parameter table holds a `null` anywhere
/// (see [`parse_params`]).
pub(crate) fn reject_nulls(component: &str, v: &Value) -> Result<()> {
    match null_key(v, "") {
        None => Ok(()),
        Some(k) => Err(Error::Config {
            component: component.to_string(),
            reason: format!(
                "`{k}` has no value (null; a non-finite number such as nan or inf becomes null): give a finite number, or leave `{k}` out for its default"
            ),
        }),
    }
}

/// The path (`key`, `key[2]`, `key.sub`) of the first `null` inside `v`, if any.
fn null_key(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::Null => Some(at.to_string()),
        Value::Object(m) => m.iter().find_map(|(k, v)| null_key(v, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") })),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| null_key(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// A JSON value written as a TOML literal (for `tram list` and canonical strings).
pub fn toml_literal(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize)]
    struct Config {
        rate: f64,
        bounded: Option<f64>,
        forgotten: bool,
    }

    #[test]
    fn every_field_of_a_config_is_listed_even_without_a_doc() {
        let docs = param_docs::<Config>(&[("rate", "the rate"), ("bounded", "an optional bound")]);
        let listed: Vec<(&str, &str, &str)> = docs.iter().map(|d| (d.name.as_str(), d.default.as_str(), d.doc.as_str())).collect();
        assert_eq!(listed, [("rate", "0.0", "the rate"), ("bounded", "(none)", "an optional bound"), ("forgotten", "false", "")]);
    }
}
