//! A seeded, resumable training stream over in-memory items: each epoch visits the items in a
//! fresh permutation drawn from `(seed, epoch)`; the position is `(epoch, next index)`.

use crate::error::{Error, Result};
use crate::task::TrainStream;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use tram::Batch;

/// Builds a batch from the items picked for it; `step` counts micro-batches from 0 (for
/// per-batch randomness such as image augmentation).
pub type BatchFn<T> = Box<dyn Fn(&[&T], u64) -> Result<Batch>>;

/// Shuffled micro-batches over `items`; the last, incomplete batch of an epoch is dropped
/// (unless it is the only one).
pub struct Shuffled<T> {
    items: Vec<T>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    next: usize,
    served: u64,
    order: Vec<usize>,
    build: BatchFn<T>,
    units: fn(&Batch) -> usize,
}

fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03).wrapping_add(0x5851_F42D_4C95_7F2D));
    order.shuffle(&mut rng);
    order
}

impl<T> Shuffled<T> {
    /// A stream of batches of `batch_size` items.
    pub fn new(items: Vec<T>, batch_size: usize, seed: u64, build: BatchFn<T>, units: fn(&Batch) -> usize) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::Data("the training split has no usable examples".into()));
        }
        let order = permutation(items.len(), seed, 0);
        Ok(Self { items, batch_size: batch_size.max(1), seed, epoch: 0, next: 0, served: 0, order, build, units })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn per_epoch(&self) -> usize {
        (self.items.len() / self.batch_size).max(1)
    }
}

impl<T> TrainStream for Shuffled<T> {
    fn next_batch(&mut self) -> Result<Batch> {
        if self.next >= self.per_epoch() {
            self.epoch += 1;
            self.next = 0;
            self.order = permutation(self.items.len(), self.seed, self.epoch);
        }
        let start = self.next * self.batch_size;
        let end = (start + self.batch_size).min(self.items.len());
        let picked: Vec<&T> = self.order[start..end].iter().map(|&i| &self.items[i]).collect();
        self.next += 1;
        let b = (self.build)(&picked, self.served)?;
        self.served += 1;
        Ok(b)
    }

    fn batches_per_epoch(&self) -> usize {
        self.per_epoch()
    }

    fn position(&self) -> Value {
        json!({"epoch": self.epoch, "next": self.next, "served": self.served, "items": self.items.len(), "batch_size": self.batch_size, "seed": self.seed})
    }

    fn restore(&mut self, p: &Value) -> Result<()> {
        let get = |k: &str| p.get(k).and_then(Value::as_u64).ok_or_else(|| Error::Data(format!("data position has no `{k}`: {p}")));
        let (items, bs, seed) = (get("items")? as usize, get("batch_size")? as usize, get("seed")?);
        if items != self.items.len() || bs != self.batch_size || seed != self.seed {
            return Err(Error::Data(format!(
                "the checkpoint's data position is for {items} examples in batches of {bs} with seed {seed}; this run has {} in batches of {} with seed {}: the training data changed",
                self.items.len(),
                self.batch_size,
                self.seed
            )));
        }
        self.epoch = get("epoch")?;
        self.next = get("next")? as usize;
        self.served = get("served")?;
        self.order = permutation(self.items.len(), self.seed, self.epoch);
        Ok(())
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
