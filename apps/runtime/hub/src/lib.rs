//! # tram-hub
//!
//! Hugging Face hub model sources for `tram`: resolve a model (`org/name[@revision]` on the hub,
//! or a local directory in hub layout) through the standard cache, load its `config.json`,
//! safetensors weights (single file or sharded) and `tokenizer.json`, build the matching
//! `tram_models` architecture, and save checkpoints back in hub layout.
//!
//! ```no_run
//! use tram_hub::{load_model, ModelSource};
//! let source: ModelSource = "sentence-transformers/all-MiniLM-L6-v2@main".parse()?;
//! let model = load_model(&source, &tram_models::LoadOptions::default())?;
//! # Ok::<(), tram_hub::Error>(())
//! ```
//!
//! Resolution honours `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN`
//! ([`HubOptions::from_env`]); with `HF_HUB_OFFLINE=1` only the cache is read.

mod dispatch;
mod error;
mod id;
mod load;
mod save;
mod source;

pub use dispatch::{init_model_from, load_model, load_model_from, SUPPORTED_MODEL_TYPES};
pub use error::{Error, Result};
pub use id::{check_repo_id, parse_source, ParsedSource, RepoKind};
pub use load::{
    load_safetensors, load_tokenizer, read_config, read_weight_index, Checkpoint, WeightFiles, WeightMap, CONFIG_FILE, TOKENIZER_FILE,
    WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
pub use save::{safetensors_bytes, save_model, save_pretrained, NamedTensors, TOKENIZER_SIDE_FILES};
pub use source::{HubOptions, ModelFiles, ModelSource, DEFAULT_ENDPOINT, DEFAULT_REVISION};
pub use tokenizers::Tokenizer;
