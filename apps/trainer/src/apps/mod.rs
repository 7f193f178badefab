//! The paper's three apps: what data each prepares and how its table looks.

pub mod lm;
pub mod stream;
pub mod vision;
pub mod xnli;

use crate::config::{Config, RunConfig};
use crate::error::{Error, Result};
use crate::results::TableSpec;
use crate::task::TaskData;
use std::path::PathBuf;
use tram_models::{LoadOptions, Pretrained};

/// What makes an app: its name, its subcommand's help, its section of the config, the shape
/// of its results table and how it prepares the model and data of a run. Each app implements
/// it in its own module, beside its config section; [`App::ALL`] lists them, and the `tram`
/// subcommands, the checkpoint and results fingerprints and `tram analyze` derive from it.
///
/// Adding an app: a module here implementing `AppSpec` (with its config section type), one
/// entry in [`App::ALL`] (and an associated const), and the section's field in
/// [`crate::Config`].
pub trait AppSpec: Send + Sync + 'static {
    /// Its subcommand name, the key of its config section (`[lm]`) and the `app` recorded in
    /// its results.
    fn name(&self) -> &'static str;
    /// The help line of its subcommand.
    fn about(&self) -> &'static str;
    /// Keys of its config section that do not change what a run computes (where caches live):
    /// left out of the checkpoint and results fingerprints, so changing them keeps `--resume`
    /// and recorded results valid.
    fn untracked_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Check its config section for values that parse but cannot work; every app's section is
    /// checked whichever app runs (a config file names one experiment, but is read whole).
    fn validate(&self, config: &Config) -> Result<()>;
    /// The shape of its results table (`run`: the first run of the table, for a title that
    /// names its training split).
    fn table_spec(&self, run: Option<&RunConfig>) -> TableSpec;
    /// Load the model and data of one run and seed.
    fn prepare(&self, run: &RunConfig, seed: u64) -> Result<Prepared>;
}

/// One of the apps: a handle on its [`AppSpec`], compared by name.
///
/// ```
/// use tram_trainer::apps::App;
/// let names: Vec<&str> = App::ALL.iter().map(|a| a.name()).collect();
/// assert_eq!(names, ["lm", "xnli", "vision"]);
/// assert_eq!(App::named("xnli"), Some(App::Xnli));
/// assert_eq!(App::Lm.table_spec(None).title, "Cross-domain language modelling (paper Table 4)");
/// ```
#[derive(Clone, Copy)]
pub struct App(&'static dyn AppSpec);

/// What an app prepared for one run and seed.
pub struct Prepared {
    /// The model, with the checkpoint's weights (or freshly initialised, `init = "random"`).
    pub model: Box<dyn Pretrained>,
    /// The training stream, validation set and test sets built for this seed.
    pub data: TaskData,
    /// The tokenizer file to save beside the selected model.
    pub tokenizer: Option<PathBuf>,
}

#[allow(non_upper_case_globals)]
impl App {
    /// Cross-domain language modelling (GPT-2, M2D2; Table 4).
    pub const Lm: App = App(&lm::Lm);
    /// Zero-shot cross-lingual NLI (XLM-R, MultiNLI → XNLI; Table 5).
    pub const Xnli: App = App(&xnli::Xnli);
    /// Cross-dataset image classification (ViT-B/16; Table 3).
    pub const Vision: App = App(&vision::Vision);

    /// Every app, in the order of the `tram` subcommands.
    pub const ALL: &'static [App] = &[App::Lm, App::Xnli, App::Vision];

    /// The app whose [`name`](App::name) is `name`.
    pub fn named(name: &str) -> Option<App> {
        App::ALL.iter().copied().find(|a| a.name() == name)
    }

    /// Every app's name, as a list for messages: `lm, xnli and vision`.
    pub fn names() -> String {
        let names: Vec<&str> = App::ALL.iter().map(|a| a.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// Its subcommand name (also its config section and the `app` of its results).
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The help line of its subcommand.
    pub fn about(self) -> &'static str {
        self.0.about()
    }

    /// Its [`AppSpec`].
    pub fn spec(self) -> &'static dyn AppSpec {
        self.0
    }

    /// The shape of its results table.
    pub fn table_spec(self, run: Option<&RunConfig>) -> TableSpec {
        self.0.table_spec(run)
    }

    /// Load the model and data of one run and seed.
    pub fn prepare(self, run: &RunConfig, seed: u64) -> Result<Prepared> {
        self.0.prepare(run, seed)
    }
}

impl PartialEq for App {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for App {}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Remove from a run's configuration (as JSON) what its results do not depend on among the
/// apps' sections: every other app's section, and `app`'s own [`AppSpec::untracked_keys`].
/// Shared by the checkpoint fingerprint and the results fingerprint.
pub fn keep_own_section(config: &mut serde_json::Map<String, serde_json::Value>, app: &str) {
    for other in App::ALL.iter().filter(|a| a.name() != app) {
        config.remove(other.name());
    }
    if let Some(own) = App::named(app) {
        if let Some(serde_json::Value::Object(section)) = config.get_mut(own.name()) {
            for k in own.spec().untracked_keys() {
                section.remove(*k);
            }
        }
    }
}

/// Load options of a run: device, dtype, the seed for head initialisation and dropout.
pub fn load_options(run: &RunConfig, seed: u64, num_labels: Option<usize>) -> Result<LoadOptions> {
    Ok(LoadOptions { dtype: crate::dtype(&run.config.dtype)?, device: crate::device(&run.config.device)?, seed, num_labels })
}

/// The model of a run: the checkpoint's weights, or a fresh initialisation of its
/// architecture when `init = "random"`.
pub fn load_model(run: &RunConfig, files: &tram_hub::ModelFiles, opts: &LoadOptions) -> Result<Box<dyn Pretrained>> {
    Ok(match run.config.init {
        crate::config::ModelInit::Pretrained => tram_hub::load_model_from(files, opts)?,
        crate::config::ModelInit::Random => {
            tracing::info!(model = %run.config.model, seed = opts.seed, "random initialisation (init = \"random\")");
            tram_hub::init_model_from(files, opts)?
        }
    })
}

/// The model source of a run.
pub fn model_source(run: &RunConfig) -> Result<tram_hub::ModelSource> {
    if run.config.model.trim().is_empty() {
        return Err(Error::Config("key `model`: no model given; set `model` to a hub id `org/name` or a local directory".into()));
    }
    Ok(tram_hub::ModelSource::parse(&run.config.model)?)
}

/// The data source named by `key` (`data`, `xnli.test_data`).
pub fn data_source(key: &str, value: &str) -> Result<tram_data::DataSource> {
    if value.trim().is_empty() {
        return Err(Error::Config(format!("key `{key}`: no dataset given; set it to a hub dataset id `org/name` or a local directory")));
    }
    tram_data::DataSource::parse(value).map_err(|e| Error::Config(format!("key `{key}`: {e}")))
}

/// A data error with context.
pub fn data_err(context: impl std::fmt::Display) -> impl FnOnce(tram_data::Error) -> Error {
    move |e| Error::Data(format!("{context}: {e}"))
}

/// The config/subset argument: empty means none.
pub fn subset(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_has_a_distinct_name_that_keys_its_config_section() {
        let defaults = crate::Config::default().to_json();
        for (i, app) in App::ALL.iter().enumerate() {
            assert!(defaults[app.name()].is_object(), "`{}` is a section of the config", app.name());
            assert_eq!(App::named(app.name()), Some(*app));
            assert!(App::ALL[..i].iter().all(|a| a.name() != app.name()), "`{}` twice", app.name());
        }
        assert_eq!(App::named("nope"), None);
        assert_eq!(App::names(), "lm, xnli and vision");
    }

    #[test]
    fn keep_own_section_drops_the_other_apps_and_the_untracked_keys() {
        let mut config = crate::Config::default();
        config.lm.cache_dir = Some("/tmp/cache".into());
        let json = config.to_json();
        let mut lm = json.as_object().unwrap().clone();
        keep_own_section(&mut lm, "lm");
        assert!(lm.contains_key("lm") && !lm.contains_key("xnli") && !lm.contains_key("vision"));
        assert!(!lm["lm"].as_object().unwrap().contains_key("cache_dir"));
        assert!(lm.contains_key("train"), "sections that are no app's stay");
        let mut unknown = json.as_object().unwrap().clone();
        keep_own_section(&mut unknown, "nope");
        assert!(App::ALL.iter().all(|a| !unknown.contains_key(a.name())));
    }
}
