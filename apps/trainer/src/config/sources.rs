//! Where a configuration comes from and how the sources are layered: defaults, the TOML file,
//! a `[[runs]]` entry, `TRAM_*` environment variables and `--set` (later wins), merged with
//! figment; the `[[runs]]` rows are resolved into [`RunConfig`]s here.

use super::{Config, Provenance, RunConfig, ENV_PREFIX, ENV_RESERVED};
use crate::error::{Error, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A provider of `key.path = value` pairs (environment variables or `--set` overrides);
/// values are parsed as TOML (`3e-5` is a float, `[1, 2]` an array, `true` a bool) and kept as
/// strings when they are not TOML.
#[derive(Clone, Debug)]
pub struct Overrides {
    name: String,
    pairs: Vec<(String, String)>,
}

impl Overrides {
    /// `--set key=value` strings.
    pub fn sets<S: AsRef<str>>(sets: &[S]) -> Result<Self> {
        let mut pairs = Vec::new();
        for s in sets {
            let s = s.as_ref();
            let (k, v) =
                s.split_once('=').ok_or_else(|| Error::Config(format!("--set `{s}`: expected `key=value`, e.g. `train.steps=100`")))?;
            let k = k.trim();
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(Error::Config(format!("--set `{s}`: `{k}` is not a key path such as `optimizer.lr`")));
            }
            pairs.push((k.to_string(), v.trim().to_string()));
        }
        Ok(Self { name: "--set".into(), pairs })
    }

    /// The `TRAM_*` environment variables (`TRAM_OPTIMIZER__LR=3e-5` sets `optimizer.lr`).
    pub fn env() -> Self {
        Self::env_from(std::env::vars())
    }

    /// [`Overrides::env`] from explicit variables (tests).
    pub fn env_from(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut pairs: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                if ENV_RESERVED.contains(&k.as_str()) {
                    return None;
                }
                let rest = k.strip_prefix(ENV_PREFIX)?;
                (!rest.is_empty()).then(|| (rest.to_ascii_lowercase().replace("__", "."), v))
            })
            .collect();
        pairs.sort();
        Self { name: "TRAM_* environment variables".into(), pairs }
    }

    /// Whether there is nothing to override.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The keys given a whole table (`optimizer.schedule={kind="constant"}`): such a value
    /// replaces the table of the earlier sources instead of being merged into it.
    fn tables(&self) -> Vec<String> {
        self.pairs.iter().filter(|(_, raw)| matches!(toml_value(raw), Some(toml::Value::Table(_)))).map(|(k, _)| k.clone()).collect()
    }

    fn dict(&self) -> Result<serde_json::Map<String, Value>> {
        let mut root = serde_json::Map::new();
        for (key, raw) in &self.pairs {
            if let Some((at, v)) = toml_value(raw).as_ref().and_then(|t| non_finite(t, key)) {
                return Err(Error::Config(format!(
                    "{}: key `{at}` = {v}: a setting must be a finite number (nan and inf are not values of any setting; quote a word: `{key}=\"{raw}\"`)",
                    self.name
                )));
            }
            let value = parse_value(raw);
            let parts: Vec<&str> = key.split('.').collect();
            let mut node = &mut root;
            for (i, p) in parts.iter().enumerate() {
                if i + 1 == parts.len() {
                    node.insert(p.to_string(), value.clone());
                } else {
                    let entry = node.entry(p.to_string()).or_insert_with(|| Value::Object(Default::default()));
                    if !entry.is_object() {
                        return Err(Error::Config(format!(
                            "{}: `{key}` sets a key inside `{}`, which is also given a value",
                            self.name,
                            parts[..=i].join(".")
                        )));
                    }
                    node = entry.as_object_mut().expect("checked");
                }
            }
        }
        Ok(root)
    }
}

/// A value given as text: TOML when it parses (numbers, booleans, arrays, inline tables),
/// else the text itself.
pub fn parse_value(raw: &str) -> Value {
    toml_value(raw).and_then(|v| serde_json::to_value(v).ok()).unwrap_or_else(|| Value::String(raw.to_string()))
}

/// `raw` as a TOML value, if it is one.
fn toml_value(raw: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())).ok()?.remove("v")
}

/// The key path (under `at`) and value of the first NaN or ±∞ inside `v`. JSON, which the
/// config passes through on its way to the optimizer's component tables, has no such numbers:
/// they would become `null`, read as "unset", and the default would silently replace them.
fn non_finite(v: &toml::Value, at: &str) -> Option<(String, f64)> {
    let join = |k: &str| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some((at.to_string(), *f)),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| non_finite(v, &join(k))),
        toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| non_finite(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let dict = self.dict().map_err(|e| figment::Error::from(e.to_string()))?;
        Serialized::defaults(Value::Object(dict)).data()
    }
}

/// A provider without some of its keys: `paths` (dotted) are removed from its data. A table
/// given whole by a later source (`--set 'optimizer.schedule={kind="constant"}'`) replaces the
/// table of the earlier ones this way; figment alone would merge the two, keeping e.g. the
/// file's `warmup` under the new `kind`. A single key (`--set optimizer.schedule.kind=constant`)
/// is still merged into the table it belongs to.
struct Without<P> {
    inner: P,
    paths: Vec<String>,
}

impl<P: Provider> Provider for Without<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for path in &self.paths {
                remove_path(dict, &path.split('.').collect::<Vec<_>>());
            }
        }
        Ok(data)
    }
    fn profile(&self) -> Option<Profile> {
        self.inner.profile()
    }
}

fn remove_path(d: &mut Dict, parts: &[&str]) {
    match parts {
        [] => {}
        [last] => {
            d.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(figment::value::Value::Dict(_, inner)) = d.get_mut(*first) {
                remove_path(inner, rest);
            }
        }
    }
}

/// A run overlay: the keys of one `[[runs]]` entry.
#[derive(Clone, Debug)]
struct RunOverlay {
    name: String,
    values: serde_json::Map<String, Value>,
}

/// How the metadata of a [`RunOverlay`] is named.
const RUN_OVERLAY_PREFIX: &str = "[[runs]] entry";

impl Provider for RunOverlay {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{RUN_OVERLAY_PREFIX} `{}`", self.name))
    }
    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(Value::Object(self.values.clone())).data()
    }
}

/// Where a configuration comes from: a TOML file, `--set` overrides and `TRAM_*` variables,
/// resolved into the runs to do with [`Sources::resolve`].
///
/// ```
/// use tram_trainer::Sources;
/// let sets = vec!["model=org/name".to_string(), "train.steps=3".to_string(), "optimizer.name=tram-noise".to_string()];
/// let sources = Sources { file: None, sets, env: Some(Vec::new()) }; // `env`: no TRAM_* variables
/// let runs = sources.resolve(&[], &tram_plugins::registry()?)?;
/// assert_eq!((runs[0].name.as_str(), runs[0].config.train.steps), ("tram-noise", Some(3)));
/// // A key that is no setting is an error naming it.
/// let bad = Sources { file: None, sets: vec!["train.stesp=3".into()], env: Some(Vec::new()) };
/// assert!(bad.resolve(&[], &tram_plugins::registry()?).unwrap_err().to_string().contains("train.stesp"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The TOML file; `None`: the defaults and overrides only.
    pub file: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub sets: Vec<String>,
    /// Environment variables (`None`: the process environment).
    pub env: Option<Vec<(String, String)>>,
}

impl Sources {
    fn env(&self) -> Overrides {
        match &self.env {
            Some(v) => Overrides::env_from(v.clone()),
            None => Overrides::env(),
        }
    }

    /// The defaults and the file, without the tables that `replaced` names (given whole by a
    /// later source, see [`Without`]).
    fn base(&self, replaced: &[String]) -> Result<Figment> {
        let mut f = Figment::from(Without { inner: Serialized::defaults(Config::default()), paths: replaced.to_vec() });
        if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(Error::Config(format!("config file {} does not exist", path.display())));
            }
            // Parse first: figment reports TOML syntax errors without the line otherwise.
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let table = toml::from_str::<toml::Table>(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if let Some((at, v)) = non_finite(&toml::Value::Table(table), "") {
                return Err(Error::Config(format!(
                    "{}: key `{at}` = {v}: a setting must be a finite number (nan and inf are not values of any setting)",
                    path.display()
                )));
            }
            f = f.merge(Without { inner: Toml::file_exact(path), paths: replaced.to_vec() });
        }
        Ok(f)
    }

    /// The environment and `--set` overrides, with the figment of every source: a table given
    /// whole by a later source replaces the earlier sources' table (see [`Without`]).
    fn layered(&self, overlay: Option<&RunOverlay>) -> Result<Figment> {
        let (env, sets) = (self.env(), Overrides::sets(&self.sets)?);
        let by_sets = sets.tables();
        let below: Vec<String> = env.tables().into_iter().chain(by_sets.iter().cloned()).collect();
        let mut f = self.base(&below)?;
        if let Some(o) = overlay {
            f = f.merge(Without { inner: o.clone(), paths: below.clone() });
        }
        Ok(f.merge(Without { inner: env, paths: by_sets }).merge(sets))
    }

    /// Whether the value of `key` in `f` comes from the config file (its top level or a
    /// `[[runs]]` entry), not from the defaults, `TRAM_*` variables or `--set`.
    fn set_by_file(f: &Figment, key: &str) -> bool {
        f.find_metadata(key).is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))) || m.name.starts_with(RUN_OVERLAY_PREFIX))
    }

    /// `plugins` as extracted from `f`, relative ones joined to the config file's directory
    /// when the file (its top level or a `[[runs]]` entry) set them.
    fn plugin_paths(&self, f: &Figment, plugins: Vec<PathBuf>) -> Vec<PathBuf> {
        match self.file.as_deref().and_then(Path::parent) {
            Some(dir) if Self::set_by_file(f, "plugins") => {
                plugins.into_iter().map(|p| if p.is_relative() { dir.join(p) } else { p }).collect()
            }
            _ => plugins,
        }
    }

    /// `model` or `data` (`key`) as extracted from `f`: a relative local path written in the
    /// config file that exists relative to the file's directory is joined to it, so a config
    /// can name files beside it whatever the working directory (`tram lm -c
    /// <repo>/configs/quickstart/finetune.toml` from anywhere); anything else (a hub id, a path
    /// relative to the working directory, a value given with `--set`) is kept as it is.
    fn file_relative(&self, f: &Figment, key: &str, value: String) -> String {
        let Some(dir) = self.file.as_deref().and_then(Path::parent) else { return value };
        if value.is_empty() || !Path::new(&value).is_relative() || !Self::set_by_file(f, key) {
            return value;
        }
        let beside = dir.join(&value);
        if beside.exists() {
            beside.display().to_string()
        } else {
            value
        }
    }

    /// The names of the `[[runs]]` of the file (after overrides: `--set runs=[]` clears them).
    pub fn run_names(&self) -> Result<Vec<String>> {
        Ok(self.overlays()?.into_iter().map(|r| r.name).collect())
    }

    fn overlays(&self) -> Result<Vec<RunOverlay>> {
        let f = self.layered(None)?;
        let runs: Vec<Value> = f.extract_inner("runs").map_err(figment_error)?;
        let mut out: Vec<RunOverlay> = Vec::new();
        for (i, r) in runs.into_iter().enumerate() {
            let Value::Object(mut m) = r else {
                return Err(Error::Config(format!("runs[{i}] must be a table with a `name`")));
            };
            let name = match m.remove("name") {
                Some(Value::String(s)) if valid_run_name(&s) => s,
                Some(Value::String(s)) => {
                    return Err(Error::Config(format!("runs[{i}].name `{s}`: use letters, digits, `-`, `_`, `.` (it names a directory)")))
                }
                Some(other) => return Err(Error::Config(format!("runs[{i}].name must be a string, found {other}"))),
                None => return Err(Error::Config(format!("runs[{i}] has no `name`"))),
            };
            if m.contains_key("runs") {
                return Err(Error::Config(format!("runs[{i}] (`{name}`) cannot contain `runs`")));
            }
            if out.iter().any(|o| o.name == name) {
                return Err(Error::Config(format!("two [[runs]] are named `{name}`")));
            }
            out.push(RunOverlay { name, values: m });
        }
        Ok(out)
    }

    /// Resolve the runs named `names` (all `[[runs]]` when empty; a single run named after the
    /// optimizer when the file has no `[[runs]]`).
    pub fn resolve(&self, names: &[String], registry: &tram::Registry) -> Result<Vec<RunConfig>> {
        self.resolve_overlays(self.overlays()?, names, registry)
    }

    /// [`Sources::resolve`] with one more `[[runs]]` entry per `(composition, label)` of
    /// `extra`, after the file's: `name` = the composition made a valid run name (`+`, `(`,
    /// `=`, … become `_`), `label` as given, `optimizer.name` = the composition (an alias or any
    /// composition the registry parses, a plugin's included). Name them in `names` to select
    /// them. Used by `tram quickstart --methods` for methods that are not rows of its config.
    pub fn resolve_with_runs(&self, extra: &[(String, String)], names: &[String], registry: &tram::Registry) -> Result<Vec<RunConfig>> {
        let mut overlays = self.overlays()?;
        for (composition, label) in extra {
            let name = Self::run_name_of(composition);
            if overlays.iter().any(|o| o.name == name) {
                return Err(Error::Config(format!("a [[runs]] entry is already named `{name}` (for `{composition}`)")));
            }
            let mut values = serde_json::Map::new();
            values.insert("label".into(), Value::String(label.clone()));
            values.insert("optimizer".into(), serde_json::json!({ "name": composition }));
            overlays.push(RunOverlay { name, values });
        }
        self.resolve_overlays(overlays, names, registry)
    }

    /// The run name [`Sources::resolve_with_runs`] gives `composition`.
    pub fn run_name_of(composition: &str) -> String {
        sanitize(composition)
    }

    fn resolve_overlays(&self, overlays: Vec<RunOverlay>, names: &[String], registry: &tram::Registry) -> Result<Vec<RunConfig>> {
        let build = |overlay: Option<&RunOverlay>| -> Result<Config> {
            let f = self.layered(overlay)?;
            let mut config: Config = f.extract().map_err(figment_error)?;
            config.plugins = self.plugin_paths(&f, std::mem::take(&mut config.plugins));
            config.model = self.file_relative(&f, "model", std::mem::take(&mut config.model));
            config.data = self.file_relative(&f, "data", std::mem::take(&mut config.data));
            explicit_settings(&f, &mut config)?;
            mark_changed(&f, &mut config.provenance)?;
            config.validate(registry)?;
            Ok(config)
        };
        if overlays.is_empty() {
            let config = build(None)?;
            let name = names.first().cloned().unwrap_or_else(|| sanitize(&config.optimizer.name));
            if names.len() > 1 || (names.len() == 1 && !valid_run_name(&name)) {
                return Err(Error::Config(format!(
                    "the config has no [[runs]]; --run can only name the run directory once (got {names:?})"
                )));
            }
            let label = config.label.clone().unwrap_or_else(|| name.clone());
            return Ok(vec![RunConfig { name, label, config }]);
        }
        let selected: Vec<&RunOverlay> = if names.is_empty() {
            overlays.iter().collect()
        } else {
            names
                .iter()
                .map(|n| {
                    overlays.iter().find(|o| &o.name == n).ok_or_else(|| {
                        Error::Config(format!(
                            "no [[runs]] entry is named `{n}`; the config has: {}",
                            overlays.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        selected
            .into_iter()
            .map(|o| {
                let config = build(Some(o))?;
                let label = config.label.clone().unwrap_or_else(|| o.name.clone());
                Ok(RunConfig { name: o.name.clone(), label, config })
            })
            .collect()
    }
}

/// Which source set `key` in `f`: 0 the defaults, 1 the config file, 2 a `[[runs]]` entry,
/// 3 the `TRAM_*` environment variables, 4 `--set` (later sources win).
fn source_rank(f: &Figment, key: &str) -> u8 {
    let Some(m) = f.find_metadata(key) else { return 0 };
    if m.name.starts_with(RUN_OVERLAY_PREFIX) {
        2
    } else if matches!(m.source, Some(figment::Source::File(_))) {
        1
    } else if m.name == "--set" {
        4
    } else if m.name.starts_with("TRAM_") {
        3
    } else {
        0
    }
}

const SOURCE_NAMES: [&str; 5] = ["the defaults", "the config file", "a [[runs]] entry", "TRAM_* environment variables", "--set"];

/// Checks that need to know which settings were given, not only their values: `seeds = []`
/// (no seed at all) and `train.steps` with `train.epochs` (only one decides a run's length;
/// set by different sources, the later source's key wins and the other is dropped here).
fn explicit_settings(f: &Figment, config: &mut Config) -> Result<()> {
    let seeds = source_rank(f, "seeds");
    if seeds > 0 && config.seeds.is_empty() {
        return Err(Error::Config(format!(
            "key `seeds` (from {}): an empty list runs no seed; give at least one (`seeds = [0, 1, 2]`), or remove `seeds` to run `seed`",
            SOURCE_NAMES[seeds as usize]
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = config.seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(Error::Config(format!("key `seeds`: seed {d} is listed twice (each seed is one run directory)")));
    }
    let (steps, epochs) = (source_rank(f, "train.steps"), source_rank(f, "train.epochs"));
    if steps > 0 && epochs > 0 && config.train.steps.is_some() {
        if steps == epochs {
            return Err(Error::Config(format!(
                "keys `train.steps` and `train.epochs` are both set by {}: a run's length is given by one of them; remove the other",
                SOURCE_NAMES[steps as usize]
            )));
        }
        if epochs > steps {
            tracing::info!(
                "train.epochs = {} from {} overrides train.steps from {}",
                config.train.epochs,
                SOURCE_NAMES[epochs as usize],
                SOURCE_NAMES[steps as usize]
            );
            config.train.steps = None;
        }
    }
    Ok(())
}

/// Check the keys of `provenance` (each marked once, as the paper's or ours) and note which of
/// them `TRAM_*` variables or `--set` gave: their values are no longer the marked ones.
fn mark_changed(f: &Figment, p: &mut Provenance) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for key in p.paper.iter().chain(&p.ours) {
        if !seen.insert(key.as_str()) {
            return Err(Error::Config(format!(
                "key `provenance`: `{key}` is listed twice (in `paper` and `ours`, or twice in one); a value comes from the paper or is ours"
            )));
        }
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(Error::Config(format!("key `provenance`: `{key}` is not a key path such as `train.steps`")));
        }
    }
    p.changed.clear();
    for key in p.paper.clone().into_iter().chain(p.ours.clone()) {
        // The source of the key's value (a table's is the last source that set any key in
        // it, or the whole table: either changes it). Tables above the key are not asked:
        // `--set train.steps=…` makes `--set` the source of `train`, not of `train.select`.
        let rank = source_rank(f, &key.replace('"', ""));
        if rank >= 3 {
            p.changed.insert(key, SOURCE_NAMES[rank as usize].to_string());
        }
    }
    Ok(())
}

fn valid_run_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn sanitize(s: &str) -> String {
    let out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if out.is_empty() {
        "run".into()
    } else {
        out
    }
}

fn figment_error(e: figment::Error) -> Error {
    let msgs: Vec<String> = e
        .into_iter()
        .map(|e| {
            let mut s = e.kind.to_string();
            if !e.path.is_empty() {
                s = format!("key `{}`: {s}", e.path.join("."));
            }
            if let Some(m) = &e.metadata {
                s.push_str(&format!(" (from {})", m.name));
                if let Some(src) = &m.source {
                    s.push_str(&format!(" {src}"));
                }
            }
            s
        })
        .collect();
    Error::Config(msgs.join("; "))
}
