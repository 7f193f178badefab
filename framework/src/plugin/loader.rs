//! The plugin loader: opens a library, checks its declaration ([`super::abi`]), runs its
//! registration function and registers what it made, wrapped ([`super::wrappers`]), into a
//! [`Registry`].

use super::abi::{checked_register_fn, read_declaration, Fingerprint, Registrar, ABI_VERSION};
use super::library::PluginLibrary;
use super::wrappers::{PluginBuild, PluginResolve};
use crate::compose::registry::{Alias, Entry, Registry};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable with plugins to load: a path list, like `PATH`, of plugin libraries
/// and of directories, each of which loads every shared library in it (see [`plugin_files`]).
pub const PLUGINS_ENV: &str = "TRAM_PLUGINS";

#[derive(Default)]
struct Collector {
    entries: Vec<Entry>,
    aliases: Vec<Alias>,
}

impl Registrar for Collector {
    fn register(&mut self, entry: Entry) -> Result<()> {
        self.entries.push(entry);
        Ok(())
    }
    fn register_alias(&mut self, alias: Alias) -> Result<()> {
        self.aliases.push(alias);
        Ok(())
    }
}

/// A registry is a registrar too: a plugin crate linked as an ordinary library registers its
/// components with `tram_renyi::register(&mut registry)`.
impl Registrar for Registry {
    fn register(&mut self, entry: Entry) -> Result<()> {
        Registry::register(self, entry)
    }
    fn register_alias(&mut self, alias: Alias) -> Result<()> {
        Registry::register_alias(self, alias)
    }
}

/// `dlopen` with symbols resolved now (a missing one is a load error, not a crash later) and,
/// where the platform has it, `RTLD_NODELETE`: threads that the plugin's copy of candle started
/// (its own rayon pool) keep running its code after the last object it made is gone, so the
/// code is never unmapped even when the last [`PluginLibrary`] handle closes it.
///
/// # Safety
/// Loading a library runs its initialisers.
unsafe fn open_library(path: &Path) -> std::result::Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        const RTLD_NODELETE: std::os::raw::c_int = 0x1000;
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        const RTLD_NODELETE: std::os::raw::c_int = 0x80;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd", target_os = "macos", target_os = "ios")))]
        const RTLD_NODELETE: std::os::raw::c_int = 0;
        // SAFETY: forwarded to the caller (loading runs the library's initialisers).
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: forwarded to the caller (loading runs the library's initialisers).
        unsafe { libloading::Library::new(path) }
    }
}

impl Registry {
    /// Load the run-time plugin at `path` (a `cdylib` exporting
    /// [`export_plugin!`](crate::export_plugin)) and register its components and aliases, with
    /// `origin` set to the canonical path. Returns the names it registered (components, then
    /// aliases). Nothing is registered when any of them clashes with a name already in use.
    ///
    /// The library is checked before anything in it runs (beyond the loader's own
    /// initialisers): a plugin built by another compiler, against another tram or candle, or
    /// with other framework features is refused with [`Error::PluginMismatch`]. On ELF
    /// platforms the file is checked first against its own headers (truncated, not a shared
    /// library, another machine's): an [`Error::Plugin`] saying so, never a crash.
    ///
    /// A library this registry already loaded (the same canonical path, however `path` names
    /// it) is not loaded again: nothing is registered and the returned list is empty.
    ///
    /// ```
    /// let mut registry = tram::Registry::empty();
    /// // Build a plugin with `cargo build --release -p tram-renyi`, then load
    /// // target/release/libtram_renyi.so; a path that is not there is an error naming it.
    /// let err = registry.load_plugin("target/release/libno_such_plugin.so").unwrap_err();
    /// assert!(matches!(err, tram::Error::Plugin { .. }));
    /// assert!(err.to_string().contains("libno_such_plugin.so") && err.to_string().contains("no such file"));
    /// assert_eq!(registry.plugins().count(), 0);
    /// ```
    pub fn load_plugin(&mut self, path: impl AsRef<Path>) -> Result<Vec<String>> {
        let given = path.as_ref();
        let shown = given.display().to_string();
        let err = |reason: String| Error::Plugin { path: shown.clone(), reason };
        let canonical = given.canonicalize().map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "no such file (build the plugin crate with `cargo build --release -p <crate>`; the library is under target/release/)".into()
            } else {
                e.to_string()
            })
        })?;
        if !canonical.is_file() {
            return Err(err("not a file".into()));
        }
        // However it is named (a symlink, a relative path, a directory entry, TRAM_PLUGINS and
        // --plugin and a config's `plugins` at once), a library is loaded once.
        if self.plugins.iter().any(|l| l.path() == canonical) {
            return Ok(Vec::new());
        }
        let origin = canonical.display().to_string();
        // The loader does not check the file against its headers: a truncated library would
        // crash the process with SIGBUS.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        crate::plugin::elf::check(&canonical).map_err(|reason| Error::Plugin { path: origin.clone(), reason })?;
        // SAFETY: loading a library runs its initialisers; a tram plugin's are Rust's own.
        // What runs next is checked first (see `checked_register_fn`).
        let library = unsafe { open_library(&canonical) }
            .map_err(|e| Error::Plugin { path: origin.clone(), reason: format!("cannot be loaded as a shared library: {e}") })?;
        // SAFETY: `library` is moved into the `PluginLibrary` below, which every entry built
        // from `register`'s registrations keeps alive (and it is opened RTLD_NODELETE).
        let register = unsafe { checked_register_fn(&library, &origin)? };
        let library = Arc::new(PluginLibrary::new(library, canonical));

        let mut collector = Collector::default();
        register(&mut collector)
            .map_err(|e| Error::Plugin { path: origin.clone(), reason: format!("its register function failed: {e}") })?;

        let mut next = self.clone();
        let mut names = Vec::new();
        for e in collector.entries {
            names.push(e.name.clone());
            let build = PluginBuild { inner: e.build, library: library.clone() };
            let resolve = e.resolve.map(|inner| PluginResolve { inner, _library: library.clone() });
            next.register(Entry {
                kind: e.kind,
                name: e.name,
                summary: e.summary,
                params: e.params,
                origin: origin.clone(),
                build: Arc::new(move |v: &Value| build.build(v)),
                resolve: resolve.map(|r| Arc::new(move |v: &Value| r.resolve(v)) as Arc<crate::compose::registry::ResolveFn>),
            })?;
        }
        for a in collector.aliases {
            names.push(a.name.clone());
            next.alias_origins.insert(a.name.clone(), origin.clone());
            next.register_alias(a)?;
        }
        next.plugins.push(library);
        *self = next;
        Ok(names)
    }

    /// [`Registry::load_plugin`] for each path in turn, where a directory stands for every
    /// shared library in it ([`plugin_files`]); returns every name registered. Stops at the
    /// first error, keeping what was loaded before it.
    pub fn load_plugins<P: AsRef<Path>>(&mut self, paths: impl IntoIterator<Item = P>) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for p in paths {
            for file in plugin_files(p.as_ref())? {
                names.extend(self.load_plugin(file)?);
            }
        }
        Ok(names)
    }

    /// Load every plugin listed in the environment variable [`PLUGINS_ENV`] (`TRAM_PLUGINS`):
    /// see [`Registry::load_plugin_list`].
    pub fn load_env_plugins(&mut self) -> Result<Vec<String>> {
        match std::env::var_os(PLUGINS_ENV) {
            Some(list) => self.load_plugin_list(&list),
            None => Ok(Vec::new()),
        }
    }

    /// [`Registry::load_plugins`], but a plugin that does not load is recorded as refused
    /// ([`Registry::refused_plugins`]) and returned, and the others still load. For programs
    /// where a broken plugin must not stop commands that do not use it (`tram explain adam`
    /// with a stale library in `TRAM_PLUGINS`); a composition naming a component that is not
    /// registered then lists the refused plugins in its error.
    pub fn load_plugins_lenient<P: AsRef<Path>>(&mut self, paths: impl IntoIterator<Item = P>) -> Vec<Error> {
        let mut errors = Vec::new();
        for p in paths {
            let files = match plugin_files(p.as_ref()) {
                Ok(f) => f,
                Err(e) => {
                    self.refused.push((p.as_ref().display().to_string(), e.to_string()));
                    errors.push(e);
                    continue;
                }
            };
            for file in files {
                if let Err(e) = self.load_plugin(&file) {
                    self.refused.push((file.display().to_string(), e.to_string()));
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// [`Registry::load_env_plugins`] with [`Registry::load_plugins_lenient`]'s handling of a
    /// plugin that does not load.
    pub fn load_env_plugins_lenient(&mut self) -> Vec<Error> {
        match std::env::var_os(PLUGINS_ENV) {
            Some(list) => self.load_plugins_lenient(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect::<Vec<_>>()),
            None => Vec::new(),
        }
    }

    /// Load the plugins of a path list separated like `PATH` (the value of `TRAM_PLUGINS`):
    /// each entry is a plugin library or a directory of them ([`Registry::load_plugins`]);
    /// empty entries are skipped.
    pub fn load_plugin_list(&mut self, list: &std::ffi::OsStr) -> Result<Vec<String>> {
        self.load_plugins(std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()))
    }
}

/// What a plugin library declares, read by [`inspect`] without registering anything.
#[derive(Clone, Debug)]
pub struct PluginIdentity {
    /// The library's canonical path.
    pub path: PathBuf,
    /// The plugin ABI version of its declaration ([`ABI_VERSION`] for this build).
    pub abi_version: u32,
    /// Its fingerprint; `None` when its ABI version or declaration size differs from this
    /// build's (the fingerprint is then not at a known place).
    pub fingerprint: Option<Fingerprint>,
}

impl PluginIdentity {
    /// The plugin's fingerprint fields beside this program's: `(field, plugin, host)`, the
    /// plugin ABI version first; the plugin's value is `?` where it could not be read.
    pub fn compare(&self) -> Vec<(&'static str, String, String)> {
        let host = Fingerprint::CURRENT;
        let mut rows = vec![("plugin ABI version", self.abi_version.to_string(), ABI_VERSION.to_string())];
        let plugin: Vec<String> = match &self.fingerprint {
            Some(f) => f.fields().iter().map(|(_, v)| v.to_string()).collect(),
            None => vec!["?".into(); host.fields().len()],
        };
        rows.extend(host.fields().into_iter().zip(plugin).map(|((name, h), p)| (name, p, h.into_owned())));
        rows
    }
    /// Whether this program would load it (every field equal).
    pub fn matches(&self) -> bool {
        self.compare().iter().all(|(_, p, h)| p == h)
    }
}

/// Reads the declaration of the plugin library at `path` (its header and fingerprint) without
/// running its registration function, for `tram plugin check`: a file that is not a tram plugin
/// is an [`Error::Plugin`]; a plugin built differently is *not* an error here (compare with
/// [`PluginIdentity::compare`]).
pub fn inspect(path: impl AsRef<Path>) -> Result<PluginIdentity> {
    let given = path.as_ref();
    let err = |reason: String| Error::Plugin { path: given.display().to_string(), reason };
    let canonical = given.canonicalize().map_err(|e| err(e.to_string()))?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    crate::plugin::elf::check(&canonical).map_err(|reason| Error::Plugin { path: canonical.display().to_string(), reason })?;
    let shown = canonical.display().to_string();
    // SAFETY: loading a library runs its initialisers (a tram plugin's are Rust's own); nothing
    // else in it is called: `read_declaration` only reads its declaration's plain-data fields.
    let library = unsafe { open_library(&canonical) }
        .map_err(|e| Error::Plugin { path: shown.clone(), reason: format!("cannot be loaded as a shared library: {e}") })?;
    // SAFETY: `library` is loaded for the duration of the call.
    let (header, fingerprint) = unsafe { read_declaration(&library, &shown)? };
    Ok(PluginIdentity { path: canonical, abi_version: header.abi_version, fingerprint })
}

/// The plugin libraries `path` stands for: a directory stands for every file in it (not in
/// its sub-directories) whose name ends in this platform's shared-library extension
/// (`.so` on Linux, `.dylib` on macOS, `.dll` on Windows), in name order; anything else for
/// itself. A directory that cannot be read is an [`Error::Plugin`] naming it.
pub fn plugin_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let err =
        |e: std::io::Error| Error::Plugin { path: path.display().to_string(), reason: format!("cannot read the plugin directory: {e}") };
    let ext = std::env::consts::DLL_EXTENSION;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(err)? {
        let p = entry.map_err(err)?.path();
        if p.extension().is_some_and(|e| e == ext) && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Wrappers need a library handle; any shared library will do for their host-side logic.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn some_library() -> Arc<PluginLibrary> {
    // SAFETY: the C library is already loaded into every Linux process; opening it runs nothing.
    let library = unsafe { libloading::Library::new("libc.so.6") }.unwrap();
    Arc::new(PluginLibrary::new(library, "libc.so.6".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_a_plugin_error_naming_the_path() {
        let err = Registry::empty().load_plugin("/no/such/libplugin.so").unwrap_err();
        assert!(matches!(err, Error::Plugin { .. }), "{err:?}");
        assert!(err.to_string().contains("/no/such/libplugin.so") && err.to_string().contains("no such file"), "{err}");
    }
}
