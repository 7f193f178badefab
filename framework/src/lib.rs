//! # tram
//!
//! Trust Region Aware Minimization (Sherborne et al., ICLR 2024) and every optimizer the
//! paper compares it with (SAM, ASAM, FSAM, TRPO, R3F, MESA, their naive combinations), as
//! compositions of small registered components for candle:
//!
//! - [`TrustRegion`]: a target output (θ_{t-1}, θ₀, noised input, EMA) and a [`Distance`]
//!   (KL in three directions, MMD, L2);
//! - [`Neighborhood`]: the ascent shape (ball — plain or adaptive —, Fisher ellipse);
//! - [`BaseOptimizer`]: SGD, Adam, AdamW.
//!
//! `Optimizer::new(&registry, OptimizerConfig::new("noise+ball+adam", 1e-4))` is TRAM-x on
//! Adam; see [`compose::grammar`] for the grammar. Built-in components live in `tram-plugins`.
//!
//! The crate is laid out by concept:
//!
//! - [`components`]: the component traits and the model interface they see;
//! - [`compose`]: the composition grammar, the registry, and [`compose::bind`], which turns an
//!   [`OptimizerConfig`] into bound components (and documents the region and penalty settings);
//! - [`engine`]: the step algorithm ([`Optimizer`]) and the optimizer checkpoint;
//! - [`plugin`]: run-time plugins (ABI and fingerprint, loader, wrappers);
//! - [`distributed`]: the collective of data-parallel jobs (single process, MPI, NCCL);
//! - [`check`], [`error`], [`noise`], [`ops`], [`schedule`]: what all of them share;
//! - `testing` (feature `testing`): test support for component and plugin authors.

/// The code digest of `build.rs`, for the fingerprint's unit tests.
#[cfg(test)]
#[path = "../build/digest.rs"]
mod build_digest;
pub mod check;
pub mod components;
pub mod compose;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod noise;
pub mod ops;
pub mod plugin;
pub mod profile;
pub mod schedule;
#[cfg(feature = "testing")]
pub mod testing;

// The paths of the flat layout, kept so code written against them still compiles.
#[doc(hidden)]
pub use components::{base, model, neighborhood, region};
/// The old `tram::state`: a component's checkpoint reader and the checkpoint file helpers.
#[doc(hidden)]
pub mod state {
    pub use crate::components::state::*;
    pub use crate::engine::checkpoint::{safetensors_bytes, write_atomic, FORMAT, VERSION};
}
#[doc(hidden)]
pub use compose::{grammar as composition, registry};

pub use components::base::BaseOptimizer;
pub use components::distance::{Distance, Reduction};
pub use components::model::{Batch, Logits, Mode, Model, Param, Params, Snapshot, Weights};
pub use components::neighborhood::{Ascent, Neighborhood, RadiusSource};
pub use components::region::{NoiseSamples, NoiseSlot, TargetCtx, TrustRegion};
pub use compose::bind::{BoundRegion, OptimizerConfig, PenaltySettings, RadiusPrecision, RegionSettings};
pub use compose::grammar::{Composition, Term};
pub use compose::registry::{Alias, AliasRegistration, Component, Entry, Kind, ParamDoc, Registration, Registry};
pub use engine::{Optimizer, StepReport};
pub use error::{Error, Result};
pub use noise::{NoiseKind, NoiseSource, QueuedNoise, SeededNoise};
pub use plugin::{Registrar, PLUGINS_ENV};
pub use schedule::Schedule;

/// Re-exported so component crates register without depending on `inventory` themselves.
pub use inventory;

/// Items only [`export_plugin!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::abi::catch_panics;
}
