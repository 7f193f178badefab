//! `tram vision`: ViT-B/16 with a new head fine-tuned on CIFAR-100, Stanford Cars or Oxford
//! Flowers; top-1 accuracy of the final model on the test split (paper Table 3). Images stay
//! encoded in memory and are decoded, resized and normalised per batch (as
//! `ViTImageProcessor`); training images are flipped horizontally at random (seeded).

use super::lm::Empty;
use super::stream::{examples, Shuffled};
use super::{data_err, data_source, load_options, model_source, Prepared};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::task::{EvalSet, EvalSource, TaskData};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tram::Batch;
use tram_data::{Images, Preprocess};

/// `tram vision`: cross-dataset image classification (paper Table 3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Dataset config / subset (`default` when the dataset has one).
    pub subset: String,
    /// The dataset holding the test split, when it is another repository than `data`
    /// (Stanford Cars on the hub); empty: `data`.
    pub test_data: String,
    /// Column label of the dataset in the table (defaults to `data`).
    pub dataset_label: Option<String>,
    /// Split the head and the model are fine-tuned on.
    pub train_split: String,
    /// Validation split (empty: none; model selection then uses the final model).
    pub valid_split: String,
    /// Test split (top-1 accuracy is reported on it).
    pub test_split: String,
    /// The column holding the encoded images (PNG or JPEG bytes).
    pub image_column: String,
    /// The column holding each image's class index.
    pub label_column: String,
    /// Number of classes of the new head (0: from the data's largest label + 1).
    pub num_labels: usize,
    /// Side of the square model input (defaults to the model's `image_size`).
    pub image_size: Option<usize>,
    /// Per-channel normalisation mean (default: the model's `preprocessor_config.json`, else 0.5).
    pub mean: Option<Vec<f32>>,
    /// Per-channel normalisation std (default: the model's `preprocessor_config.json`, else 0.5).
    pub std: Option<Vec<f32>>,
    /// Random horizontal flips of training images.
    pub hflip: bool,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            subset: "default".into(),
            test_data: String::new(),
            dataset_label: None,
            train_split: "train".into(),
            valid_split: String::new(),
            test_split: "test".into(),
            image_column: "img".into(),
            label_column: "label".into(),
            num_labels: 0,
            image_size: None,
            mean: None,
            std: None,
            hflip: true,
        }
    }
}

fn images(run: &RunConfig, key: &str, data: &str, split: &str, limit: Option<usize>, skipped: &mut crate::task::Skipped) -> Result<Images> {
    let v = &run.config.vision;
    let source = data_source(key, data)?;
    let what = format!("{data} (split `{split}`)");
    let mut records = tram_data::load_split(&source, split, super::subset(&v.subset)).map_err(data_err(&what))?;
    if let Some(n) = limit {
        records.truncate(n);
    }
    let (imgs, skips) = Images::from_records(&records, &v.image_column, &v.label_column).map_err(data_err(&what))?;
    if !skips.is_empty() {
        tracing::warn!(data = %what, %skips, "rows skipped");
        skipped.insert(format!("{data}/{split}"), skips);
    }
    if imgs.is_empty() {
        return Err(Error::Data(format!("{what}: no usable images ({} rows, {skips})", records.len())));
    }
    tracing::info!(data = %what, images = imgs.len(), "images");
    Ok(imgs)
}

struct LazyImages {
    images: Arc<Images>,
    pre: Preprocess,
    batch: usize,
    device: Device,
}

impl EvalSource for LazyImages {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn shard(&self, rank: usize, world: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        let idx: Vec<usize> = (0..self.images.len()).collect();
        let chunks: Vec<Vec<usize>> =
            idx.chunks(self.batch).enumerate().filter(|(i, _)| crate::task::in_shard(*i, rank, world)).map(|(_, c)| c.to_vec()).collect();
        Box::new(chunks.into_iter().map(move |c| self.images.batch(&c, &self.pre, &self.device).map_err(data_err("evaluation images"))))
    }
}

/// Flip the images of `b` whose coin (from `seed`, `step`) comes up heads.
fn hflip(b: Batch, seed: u64, step: u64) -> Result<Batch> {
    let (n, _, _, w) = b.inputs.dims4()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step);
    let flips: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
    if !flips.iter().any(|f| *f) {
        return Ok(b);
    }
    let rev = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, b.inputs.device())?;
    let rows = (0..n)
        .map(|i| {
            let x = b.inputs.narrow(0, i, 1)?;
            if flips[i] {
                x.index_select(&rev, 3)
            } else {
                Ok(x)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Batch { inputs: Tensor::cat(&rows, 0)?, ..b })
}

/// Load ViT with a new head and the image dataset of a run.
pub fn prepare(run: &RunConfig, seed: u64) -> Result<Prepared> {
    let cfg = &run.config;
    let v = &cfg.vision;
    let source = model_source(run)?;
    let files = source.files_from_env();
    let mut pre = Preprocess::from_model(&files).map_err(data_err(format!("preprocessing of {}", cfg.model)))?;
    if let Some(s) = v.image_size {
        pre.image_size = s;
    }
    let triple = |key: &str, x: &Option<Vec<f32>>, into: &mut [f32; 3]| -> Result<()> {
        match x {
            None => Ok(()),
            Some(x) if x.len() == 3 => {
                into.copy_from_slice(x);
                Ok(())
            }
            Some(x) => Err(Error::Config(format!("key `vision.{key}`: expected 3 numbers (RGB), got {}", x.len()))),
        }
    };
    triple("mean", &v.mean, &mut pre.mean)?;
    triple("std", &v.std, &mut pre.std)?;
    let evaluate_only = cfg.train.evaluate_only || cfg.train.steps == Some(0);
    let mut skipped = crate::task::Skipped::new();
    let train_images = if evaluate_only {
        None
    } else {
        Some(images(run, "data", &cfg.data, &v.train_split, cfg.train.max_train_examples, &mut skipped)?)
    };
    let (test_key, test_data) = if v.test_data.trim().is_empty() { ("data", &cfg.data) } else { ("vision.test_data", &v.test_data) };
    let test_images = Arc::new(images(run, test_key, test_data, &v.test_split, cfg.train.max_eval_examples, &mut skipped)?);
    let num_labels = if v.num_labels > 0 {
        v.num_labels
    } else {
        train_images
            .iter()
            .chain(std::iter::once(test_images.as_ref()))
            .flat_map(|i| i.labels.iter())
            .max()
            .map(|m| *m as usize + 1)
            .unwrap_or(0)
    };
    for imgs in train_images.iter().chain(std::iter::once(test_images.as_ref())) {
        if let Some(bad) = imgs.labels.iter().find(|l| **l as usize >= num_labels) {
            return Err(Error::Data(format!("label {bad} is not below vision.num_labels = {num_labels}")));
        }
    }
    let opts = load_options(run, seed, Some(num_labels))?;
    let model = tram_hub::load_model_from(&files, &opts)?;
    let device = opts.device.clone();
    let eval_batch = cfg.train.eval_batch_size.unwrap_or(cfg.train.batch_size);
    let label = v.dataset_label.clone().unwrap_or_else(|| cfg.data.clone());
    let valid = if v.valid_split.trim().is_empty() {
        None
    } else {
        let imgs = Arc::new(images(run, "data", &cfg.data, &v.valid_split, cfg.train.max_eval_examples, &mut skipped)?);
        Some(EvalSet {
            name: v.valid_split.clone(),
            label: "validation".into(),
            in_domain: true,
            source: Box::new(LazyImages { images: imgs, pre, batch: eval_batch, device: device.clone() }),
        })
    };
    let tests = vec![EvalSet {
        name: label.clone(),
        label,
        in_domain: true,
        source: Box::new(LazyImages { images: test_images, pre, batch: eval_batch, device: device.clone() }),
    }];
    let train: Box<dyn crate::task::TrainStream> = match train_images {
        None => Box::new(Empty),
        Some(imgs) => {
            let imgs = Arc::new(imgs);
            let flip = v.hflip;
            let indices: Vec<usize> = (0..imgs.len()).collect();
            Box::new(Shuffled::new(
                indices,
                cfg.train.batch_size,
                seed,
                Box::new(move |picked: &[&usize], step| {
                    let idx: Vec<usize> = picked.iter().map(|i| **i).collect();
                    let b = imgs.batch(&idx, &pre, &device).map_err(data_err("training images"))?;
                    if flip {
                        hflip(b, seed, step)
                    } else {
                        Ok(b)
                    }
                }),
                examples,
            )?)
        }
    };
    Ok(Prepared { model, data: TaskData { train, valid, tests, unit: "images", skipped }, tokenizer: None })
}

/// The `tram vision` app.
pub struct Vision;

impl super::AppSpec for Vision {
    fn name(&self) -> &'static str {
        "vision"
    }

    fn about(&self) -> &'static str {
        "Cross-dataset image classification: ViT-B/16 on CIFAR-100 / Cars / Flowers (paper Table 3)"
    }

    fn validate(&self, config: &crate::Config) -> Result<()> {
        let v = &config.vision;
        crate::config::limit_at_least_one("vision.image_size", v.image_size)?;
        for (k, v) in [("vision.mean", &v.mean), ("vision.std", &v.std)] {
            if let Some(x) = v.as_ref().and_then(|v| v.iter().find(|x| !x.is_finite() || (k == "vision.std" && **x <= 0.0))) {
                return Err(Error::Config(format!("key `{k}`: {x} is not a valid value (finite; a std must be > 0)")));
            }
        }
        Ok(())
    }

    fn table_spec(&self, _run: Option<&RunConfig>) -> crate::results::TableSpec {
        crate::results::TableSpec {
            title: "Cross-dataset image classification (paper Table 3)".into(),
            metric: crate::results::Metric::Accuracy,
            zero_shot_average: false,
            confidence: true,
            corner: "method".into(),
        }
    }

    fn prepare(&self, run: &RunConfig, seed: u64) -> Result<Prepared> {
        prepare(run, seed)
    }
}
