//! The handle of a loaded plugin library, kept by the registry and by everything built from it.

use crate::compose::registry::LoadedPlugin;
use std::path::{Path, PathBuf};

/// A loaded plugin library. Dropped (unloaded) when its last user goes.
pub struct PluginLibrary {
    // Never read: held so the code stays mapped.
    _library: libloading::Library,
    path: PathBuf,
}

impl PluginLibrary {
    /// Keep `library`, opened from the canonical path `path`.
    pub(super) fn new(library: libloading::Library, path: PathBuf) -> Self {
        Self { _library: library, path }
    }
}

impl PluginLibrary {
    /// The canonical path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LoadedPlugin for PluginLibrary {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginLibrary({})", self.path.display())
    }
}
