//! The plugin side of the `tram` command: loading `TRAM_PLUGINS` / `--plugin` so that a plugin
//! that does not load is a warning (commands that do not use it still run; `tram list` shows
//! it refused), `tram plugin check PATH` (its fingerprint beside this program's), and the
//! build identity `tram --version --verbose` / `tram plugin host` print.

use anyhow::Result;
use clap::Subcommand;
use std::fmt::Write as _;
use std::path::PathBuf;
use tram::plugin::{Fingerprint, ABI_VERSION};
use tram::Registry;

/// `tram plugin …`.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Compare a plugin library's build fingerprint with this program's, field by field,
    /// without registering anything from it; exits with 1 when they differ.
    Check {
        /// The plugin library (`target/release/lib<crate>.so`).
        path: PathBuf,
    },
    /// Print this program's build fingerprint: what a plugin must be built with to load.
    Host,
}

/// Loads `TRAM_PLUGINS` (which `--plugin` paths were added to) into `registry`. A plugin that
/// does not load is recorded as refused and reported on stderr; the command goes on, and one
/// that names a component of it gets an error listing the refused plugins.
pub fn load_env(registry: &mut Registry) {
    for e in registry.load_env_plugins_lenient() {
        eprintln!("warning: {e}\n  (not loaded: commands that use its components fail; `tram plugin check PATH` compares fingerprints)");
    }
}

/// The `tram list` section of plugins that were refused, with the reason (empty when none).
pub fn refused_section(registry: &Registry) -> String {
    let mut out = String::new();
    let refused: Vec<(&str, &str)> = registry.refused_plugins().collect();
    if !refused.is_empty() {
        out.push_str("\nrefused plugins (not loaded; their components are missing above):\n");
        for (path, reason) in refused {
            let _ = writeln!(out, "  {path}\n      {reason}");
        }
    }
    out
}

/// This program's build identity: the version line, then every fingerprint field.
pub fn host() -> String {
    let mut out = format!("tram {}\n", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "  {:<20} {}", "plugin ABI version", ABI_VERSION);
    for (field, value) in Fingerprint::CURRENT.fields() {
        let _ = writeln!(out, "  {field:<20} {value}");
    }
    out
}

/// `tram plugin check PATH`: the side-by-side table and whether every field matches.
pub fn check(path: &std::path::Path) -> Result<(String, bool)> {
    let id = tram::plugin::inspect(path)?;
    let rows = id.compare();
    let width = rows.iter().map(|(_, p, _)| p.chars().count()).max().unwrap_or(0).max("plugin".len());
    let mut out = format!("plugin {}\n", id.path.display());
    let _ = writeln!(out, "  {:<20} {:<width$}  this program", "field", "plugin");
    for (field, plugin, host) in &rows {
        let mark = if plugin == host { "" } else { "   <- differs" };
        let _ = writeln!(out, "  {field:<20} {plugin:<width$}  {host}{mark}");
    }
    let matches = id.matches();
    match rows.iter().find(|(_, p, h)| p != h) {
        None => out.push_str("the fingerprints match: this program loads the plugin\n"),
        Some((field, _, host)) => {
            let _ = writeln!(out, "the plugin would be refused: {}", tram::error::mismatch_advice(field, host));
        }
    }
    Ok((out, matches))
}

/// Whether the arguments are exactly `--version --verbose` (or `-V -v`, in any order), which
/// print [`host`] instead of clap's one-line version.
pub fn wants_verbose_version(args: &[String]) -> bool {
    let is = |a: &str, names: &[&str]| names.contains(&a);
    args.len() == 2 && args.iter().any(|a| is(a, &["--version", "-V"])) && args.iter().any(|a| is(a, &["--verbose", "-v"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_prints_every_fingerprint_field() {
        let h = host();
        for (field, value) in Fingerprint::CURRENT.fields() {
            assert!(h.lines().any(|l| l.contains(field) && l.trim_end().ends_with(&*value)), "{field} {value} missing from\n{h}");
        }
        assert!(h.starts_with(&format!("tram {}", env!("CARGO_PKG_VERSION"))) && h.contains("plugin ABI version"));
    }

    #[test]
    fn only_version_with_verbose_asks_for_the_build_identity() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants_verbose_version(&args(&["--version", "--verbose"])));
        assert!(wants_verbose_version(&args(&["-v", "-V"])));
        assert!(!wants_verbose_version(&args(&["--version"])));
        assert!(!wants_verbose_version(&args(&["list", "--verbose"])));
    }
}
