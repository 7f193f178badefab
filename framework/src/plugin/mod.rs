//! Run-time plugins: components loaded from a `cdylib` with [`Registry::load_plugin`](crate::Registry::load_plugin).
//!
//! A plugin crate exports one [`PluginDeclaration`] through [`export_plugin!`](crate::export_plugin)
//! (the "Plugins in Rust" declaration pattern): a `#[no_mangle]` static holding a build
//! [`Fingerprint`] and the crate's registration function.
//!
//! ```text
//! tram::component! { distance "renyi", summary: "Rényi divergence", config: RenyiConfig { alpha: "order α" }, build: build }
//! pub fn register(r: &mut dyn tram::plugin::Registrar) -> tram::Result<()> {
//!     r.register(REGISTRATION.entry())
//! }
//! tram::export_plugin!(register);
//! ```
//!
//! The module is split by concern: `abi` (the declaration and fingerprint, and reading them back
//! from a library), `loader` (opening a library and registering what it declares), `library`
//! (the handle that keeps it loaded) and `wrappers` (what a plugin's components are wrapped in).
//! Every `unsafe` is in `abi` and `loader`.
//!
//! # Why a fingerprint
//!
//! Rust has no stable ABI: the host and the plugin exchange trait objects, `String`s,
//! `serde_json::Value`s and candle tensors, which is sound only when both were compiled by the
//! same compiler from the same sources. The loader reads the declaration's `#[repr(C)]` header
//! (magic, ABI version, size) and fingerprint (fixed-size, NUL-padded strings: rustc version,
//! tram version and code digest (comments excluded), candle version, framework features, a digest of the sizes
//! of the types that cross the boundary) *before* calling anything in the library, and refuses
//! any difference with [`Error::PluginMismatch`](crate::Error::PluginMismatch) naming the field and both values.
//!
//! # What else the loader guarantees
//!
//! - The [`libloading::Library`] is kept alive by the registry, by every [`Entry`](crate::Entry) build closure
//!   it registered and by every component built from those, so it outlives every object it made
//!   (on Unix it is also opened `RTLD_NODELETE`: threads its copy of candle started may outlive
//!   all of those, so its code is never unmapped).
//! - Built components are wrapped in delegating wrappers. A plugin links its *own copy* of
//!   candle, whose tensor ids come from a counter separate from the host's; an autograd graph
//!   mixing tensors made by both could mix up gradients. The wrappers therefore re-label every
//!   tensor a plugin returns in the host's id space, and a plugin [`Distance`](crate::Distance) is differentiated
//!   inside the plugin ([`Distance::distance_with_grads`](crate::Distance::distance_with_grads)) and re-attached to the host graph by
//!   an exact first-order surrogate. A plugin trust region's noised embeddings are treated as
//!   `embeddings + perturbation` (the gradient passes to the clean embeddings unchanged, exact
//!   for additive noise), and differentiating through a plugin trust region's target
//!   (`through_target=true`) is refused.
//! - Errors coming out of a plugin are converted to plain messages (they may hold trait objects
//!   whose code lives in the library); a panic in a registration function becomes an error.
//!
//! What the fingerprint cannot see: the host must use the system allocator (no
//! `#[global_allocator]`), since plugin-allocated values are freed by the host; and a panic
//! inside a plugin component (after registration) aborts the process.

pub(crate) mod abi;
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod elf;
mod library;
mod loader;
mod wrappers;

pub use abi::{
    Fingerprint, FixedStr, PluginDeclaration, PluginHeader, RegisterFn, Registrar, ABI_VERSION, CANDLE_VERSION, DECLARATION_SYMBOL,
    FEATURES, FIELD_LEN, MAGIC, RUSTC_VERSION, TRAM_SOURCE_DIGEST, TRAM_VERSION,
};
pub use library::PluginLibrary;
pub use loader::{inspect, plugin_files, PluginIdentity, PLUGINS_ENV};
