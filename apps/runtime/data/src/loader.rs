//! Deterministic shuffled mini-batches that resume exactly.

use crate::error::{Error, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where a [`Loader`] stands: saved with a checkpoint, restored on resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed epochs.
    pub epoch: u64,
    /// Examples already served in the current epoch.
    pub cursor: usize,
    /// The base seed.
    pub seed: u64,
}

/// Shuffled mini-batches of indices over `n` examples. Epoch `e` visits the examples in a
/// permutation drawn from ChaCha8 seeded with `seed + e` (Fisher–Yates, implemented here so
/// the order never changes with a `rand` upgrade); the last batch of an epoch may be smaller
/// (`drop_last = false`); batches never straddle two epochs.
#[derive(Clone, Debug)]
pub struct Loader {
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
}

/// The permutation of `0..n` that epoch `epoch` of a loader seeded `seed` uses.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Uniform in 0..=i by widening multiplication (bias below 2^-32 for any realistic n).
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

impl Loader {
    /// A loader over `n` examples in batches of `batch_size`, at epoch 0. Both must be
    /// positive.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(Error::Invalid("the loader has no examples to serve (n = 0)".into()));
        }
        if batch_size == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        Ok(Self { n, batch_size, seed, epoch: 0, cursor: 0, order: permutation(n, seed, 0) })
    }

    /// A loader over `n` examples in batches of `batch_size`, continuing from `state`.
    pub fn resume(n: usize, batch_size: usize, state: LoaderState) -> Result<Self> {
        let mut l = Self::new(n, batch_size, state.seed)?;
        l.restore(state)?;
        Ok(l)
    }

    /// The indices of the next batch; at the end of an epoch the next one starts with a
    /// fresh permutation.
    pub fn next_indices(&mut self) -> Vec<usize> {
        let end = (self.cursor + self.batch_size).min(self.n);
        let out = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        if self.cursor == self.n {
            self.epoch += 1;
            self.cursor = 0;
            self.order = permutation(self.n, self.seed, self.epoch);
        }
        out
    }

    /// Where the loader stands.
    pub fn position(&self) -> LoaderState {
        LoaderState { epoch: self.epoch, cursor: self.cursor, seed: self.seed }
    }

    /// Continue from `state` (its seed replaces this loader's). A cursor past the end of the
    /// data is an error (the dataset changed size).
    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if state.cursor >= self.n {
            return Err(Error::Invalid(format!(
                "loader state cursor {} is past the {} examples of this dataset: it was saved for different data",
                state.cursor, self.n
            )));
        }
        self.seed = state.seed;
        self.epoch = state.epoch;
        self.cursor = state.cursor;
        self.order = permutation(self.n, self.seed, self.epoch);
        Ok(())
    }

    /// Completed epochs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (a loader has at least one example).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }
}

/// In-order batches of indices over `n` examples (for evaluation): `0..b`, `b..2b`, …, the
/// last one possibly smaller.
pub fn sequential(n: usize, batch_size: usize) -> impl Iterator<Item = Vec<usize>> {
    let b = batch_size.max(1);
    (0..n.div_ceil(b)).map(move |k| (k * b..((k + 1) * b).min(n)).collect())
}
