//! # tram-renyi
//!
//! The worked example of a run-time plugin for [`tram`] (TRAM, Sherborne et al., ICLR 2024):
//! a `cdylib` exporting the Rényi-divergence distance `renyi` and the alias
//! `tram-noise-renyi` (`noise(distance=renyi)+ball+adam`, TRAM-x measured with D_α).
//!
//! ```sh
//! cargo build --release -p tram-renyi
//! cargo run --release -p tram-cli -- list --plugin target/release/libtram_renyi.so
//! ```
//!
//! The crate is also an `rlib`: a program can link it and call [`register`] on its registry.
//! docs/writing-a-plugin.md walks through writing one like it.

pub mod renyi;

use tram::plugin::Registrar;
use tram::Alias;

/// Registers every component and alias of this plugin.
pub fn register(r: &mut dyn Registrar) -> tram::Result<()> {
    renyi::register(r)?;
    r.register_alias(Alias {
        name: "tram-noise-renyi".into(),
        composition: "noise(distance=renyi)+ball+adam".into(),
        summary: "TRAM-x with the Rényi divergence D_α (plugin tram-renyi)".into(),
    })
}

tram::export_plugin!(register);
