//! The resumable training order every training app uses: shuffled mini-batches of indices
//! whose position can be saved with a checkpoint and restored exactly.

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Where a [`Loader`] stands: saved with a checkpoint (the trainer writes it as the JSON
/// object of these fields, in this order), restored on resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed epochs.
    pub epoch: u64,
    /// Batches already served in the current epoch.
    pub next: usize,
    /// Batches served since the start, over every epoch (a step counter for per-batch
    /// randomness such as image augmentation).
    pub served: u64,
    /// Number of examples the order is over (a different number: the data changed).
    pub items: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// The base seed.
    pub seed: u64,
}

/// Shuffled mini-batches of indices over `n` examples. Epoch `e` visits the examples in a
/// permutation drawn from `(seed, e)` ([`permutation`]); the last, incomplete batch of an
/// epoch is dropped unless it is the only one, so every batch but that one is full.
///
/// ```
/// let mut a = tram_data::Loader::new(10, 4, 7)?;
/// let first: Vec<Vec<usize>> = (0..3).map(|_| a.next_indices()).collect();
/// assert_eq!(a.batches_per_epoch(), 2); // 10 examples: two batches of 4, 2 dropped
/// // A loader restored from a saved position serves the same batches.
/// let saved = a.position();
/// let next = a.next_indices();
/// let mut b = tram_data::Loader::new(10, 4, 7)?;
/// b.restore(&saved)?;
/// assert_eq!(b.next_indices(), next);
/// # assert_eq!(first[0].len(), 4);
/// # Ok::<(), tram_data::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Loader {
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    next: usize,
    served: u64,
    order: Vec<usize>,
}

/// The permutation of `0..n` that epoch `epoch` of a loader seeded `seed` visits: a
/// Fisher–Yates shuffle (`rand`'s `SliceRandom::shuffle`) driven by ChaCha8 seeded with
/// `seed` mixed with `epoch`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03).wrapping_add(0x5851_F42D_4C95_7F2D));
    order.shuffle(&mut rng);
    order
}

impl Loader {
    /// A loader over `n` examples in batches of `batch_size` (0 counts as 1), at epoch 0.
    /// `n` must be positive.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(Error::Invalid("the loader has no examples to serve (n = 0)".into()));
        }
        Ok(Self { n, batch_size: batch_size.max(1), seed, epoch: 0, next: 0, served: 0, order: permutation(n, seed, 0) })
    }

    /// The indices of the next batch; after the last batch of an epoch the next epoch
    /// starts with a fresh permutation.
    pub fn next_indices(&mut self) -> Vec<usize> {
        if self.next >= self.batches_per_epoch() {
            self.epoch += 1;
            self.next = 0;
            self.order = permutation(self.n, self.seed, self.epoch);
        }
        let start = self.next * self.batch_size;
        let end = (start + self.batch_size).min(self.n);
        self.next += 1;
        self.served += 1;
        self.order[start..end].to_vec()
    }

    /// Batches served since the start (the index of the next batch, counted over epochs).
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Where the loader stands.
    pub fn position(&self) -> LoaderState {
        LoaderState { epoch: self.epoch, next: self.next, served: self.served, items: self.n, batch_size: self.batch_size, seed: self.seed }
    }

    /// Continue from `state`. A state saved for another number of examples, batch size or
    /// seed is an error naming both (the training data or the run changed).
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        if (state.items, state.batch_size, state.seed) != (self.n, self.batch_size, self.seed) {
            return Err(Error::Invalid(format!(
                "the saved position is for {} examples in batches of {} with seed {}; this loader has {} in batches of {} with seed {}: the data changed",
                state.items, state.batch_size, state.seed, self.n, self.batch_size, self.seed
            )));
        }
        self.epoch = state.epoch;
        self.next = state.next;
        self.served = state.served;
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

    /// Batches per epoch: the full batches (at least one; with fewer examples than a batch,
    /// that one batch holds them all).
    pub fn batches_per_epoch(&self) -> usize {
        (self.n / self.batch_size).max(1)
    }
}

/// In-order batches of indices over `n` examples (for evaluation): `0..b`, `b..2b`, …, the
/// last one possibly smaller.
pub fn sequential(n: usize, batch_size: usize) -> impl Iterator<Item = Vec<usize>> {
    let b = batch_size.max(1);
    (0..n.div_ceil(b)).map(move |k| (k * b..((k + 1) * b).min(n)).collect())
}
