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

pub mod check;
pub mod components;
pub mod compose;
pub mod engine;
pub mod error;
pub mod noise;
pub mod ops;
pub mod plugin;
pub mod schedule;

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

pub use base::BaseOptimizer;
pub use components::distance::{Distance, Reduction};
pub use components::region::{NoiseSlot, TargetCtx, TrustRegion};
pub use compose::bind::{BoundRegion, OptimizerConfig, PenaltySettings, RadiusPrecision, RegionSettings};
pub use composition::{Composition, Term};
pub use engine::{Optimizer, StepReport};
pub use error::{Error, Result};
pub use model::{Batch, Logits, Mode, Model, Param, Params, Snapshot, Weights};
pub use neighborhood::{Ascent, Neighborhood, RadiusSource};
pub use noise::{NoiseKind, NoiseSource, QueuedNoise, SeededNoise};
pub use plugin::{Registrar, PLUGINS_ENV};
pub use registry::{Alias, AliasRegistration, Component, Entry, Kind, ParamDoc, Registration, Registry};
pub use schedule::Schedule;

/// Re-exported so component crates register without depending on `inventory` themselves.
pub use inventory;

/// Items only [`export_plugin!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::abi::catch_panics;
}
