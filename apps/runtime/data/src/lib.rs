//! # tram-data
//!
//! Datasets for fine-tuning with `tram`, read the way the paper's experiments need them:
//!
//! * [`DataSource`]: a hub dataset `org/name[@revision]` (resolved through the Hugging Face
//!   cache, `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE` honoured, downloaded when online)
//!   or a local directory;
//! * [`find_split`] / [`load_split`]: split discovery in the hub's parquet layouts and in
//!   local directories (parquet, JSON lines, text lines, and per-config tar archives such as
//!   M2D2's), rows as [`Record`]s of [`Field`]s;
//! * [`lm`]: documents joined by EOS and cut into blocks (GPT-2 on M2D2);
//! * [`nli`]: premise/hypothesis pairs with the tokenizer's pair template (XLM-R on MultiNLI
//!   and XNLI);
//! * [`vision`]: PNG/JPEG images resized and normalised as `ViTImageProcessor` does (ViT on
//!   CIFAR-100, Stanford Cars, Oxford Flowers);
//! * [`Loader`]: the shuffled training order of every app, resumed exactly from a checkpoint;
//! * `fixtures` (cargo feature `fixtures`, for tests only): tiny parquet / JSON lines datasets
//!   and tokenizers.
//!
//! ```no_run
//! use tram_data::{load_split, nli, DataSource};
//! let source = DataSource::parse("nyu-mll/multi_nli")?;
//! let rows = load_split(&source, "validation_matched", None)?;
//! # let tokenizer: tokenizers::Tokenizer = unimplemented!();
//! let (pairs, skips) = nli::encode(&rows, &tokenizer, "premise", "hypothesis", "label", 128)?;
//! println!("{} pairs, {skips}", pairs.len());
//! # Ok::<(), tram_data::Error>(())
//! ```

mod error;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod lm;
mod loader;
pub mod nli;
mod record;
mod skips;
mod source;
mod splits;
pub mod token_cache;
pub mod vision;

pub use error::{Error, Result};
pub use loader::{permutation, sequential, Loader, LoaderState};
pub use nli::PairExample;
pub use record::{
    archive_members, check_columns, column, load_split, load_split_hub, load_split_with, read_archive_members, read_json_lines,
    read_parquet, read_split_files, read_text_lines, Field, Record, TEXT_COLUMN,
};
pub use skips::Skips;
pub use source::{DataFiles, DataSource, HubOptions, Listing, DEFAULT_REVISION};
pub use splits::{
    archive_member, archives, classify, classify_archive, data_files, describe_splits, find_split, find_split_in, list_splits,
    nearest_names, split_aliases, DataFile, Format, SplitFiles,
};
pub use tokenizers::Tokenizer;
pub use vision::{ImageExample, Images, Preprocess};
