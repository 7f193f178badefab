//! What an app hands the training loop: a resumable stream of training micro-batches, the
//! training domain's validation set (model selection) and the test sets (final evaluation).

use crate::error::Result;
use serde_json::Value;
use tram::Batch;

/// An endless, resumable stream of training micro-batches (epochs follow each other, each in
/// a seeded order).
pub trait TrainStream {
    /// The next micro-batch.
    fn next_batch(&mut self) -> Result<Batch>;
    /// Micro-batches in one epoch.
    fn batches_per_epoch(&self) -> usize;
    /// The position in the stream (saved in checkpoints).
    fn position(&self) -> Value;
    /// Go back to a saved position.
    fn restore(&mut self, position: &Value) -> Result<()>;
    /// Training units (tokens for language modelling, examples otherwise) in a micro-batch,
    /// for the throughput display.
    fn units(&self, batch: &Batch) -> usize {
        batch.inputs.dim(0).unwrap_or(0)
    }
}

/// A source of evaluation batches (re-iterable; built lazily so large image sets are decoded
/// batch by batch).
pub trait EvalSource {
    /// Number of examples (or token blocks).
    fn len(&self) -> usize;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every batch, in a fixed order.
    fn batches(&self) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        self.shard(0, 1)
    }
    /// The batches `rank`, `rank + world`, `rank + 2·world`, … of [`EvalSource::batches`]: one
    /// rank's share of a data-parallel evaluation ([`crate::eval::evaluate_sharded`]), the
    /// other batches not built.
    fn shard(&self, rank: usize, world: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_>;
}

/// Whether batch `i` is in the shard of `rank` out of `world`.
pub(crate) fn in_shard(i: usize, rank: usize, world: usize) -> bool {
    i % world.max(1) == rank
}

/// Pre-built evaluation batches.
pub struct BatchList(pub Vec<Batch>, pub usize);

impl EvalSource for BatchList {
    fn len(&self) -> usize {
        self.1
    }
    fn shard(&self, rank: usize, world: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.0.iter().enumerate().filter(move |(i, _)| in_shard(*i, rank, world)).map(|(_, b)| Ok(b.clone())))
    }
}

/// One evaluation set: a column of the results table.
pub struct EvalSet {
    /// Key in the results (a domain, language or dataset name).
    pub name: String,
    /// Column header in the table.
    pub label: String,
    /// Whether this is the training domain / language (excluded from the zero-shot average).
    pub in_domain: bool,
    /// The batches.
    pub source: Box<dyn EvalSource>,
}

/// Everything the training loop needs from an app.
pub struct TaskData {
    /// Training micro-batches.
    pub train: Box<dyn TrainStream>,
    /// The training domain's validation split (model selection); `None`: select the last model.
    pub valid: Option<EvalSet>,
    /// The final evaluation, in table order.
    pub tests: Vec<EvalSet>,
    /// What the throughput counts (`tokens` or `examples`).
    pub unit: &'static str,
    /// Rows left out of each split read (empty texts, undecodable images, missing labels, ...).
    pub skipped: Skipped,
}

/// Rows left out, per split read (`<domain or config>/<split>`).
pub type Skipped = std::collections::BTreeMap<String, tram_data::Skips>;
