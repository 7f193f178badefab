//! A seeded, resumable training stream over in-memory items: the batches of a
//! [`tram_data::Loader`] (each epoch a fresh permutation drawn from `(seed, epoch)`), built into
//! [`Batch`]es; its position is the loader's.

use crate::error::{Error, Result};
use crate::task::TrainStream;
use serde_json::Value;
use tram::Batch;
use tram_data::{Loader, LoaderState};

/// Builds a batch from the items picked for it; `step` counts micro-batches from 0 (for
/// per-batch randomness such as image augmentation).
pub type BatchFn<T> = Box<dyn Fn(&[&T], u64) -> Result<Batch>>;

/// Shuffled micro-batches over `items`, in the order of a [`tram_data::Loader`]: the last,
/// incomplete batch of an epoch is dropped (unless it is the only one).
pub struct Shuffled<T> {
    items: Vec<T>,
    loader: Loader,
    build: BatchFn<T>,
    units: fn(&Batch) -> usize,
}

impl<T> Shuffled<T> {
    /// A stream of batches of `batch_size` items.
    pub fn new(items: Vec<T>, batch_size: usize, seed: u64, build: BatchFn<T>, units: fn(&Batch) -> usize) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::Data("the training split has no usable examples".into()));
        }
        let loader = Loader::new(items.len(), batch_size, seed).map_err(|e| Error::Data(e.to_string()))?;
        Ok(Self { items, loader, build, units })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T> TrainStream for Shuffled<T> {
    fn next_batch(&mut self) -> Result<Batch> {
        let step = self.loader.served();
        let picked: Vec<&T> = self.loader.next_indices().into_iter().map(|i| &self.items[i]).collect();
        (self.build)(&picked, step)
    }

    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn position(&self) -> Value {
        serde_json::to_value(self.loader.position()).expect("a loader position serialises to JSON")
    }

    fn restore(&mut self, p: &Value) -> Result<()> {
        let get = |k: &str| p.get(k).and_then(Value::as_u64).ok_or_else(|| Error::Data(format!("data position has no `{k}`: {p}")));
        let (items, bs, seed) = (get("items")? as usize, get("batch_size")? as usize, get("seed")?);
        let here = self.loader.position();
        if items != here.items || bs != here.batch_size || seed != here.seed {
            return Err(Error::Data(format!(
                "the checkpoint's data position is for {items} examples in batches of {bs} with seed {seed}; this run has {} in batches of {} with seed {}: the training data changed",
                here.items, here.batch_size, here.seed
            )));
        }
        let state = LoaderState { epoch: get("epoch")?, next: get("next")? as usize, served: get("served")?, items, batch_size: bs, seed };
        self.loader.restore(&state).map_err(|e| Error::Data(e.to_string()))
    }

    fn units(&self, batch: &Batch) -> usize {
        (self.units)(batch)
    }
}

/// Examples in a batch (leading dimension).
pub fn examples(b: &Batch) -> usize {
    b.inputs.dim(0).unwrap_or(0)
}

/// Tokens in a batch (all input positions).
pub fn tokens(b: &Batch) -> usize {
    b.inputs.elem_count()
}
