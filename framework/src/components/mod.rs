//! The component traits a composition is made of, and the model-facing interface they see.
//!
//! - [`base`]: the base optimizer (the final update from a gradient);
//! - [`neighborhood`]: the shape of the ascent perturbation;
//! - [`region`]: trust-region targets;
//! - [`distance`]: the distances that measure a target against the current logits;
//! - [`model`]: what the engine and the components need of a model;
//! - [`state`]: how a component reads its tensors back from a checkpoint.

pub mod base;
pub mod distance;
pub mod model;
pub mod neighborhood;
pub mod region;
pub mod state;
