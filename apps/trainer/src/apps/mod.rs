//! The paper's three apps: what data each prepares and how its table looks.

pub mod lm;
pub mod stream;
pub mod vision;
pub mod xnli;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::results::TableSpec;
use crate::task::TaskData;
use std::path::PathBuf;
use tram_models::{LoadOptions, Pretrained};

/// One of the apps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// Cross-domain language modelling (GPT-2, M2D2; Table 4).
    Lm,
    /// Zero-shot cross-lingual NLI (XLM-R, MultiNLI → XNLI; Table 5).
    Xnli,
    /// Cross-dataset image classification (ViT-B/16; Table 3).
    Vision,
}

/// What an app prepared for one run and seed.
pub struct Prepared {
    /// The model.
    pub model: Box<dyn Pretrained>,
    /// Its data.
    pub data: TaskData,
    /// The tokenizer file to save beside the selected model.
    pub tokenizer: Option<PathBuf>,
}

impl App {
    /// Its subcommand name.
    pub fn name(self) -> &'static str {
        match self {
            App::Lm => "lm",
            App::Xnli => "xnli",
            App::Vision => "vision",
        }
    }

    /// The shape of its results table.
    pub fn table_spec(self, run: Option<&RunConfig>) -> TableSpec {
        match self {
            App::Lm => {
                let split = run
                    .map(|r| {
                        format!(" — trained on {}", r.config.lm.train_label.clone().unwrap_or_else(|| r.config.lm.train_domain.clone()))
                    })
                    .unwrap_or_default();
                TableSpec {
                    title: format!("Cross-domain language modelling (paper Table 4){split}"),
                    metric: crate::results::Metric::Perplexity,
                    zero_shot_average: true,
                    confidence: false,
                    corner: "method".into(),
                }
            }
            App::Xnli => TableSpec {
                title: "Zero-shot cross-lingual transfer, XNLI (paper Table 5)".into(),
                metric: crate::results::Metric::Accuracy,
                zero_shot_average: true,
                confidence: false,
                corner: "method".into(),
            },
            App::Vision => TableSpec {
                title: "Cross-dataset image classification (paper Table 3)".into(),
                metric: crate::results::Metric::Accuracy,
                zero_shot_average: false,
                confidence: true,
                corner: "method".into(),
            },
        }
    }

    /// Load the model and data of one run and seed.
    pub fn prepare(self, run: &RunConfig, seed: u64) -> Result<Prepared> {
        match self {
            App::Lm => lm::prepare(run, seed),
            App::Xnli => xnli::prepare(run, seed),
            App::Vision => vision::prepare(run, seed),
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
