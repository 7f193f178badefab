//! Run-time plugins: components loaded from a `cdylib` with [`Registry::load_plugin`].
//!
//! A plugin crate exports one [`PluginDeclaration`] through [`export_plugin!`](crate::export_plugin)
//! (the "Plugins in Rust" declaration pattern): a `#[no_mangle]` static holding a build
//! [`Fingerprint`] and the crate's registration function.
//!
//! ```text
//! pub fn register(r: &mut dyn tram::plugin::Registrar) -> tram::Result<()> {
//!     r.register(tram::Entry::new(tram::Kind::Distance, "renyi", "Rényi divergence", docs(), build))
//! }
//! tram::export_plugin!(register);
//! ```
//!
//! # Why a fingerprint
//!
//! Rust has no stable ABI: the host and the plugin exchange trait objects, `String`s,
//! `serde_json::Value`s and candle tensors, which is sound only when both were compiled by the
//! same compiler from the same sources. The loader reads the declaration's `#[repr(C)]` header
//! (magic, ABI version, size) and fingerprint (fixed-size, NUL-padded strings: rustc version,
//! tram version and source digest, candle version, framework features, a digest of the sizes
//! of the types that cross the boundary) *before* calling anything in the library, and refuses
//! any difference with [`Error::PluginMismatch`] naming the field and both values.
//!
//! # What else the loader guarantees
//!
//! - The [`libloading::Library`] is kept alive by the registry, by every [`Entry`] build closure
//!   it registered and by every component built from those, so it outlives every object it made
//!   (on Unix it is also opened `RTLD_NODELETE`: threads its copy of candle started may outlive
//!   all of those, so its code is never unmapped).
//! - Built components are wrapped in delegating wrappers. A plugin links its *own copy* of
//!   candle, whose tensor ids come from a counter separate from the host's; an autograd graph
//!   mixing tensors made by both could mix up gradients. The wrappers therefore re-label every
//!   tensor a plugin returns in the host's id space, and a plugin [`Distance`] is differentiated
//!   inside the plugin ([`Distance::distance_with_grads`]) and re-attached to the host graph by
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

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod elf;

use crate::components::base::BaseOptimizer;
use crate::components::distance::{Distance, Reduction};
use crate::components::model::{Batch, Logits, Mode, Params, Snapshot};
use crate::components::neighborhood::{Ascent, Neighborhood, RadiusSource};
use crate::components::region::{TargetCtx, TrustRegion};
use crate::compose::registry::{Alias, BuildFn, Component, Entry, Kind, ParamDoc, Registry};
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde_json::Value;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first eight bytes of every declaration.
pub const MAGIC: [u8; 8] = *b"TRAMPLUG";
/// Version of the declaration layout; bumped whenever [`PluginDeclaration`] changes.
pub const ABI_VERSION: u32 = 1;
/// The symbol [`export_plugin!`](crate::export_plugin) defines.
pub const DECLARATION_SYMBOL: &str = "TRAM_PLUGIN_DECLARATION";
/// Environment variable with plugins to load: a path list, like `PATH`, of plugin libraries
/// and of directories, each of which loads every shared library in it (see [`plugin_files`]).
pub const PLUGINS_ENV: &str = "TRAM_PLUGINS";

/// `rustc --version` of the compiler that built this framework.
pub const RUSTC_VERSION: &str = env!("TRAM_RUSTC_VERSION");
/// Version of the `tram` crate.
pub const TRAM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Digest of the framework's source files (two builds from different sources differ).
pub const TRAM_SOURCE_DIGEST: &str = env!("TRAM_SOURCE_DIGEST");
/// The candle version this framework is built against (pinned exactly in the workspace).
pub const CANDLE_VERSION: &str = "0.11.1";
/// Every framework feature and whether it is enabled in this build.
pub const FEATURES: &[(&str, bool)] = &[("fingerprint-test", cfg!(feature = "fingerprint-test")), ("cuda", cfg!(feature = "cuda"))];

/// Capacity of a [`FixedStr`] in bytes (one is kept for the terminating NUL).
pub const FIELD_LEN: usize = 128;

/// A NUL-padded UTF-8 string of fixed size: readable whatever compiler built the plugin.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FixedStr {
    bytes: [u8; FIELD_LEN],
}

impl FixedStr {
    /// `s` padded with NULs; fails to compile (in a const) when longer than `FIELD_LEN - 1`.
    pub const fn new(s: &str) -> Self {
        let b = s.as_bytes();
        assert!(b.len() < FIELD_LEN, "fingerprint field too long");
        let mut bytes = [0u8; FIELD_LEN];
        let mut i = 0;
        while i < b.len() {
            bytes[i] = b[i];
            i += 1;
        }
        FixedStr { bytes }
    }

    /// The string up to its first NUL (invalid UTF-8 is replaced, never trusted).
    pub fn as_str(&self) -> Cow<'_, str> {
        let end = self.bytes.iter().position(|&b| b == 0).unwrap_or(FIELD_LEN);
        String::from_utf8_lossy(&self.bytes[..end])
    }
}

impl std::fmt::Debug for FixedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Everything a plugin must share with the program that loads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint {
    /// `rustc --version`.
    pub rustc: FixedStr,
    /// tram version.
    pub tram: FixedStr,
    /// Digest of tram's sources.
    pub tram_source: FixedStr,
    /// candle version.
    pub candle: FixedStr,
    /// Enabled framework features, comma separated.
    pub features: FixedStr,
    /// Digest of the size and alignment of the types exchanged with plugins (catches
    /// dependencies built with other versions or features, e.g. serde_json's `preserve_order`).
    pub layout: FixedStr,
}

macro_rules! layouts {
    ($($t:ty),* $(,)?) => { &[$((std::mem::size_of::<$t>(), std::mem::align_of::<$t>())),*] };
}

/// Size and alignment of every type that crosses the plugin boundary.
const LAYOUTS: &[(usize, usize)] = layouts!(
    Value,
    serde_json::Map<String, Value>,
    candle_core::Error,
    candle_core::Device,
    candle_core::DType,
    candle_core::Shape,
    candle_core::Layout,
    candle_core::Storage,
    candle_core::CpuStorage,
    candle_core::Tensor,
    candle_core::Var,
    Error,
    Component,
    Entry,
    Alias,
    ParamDoc,
    Logits,
    Batch,
    Params,
    Snapshot,
    Mode,
    Reduction,
    Ascent,
    RadiusSource,
    TargetCtx<'static>,
);

const fn layout_field() -> FixedStr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < LAYOUTS.len() {
        let words = [LAYOUTS[i].0 as u64, LAYOUTS[i].1 as u64];
        let mut w = 0;
        while w < 2 {
            let mut k = 0;
            while k < 8 {
                h ^= (words[w] >> (8 * k)) & 0xff;
                h = h.wrapping_mul(0x0100_0000_01b3);
                k += 1;
            }
            w += 1;
        }
        i += 1;
    }
    let mut bytes = [0u8; FIELD_LEN];
    let hex = b"0123456789abcdef";
    let mut d = 0;
    while d < 16 {
        bytes[d] = hex[((h >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    FixedStr { bytes }
}

const fn features_field() -> FixedStr {
    let mut bytes = [0u8; FIELD_LEN];
    let mut n = 0;
    let mut i = 0;
    while i < FEATURES.len() {
        if FEATURES[i].1 {
            if n > 0 {
                bytes[n] = b',';
                n += 1;
            }
            let b = FEATURES[i].0.as_bytes();
            let mut j = 0;
            while j < b.len() {
                bytes[n] = b[j];
                n += 1;
                j += 1;
            }
        }
        i += 1;
    }
    assert!(n < FIELD_LEN, "feature list too long");
    FixedStr { bytes }
}

impl Fingerprint {
    /// The fingerprint of this build.
    pub const CURRENT: Fingerprint = Fingerprint {
        rustc: FixedStr::new(RUSTC_VERSION),
        tram: FixedStr::new(TRAM_VERSION),
        tram_source: FixedStr::new(TRAM_SOURCE_DIGEST),
        candle: FixedStr::new(CANDLE_VERSION),
        features: features_field(),
        layout: layout_field(),
    };

    /// `(field name, value)` for every field, in check order.
    pub fn fields(&self) -> [(&'static str, Cow<'_, str>); 6] {
        let features = match self.features.as_str() {
            f if f.is_empty() => Cow::Borrowed("(none)"),
            f => f,
        };
        [
            ("rustc version", self.rustc.as_str()),
            ("tram version", self.tram.as_str()),
            ("tram source digest", self.tram_source.as_str()),
            ("candle version", self.candle.as_str()),
            ("framework features", features),
            ("type layout digest", self.layout.as_str()),
        ]
    }

    /// The first field where `self` (a plugin's) differs from `host`: `(field, plugin, host)`.
    pub fn mismatch(&self, host: &Fingerprint) -> Option<(&'static str, String, String)> {
        self.fields()
            .into_iter()
            .zip(host.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| (name, a.into_owned(), b.into_owned()))
    }
}

/// The part of a declaration whose layout never changes: checked first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PluginHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<PluginDeclaration>()`.
    pub size: u32,
}

/// The registration function of a plugin. Called only after the fingerprint matched.
pub type RegisterFn = fn(&mut dyn Registrar) -> Result<()>;

/// What a plugin exports (as the static [`DECLARATION_SYMBOL`]): write it with
/// [`export_plugin!`](crate::export_plugin).
#[repr(C)]
pub struct PluginDeclaration {
    /// Magic, ABI version and size.
    pub header: PluginHeader,
    /// How the plugin was built.
    pub fingerprint: Fingerprint,
    /// Its registration function.
    pub register: RegisterFn,
}

impl PluginDeclaration {
    /// A declaration for this build with `register` as the registration function.
    pub const fn new(register: RegisterFn) -> Self {
        PluginDeclaration {
            header: PluginHeader { magic: MAGIC, abi_version: ABI_VERSION, size: std::mem::size_of::<PluginDeclaration>() as u32 },
            fingerprint: Fingerprint::CURRENT,
            register,
        }
    }
}

/// Export a plugin's registration function `fn(&mut dyn Registrar) -> tram::Result<()>` from
/// a `cdylib`. Use once per crate.
///
/// ```text
/// tram::export_plugin!(register);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        #[doc(hidden)]
        #[no_mangle]
        pub static TRAM_PLUGIN_DECLARATION: $crate::plugin::PluginDeclaration = {
            fn __tram_plugin_register(registrar: &mut dyn $crate::plugin::Registrar) -> $crate::Result<()> {
                $crate::plugin::catch_panics(|| $register(registrar))
            }
            $crate::plugin::PluginDeclaration::new(__tram_plugin_register)
        };
    };
}

/// Runs `f`, turning a panic into an error (used by [`export_plugin!`](crate::export_plugin)
/// so that a panic never unwinds out of a plugin).
pub fn catch_panics(f: impl FnOnce() -> Result<()>) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(Error::Model(format!("panicked: {msg}")))
    })
}

/// Where a plugin's registration function puts its components and aliases.
pub trait Registrar {
    /// Add a component (its `origin` is set by the loader).
    fn register(&mut self, entry: Entry) -> Result<()>;
    /// Add an alias.
    fn register_alias(&mut self, alias: Alias) -> Result<()>;
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

impl Entry {
    /// A component entry (origin "built-in"; the plugin loader sets it to the plugin's path).
    pub fn new(
        kind: Kind,
        name: impl Into<String>,
        summary: impl Into<String>,
        params: Vec<ParamDoc>,
        build: impl Fn(&Value) -> Result<Component> + Send + Sync + 'static,
    ) -> Entry {
        Entry { kind, name: name.into(), summary: summary.into(), params, origin: "built-in".into(), build: Arc::new(build) }
    }
}

/// A loaded plugin library. Dropped (unloaded) when its last user goes.
pub struct PluginLibrary {
    // Never read: held so the code stays mapped.
    _library: libloading::Library,
    path: PathBuf,
}

impl PluginLibrary {
    /// The canonical path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginLibrary({})", self.path.display())
    }
}

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

/// Reads and checks the declaration of `library`, then returns its registration function.
///
/// # Safety
/// `library` must stay loaded while the returned function is used.
unsafe fn checked_register_fn(library: &libloading::Library, path: &str) -> Result<RegisterFn> {
    let plugin_err = |reason: String| Error::Plugin { path: path.to_string(), reason };
    let mismatch = |field: &str, plugin: String, host: String| Error::PluginMismatch {
        path: path.to_string(),
        field: field.to_string(),
        plugin,
        host,
    };
    let symbol = format!("{DECLARATION_SYMBOL}\0");
    let addr: *const PluginHeader = match library.get::<*const PluginHeader>(symbol.as_bytes()) {
        Ok(sym) => *sym,
        Err(_) => {
            return Err(plugin_err(format!(
                "not a tram plugin: the library exports no `{DECLARATION_SYMBOL}` (add `tram::export_plugin!(register);` to the crate and build it as a cdylib)"
            )))
        }
    };
    if addr.is_null() {
        return Err(plugin_err(format!("not a tram plugin: `{DECLARATION_SYMBOL}` is null")));
    }
    // The header's layout is fixed (repr(C), plain integers): safe to read from any build.
    let header = std::ptr::read_unaligned(addr);
    if header.magic != MAGIC {
        return Err(plugin_err(format!("not a tram plugin: `{DECLARATION_SYMBOL}` does not start with the tram magic bytes")));
    }
    if header.abi_version != ABI_VERSION {
        return Err(mismatch("plugin ABI version", header.abi_version.to_string(), ABI_VERSION.to_string()));
    }
    let size = std::mem::size_of::<PluginDeclaration>() as u32;
    if header.size != size {
        return Err(mismatch("declaration size", header.size.to_string(), size.to_string()));
    }
    // Same ABI version and size: the fingerprint fields are fixed-size byte arrays at known offsets.
    let fingerprint: Fingerprint = std::ptr::read_unaligned(std::ptr::addr_of!((*(addr as *const PluginDeclaration)).fingerprint));
    if let Some((field, plugin, host)) = fingerprint.mismatch(&Fingerprint::CURRENT) {
        return Err(mismatch(field, plugin, host));
    }
    // Built like this program: the function pointer is ours to call.
    Ok(std::ptr::read_unaligned(std::ptr::addr_of!((*(addr as *const PluginDeclaration)).register)))
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
        Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE).map(Into::into)
    }
    #[cfg(not(unix))]
    {
        libloading::Library::new(path)
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
        if self.plugins.iter().any(|l| l.path == canonical) {
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
        let register = unsafe { checked_register_fn(&library, &origin)? };
        let library = Arc::new(PluginLibrary { _library: library, path: canonical });

        let mut collector = Collector::default();
        register(&mut collector)
            .map_err(|e| Error::Plugin { path: origin.clone(), reason: format!("its register function failed: {e}") })?;

        let mut next = self.clone();
        let mut names = Vec::new();
        for e in collector.entries {
            names.push(e.name.clone());
            let build = PluginBuild { inner: e.build, library: library.clone() };
            next.register(Entry {
                kind: e.kind,
                name: e.name,
                summary: e.summary,
                params: e.params,
                origin: origin.clone(),
                build: Arc::new(move |v: &Value| build.build(v)),
            })?;
        }
        for a in collector.aliases {
            names.push(a.name.clone());
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

    /// Load the plugins of a path list separated like `PATH` (the value of `TRAM_PLUGINS`):
    /// each entry is a plugin library or a directory of them ([`Registry::load_plugins`]);
    /// empty entries are skipped.
    pub fn load_plugin_list(&mut self, list: &std::ffi::OsStr) -> Result<Vec<String>> {
        self.load_plugins(std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()))
    }

    /// The plugin libraries loaded into this registry.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginLibrary> {
        self.plugins.iter().map(|l| l.as_ref())
    }
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

/// A plugin's constructor with the library it lives in. `inner` is declared (so dropped) first.
struct PluginBuild {
    inner: Arc<BuildFn>,
    library: Arc<PluginLibrary>,
}

impl PluginBuild {
    fn build(&self, params: &Value) -> Result<Component> {
        let lib = &self.library;
        Ok(match (self.inner)(params).map_err(launder)? {
            Component::TrustRegion(inner) => Component::TrustRegion(Box::new(PluginTrustRegion { inner, library: lib.clone() })),
            Component::Distance(inner) => Component::Distance(Box::new(PluginDistance { inner, _library: lib.clone() })),
            Component::Neighborhood(inner) => Component::Neighborhood(Box::new(PluginNeighborhood { inner, _library: lib.clone() })),
            Component::Base(inner) => Component::Base(Box::new(PluginBase { inner, _library: lib.clone() })),
        })
    }
}

/// An error from plugin code, rebuilt from plain data (candle and io errors may hold boxed
/// trait objects whose code lives in the library).
fn launder(e: Error) -> Error {
    match e {
        Error::Candle(c) => Error::Candle(candle_core::Error::Msg(c.to_string())),
        Error::Io { context, source } => Error::Io { context, source: std::io::Error::new(source.kind(), source.to_string()) },
        other => other,
    }
}

/// A tensor made by plugin code, re-labelled with a tensor id of this program's candle (a
/// zero-copy view; any graph is cut). A plugin's candle numbers tensors from its own counter,
/// and two tensors with one id in one graph would share a gradient slot.
fn adopt(t: &Tensor) -> Result<Tensor> {
    Ok(if t.track_op() { t.detach() } else { t.unsqueeze(0)?.squeeze(0)? })
}

fn adopt_all(v: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    v.into_iter().map(|(k, t)| Ok((k, adopt(&t)?))).collect()
}

/// A plugin distance. Without a graph in its inputs it is called directly; with one, it is
/// differentiated inside the plugin and re-attached with `D + Σ g_t·(t − t̄) + Σ g_c·(c − c̄)`
/// (bars: detached): the value is exactly `D` and the gradient exactly `(g_t, g_c)`.
struct PluginDistance {
    inner: Box<dyn Distance>,
    _library: Arc<PluginLibrary>,
}

impl Distance for PluginDistance {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn distance(&self, target: &Tensor, current: &Tensor, reduction: Reduction, examples: usize) -> Result<Tensor> {
        if !target.track_op() && !current.track_op() {
            return adopt(&self.inner.distance(target, current, reduction, examples).map_err(launder)?);
        }
        let (d, g_t, g_c) = self.inner.distance_with_grads(target, current, reduction, examples).map_err(launder)?;
        let d = adopt(&d)?;
        let mut lin: Option<Tensor> = None;
        for (x, g) in [(target, g_t), (current, g_c)] {
            if x.track_op() {
                let term = x.mul(&adopt(&g)?)?.sum_all()?;
                lin = Some(match lin {
                    Some(l) => l.add(&term)?,
                    None => term,
                });
            }
        }
        let lin = lin.expect("one input tracks a graph");
        Ok(lin.sub(&lin.detach())?.reshape(d.shape())?.add(&d)?)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin trust region.
struct PluginTrustRegion {
    inner: Box<dyn TrustRegion>,
    library: Arc<PluginLibrary>,
}

impl TrustRegion for PluginTrustRegion {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn init(&mut self, params: &Params) -> Result<()> {
        self.inner.init(params).map_err(launder)
    }
    fn target(&mut self, ctx: &mut TargetCtx<'_>, grad: bool) -> Result<Logits> {
        if grad {
            return Err(Error::Plugin {
                path: self.library.path.display().to_string(),
                reason: format!(
                    "trust region `{}` is a run-time plugin and cannot be differentiated through (through_target=true): its graph would mix two copies of candle; link the crate and register it with `register(&mut registry)` instead",
                    self.inner.name()
                ),
            });
        }
        let l = self.inner.target(ctx, false).map_err(launder)?;
        Ok(Logits { logits: adopt(&l.logits)?, targets: adopt(&l.targets)? })
    }
    fn tracks_current(&self) -> bool {
        self.inner.tracks_current()
    }
    fn noised_embeds(&mut self, ctx: &mut TargetCtx<'_>, embeds: &Tensor) -> Result<Option<Tensor>> {
        let Some(noised) = self.inner.noised_embeds(ctx, &embeds.detach()).map_err(launder)? else { return Ok(None) };
        let noised = adopt(&noised)?;
        // Value exactly the plugin's; gradient to the clean embeddings unchanged.
        Ok(Some(if embeds.track_op() { noised.add(&embeds.sub(&embeds.detach())?)? } else { noised }))
    }
    fn perturbs_input(&self) -> bool {
        self.inner.perturbs_input()
    }
    fn before_update(&mut self, params: &Params, exact_copy: Option<&Snapshot>) -> Result<()> {
        self.inner.before_update(params, exact_copy).map_err(launder)
    }
    fn after_update(&mut self, params: &Params) -> Result<()> {
        self.inner.after_update(params).map_err(launder)
    }
    fn state(&self, params: &Params) -> Vec<(String, Tensor)> {
        let state = self.inner.state(params);
        adopt_all(state.clone()).unwrap_or(state)
    }
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()> {
        self.inner.load_state(params, state).map_err(launder)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin neighborhood.
struct PluginNeighborhood {
    inner: Box<dyn Neighborhood>,
    _library: Arc<PluginLibrary>,
}

impl Neighborhood for PluginNeighborhood {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn rho(&self) -> f64 {
        self.inner.rho()
    }
    fn radius_source(&self) -> RadiusSource {
        self.inner.radius_source()
    }
    fn sized_by_region(&mut self, sized: bool) {
        self.inner.sized_by_region(sized)
    }
    fn perturbation(&self, params: &Params, grads: &[Tensor], radius: f64) -> Result<Ascent> {
        Ok(match self.inner.perturbation(params, grads, radius).map_err(launder)? {
            Ascent::Step(eps) => Ascent::Step(eps.iter().map(adopt).collect::<Result<_>>()?),
            Ascent::None => Ascent::None,
        })
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A plugin base optimizer.
struct PluginBase {
    inner: Box<dyn BaseOptimizer>,
    _library: Arc<PluginLibrary>,
}

impl BaseOptimizer for PluginBase {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn update(&mut self, params: &Params, grads: &[Tensor], lr: f64) -> Result<()> {
        self.inner.update(params, grads, lr).map_err(launder)
    }
    fn state(&self, params: &Params) -> Vec<(String, Tensor)> {
        let state = self.inner.state(params);
        adopt_all(state.clone()).unwrap_or(state)
    }
    fn load_state(&mut self, params: &Params, state: &crate::components::state::StateReader<'_>) -> Result<()> {
        self.inner.load_state(params, state).map_err(launder)
    }
    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_strings_round_trip_and_stop_at_the_first_nul() {
        assert_eq!(FixedStr::new("rustc 1.80.0").as_str(), "rustc 1.80.0");
        assert_eq!(FixedStr::new("").as_str(), "");
    }

    #[test]
    fn the_current_fingerprint_names_this_build() {
        let f = Fingerprint::CURRENT;
        assert!(f.rustc.as_str().starts_with("rustc "), "{:?}", f.rustc);
        assert_eq!(f.tram.as_str(), env!("CARGO_PKG_VERSION"));
        assert_eq!(f.candle.as_str(), CANDLE_VERSION);
        assert_eq!(f.layout.as_str().len(), 16);
        assert!(f.mismatch(&Fingerprint::CURRENT).is_none());
        let expected = match (cfg!(feature = "fingerprint-test"), cfg!(feature = "cuda")) {
            (false, false) => "(none)",
            (true, false) => "fingerprint-test",
            (false, true) => "cuda",
            (true, true) => "fingerprint-test,cuda",
        };
        assert_eq!(f.fields()[4].1, expected);
    }

    #[test]
    fn the_fingerprint_records_whether_candle_was_built_with_cuda() {
        // A plugin and a host that disagree on candle's CUDA support lay tensors out differently:
        // the `cuda` feature must be on exactly when candle's is, so the loader can refuse it.
        let cuda = FEATURES.iter().find(|(name, _)| *name == "cuda").expect("`cuda` in FEATURES");
        assert_eq!(
            cuda.1,
            candle_core::utils::cuda_is_available(),
            "candle-core/cuda is enabled without tram/cuda (or the reverse): enable CUDA through `tram/cuda`"
        );
        let cuda_in_fingerprint = Fingerprint::CURRENT.features.as_str().split(',').any(|f| f == "cuda");
        assert_eq!(cuda_in_fingerprint, candle_core::utils::cuda_is_available());
    }

    #[test]
    fn a_mismatch_names_the_first_differing_field_and_both_values() {
        let mut other = Fingerprint::CURRENT;
        other.candle = FixedStr::new("0.9.0");
        other.features = FixedStr::new("cuda");
        let (field, plugin, host) = other.mismatch(&Fingerprint::CURRENT).unwrap();
        assert_eq!((field, plugin.as_str(), host.as_str()), ("candle version", "0.9.0", CANDLE_VERSION));
    }

    #[test]
    fn the_pinned_candle_version_is_the_one_in_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let at = lock.find("name = \"candle-core\"\nversion = \"").expect("candle-core in Cargo.lock");
        let version = lock[at..].split('"').nth(3).unwrap();
        assert_eq!(version, CANDLE_VERSION, "update tram::plugin::CANDLE_VERSION with the candle-core pin");
    }

    #[test]
    fn a_missing_file_is_a_plugin_error_naming_the_path() {
        let err = Registry::empty().load_plugin("/no/such/libplugin.so").unwrap_err();
        assert!(matches!(err, Error::Plugin { .. }), "{err:?}");
        assert!(err.to_string().contains("/no/such/libplugin.so") && err.to_string().contains("no such file"), "{err}");
    }

    /// Wrappers need a library handle; any shared library will do for their host-side logic.
    #[cfg(target_os = "linux")]
    fn some_library() -> Arc<PluginLibrary> {
        let library = unsafe { libloading::Library::new("libc.so.6") }.unwrap();
        Arc::new(PluginLibrary { _library: library, path: "libc.so.6".into() })
    }

    #[cfg(target_os = "linux")]
    mod wrappers {
        use super::*;
        use crate::components::model::{Model, Weights};
        use crate::components::region::NoiseSlot;
        use crate::noise::SeededNoise;
        use candle_core::{Device, Var};

        /// Doubles the input embeddings; its target is the embeddings themselves.
        struct Doubling;
        impl TrustRegion for Doubling {
            fn name(&self) -> &str {
                "doubling"
            }
            fn init(&mut self, _: &Params) -> Result<()> {
                Ok(())
            }
            fn target(&mut self, ctx: &mut TargetCtx<'_>, _grad: bool) -> Result<Logits> {
                Ok(Logits { logits: ctx.batch.inputs.clone(), targets: ctx.batch.targets.clone() })
            }
            fn tracks_current(&self) -> bool {
                false
            }
            fn noised_embeds(&mut self, _: &mut TargetCtx<'_>, embeds: &Tensor) -> Result<Option<Tensor>> {
                Ok(Some(embeds.affine(2.0, 0.0)?))
            }
            fn perturbs_input(&self) -> bool {
                true
            }
            fn state(&self, _: &Params) -> Vec<(String, Tensor)> {
                Vec::new()
            }
            fn load_state(&mut self, _: &Params, _: &crate::components::state::StateReader<'_>) -> Result<()> {
                Ok(())
            }
        }

        struct Identity(Params);
        impl Model for Identity {
            fn params(&self) -> &Params {
                &self.0
            }
            fn embed(&self, _: &dyn Weights, b: &Batch, _: Mode) -> Result<Tensor> {
                Ok(b.inputs.clone())
            }
            fn forward_embeds(&self, _: &dyn Weights, x: &Tensor, b: &Batch, _: Mode) -> Result<Logits> {
                Ok(Logits { logits: x.clone(), targets: b.targets.clone() })
            }
        }

        fn with_ctx<T>(f: impl FnOnce(&mut TargetCtx<'_>) -> T) -> T {
            let dev = Device::Cpu;
            let model = Identity(Params::new(Vec::new()).unwrap());
            let batch = Batch::new(Tensor::new(&[[1f32, 2.0]], &dev).unwrap(), Tensor::new(&[0u32], &dev).unwrap());
            let (mut source, mut sample) = (SeededNoise::new(0), None);
            let mut slot = NoiseSlot { source: &mut source, sample: &mut sample };
            let mut ctx = TargetCtx { model: &model, batch: &batch, mode: Mode::EVAL, noise: &mut slot };
            f(&mut ctx)
        }

        fn region() -> PluginTrustRegion {
            PluginTrustRegion { inner: Box::new(Doubling), library: some_library() }
        }

        #[test]
        fn a_plugin_target_is_relabelled_and_differentiating_through_it_is_refused() {
            let mut r = region();
            with_ctx(|ctx| {
                let t = r.target(ctx, false).unwrap();
                assert_ne!(t.logits.id(), ctx.batch.inputs.id(), "a fresh id of this program's candle");
                assert_eq!(t.logits.to_vec2::<f32>().unwrap(), [[1.0, 2.0]]);
                let err = r.target(ctx, true).unwrap_err().to_string();
                assert!(err.contains("through_target=true") && err.contains("doubling"), "{err}");
            });
        }

        #[test]
        fn plugin_noised_embeddings_keep_their_value_and_pass_the_gradient_through() {
            let mut r = region();
            let x = Var::new(&[[1f32, -3.0]], &Device::Cpu).unwrap();
            let noised = with_ctx(|ctx| r.noised_embeds(ctx, x.as_tensor()).unwrap().unwrap());
            assert_eq!(noised.to_vec2::<f32>().unwrap(), [[2.0, -6.0]]);
            let g = noised.sum_all().unwrap().backward().unwrap();
            assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[1.0, 1.0]]);
        }

        struct Half;
        impl Neighborhood for Half {
            fn name(&self) -> &str {
                "half"
            }
            fn rho(&self) -> f64 {
                0.5
            }
            fn radius_source(&self) -> RadiusSource {
                RadiusSource::Fixed
            }
            fn perturbation(&self, _: &Params, grads: &[Tensor], _: f64) -> Result<Ascent> {
                Ok(Ascent::Step(grads.to_vec()))
            }
        }

        #[test]
        fn plugin_ascent_steps_are_relabelled_and_unchanged() {
            let n = PluginNeighborhood { inner: Box::new(Half), _library: some_library() };
            let g = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
            let params = Params::new(Vec::new()).unwrap();
            let Ascent::Step(eps) = n.perturbation(&params, std::slice::from_ref(&g), 1.0).unwrap() else { panic!("no step") };
            assert_ne!(eps[0].id(), g.id());
            assert_eq!(eps[0].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
            assert_eq!((n.name(), n.rho(), n.radius_source()), ("half", 0.5, RadiusSource::Fixed));
        }
    }

    #[test]
    fn a_panicking_registration_becomes_an_error() {
        let err = catch_panics(|| panic!("boom")).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
