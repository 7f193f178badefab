//! Test support for component and plugin authors (feature `testing`):
//!
//! - [`EmbeddingClassifier`]: a tiny [`Model`](crate::Model) (embedding, mean pool, tanh
//!   layers, logits; 0.1–10 k parameters) and [`synthetic_batches`] of a learnable task;
//! - [`TargetHarness`]: a [`TargetCtx`](crate::TargetCtx) builder, to call a trust region's
//!   `target()` (and its input perturbation) outside the engine;
//! - [`gradcheck`] / [`gradcheck_distance`]: the analytic gradient (candle's backward)
//!   against central finite differences in f64, like PyTorch's `torch.autograd.gradcheck`;
//! - [`static_equals_loaded`]: a composition trained with a plugin crate linked statically and
//!   with its `cdylib` loaded at run time must give bitwise the same parameters.
//!
//! The ranks of a data-parallel job as threads of one test: [`crate::distributed::Threads`].
//!
//! In a plugin crate:
//!
//! ```toml
//! [dev-dependencies]
//! tram = { path = "../tram/framework", features = ["testing"] }
//! ```
//!
//! The feature adds code only: it is not part of the plugin fingerprint, so a plugin built
//! without it loads into a test binary built with it.

mod gradcheck;
mod harness;
mod model;
mod plugin;

pub use gradcheck::{gradcheck, gradcheck_distance, GradcheckOptions, GradcheckReport};
pub use harness::TargetHarness;
pub use model::{eval_loss, synthetic_batches, ClassifierShape, EmbeddingClassifier, Lcg};
pub use plugin::{build_cdylib, static_equals_loaded, StaticVsLoaded};
