//! The plugin ABI: what a plugin's `cdylib` exports (a [`PluginDeclaration`] holding a build
//! [`Fingerprint`] and its registration function) and how the loader reads it back before
//! calling anything in the library. See the [`plugin`](super) module for why.

use crate::components::distance::Reduction;
use crate::components::model::{Batch, Logits, Mode, Params, Snapshot};
use crate::components::neighborhood::{Ascent, RadiusSource};
use crate::components::region::TargetCtx;
use crate::compose::registry::{Alias, Component, Entry, ParamDoc};
use crate::error::{Error, Result};
use serde_json::Value;
use std::borrow::Cow;

/// The first eight bytes of every declaration.
pub const MAGIC: [u8; 8] = *b"TRAMPLUG";
/// Version of the declaration layout; bumped whenever [`PluginDeclaration`] changes.
pub const ABI_VERSION: u32 = 1;
/// The symbol [`export_plugin!`](crate::export_plugin) defines.
pub const DECLARATION_SYMBOL: &str = "TRAM_PLUGIN_DECLARATION";
/// `rustc --version` of the compiler that built this framework.
pub const RUSTC_VERSION: &str = env!("TRAM_RUSTC_VERSION");
/// Version of the `tram` crate.
pub const TRAM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Digest of the framework's code: the code tokens of every source file (comments, doc
/// comments, formatting, `#[cfg(test)]` modules and the `testing` module excluded), so two
/// builds from different code differ and an edit to a comment changes nothing
/// (`framework/build/digest.rs`).
pub const TRAM_SOURCE_DIGEST: &str = env!("TRAM_SOURCE_DIGEST");
/// The candle version this framework is built against (pinned exactly in the workspace).
pub const CANDLE_VERSION: &str = "0.11.1";
/// Every framework feature that changes what crosses the plugin boundary, and whether it is
/// enabled in this build. `testing` only adds code and is not listed.
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
    /// Digest of tram's code ([`TRAM_SOURCE_DIGEST`]).
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
            ("tram code digest", self.tram_source.as_str()),
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
                $crate::__private::catch_panics(|| $register(registrar))
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

/// The declaration of `library` as far as it can be read whatever built it: its header, and
/// its fingerprint when the header has this build's magic, ABI version and size.
///
/// # Safety
/// `library` must be loaded for the duration of the call.
pub(super) unsafe fn read_declaration(library: &libloading::Library, path: &str) -> Result<(PluginHeader, Option<Fingerprint>)> {
    let plugin_err = |reason: String| Error::Plugin { path: path.to_string(), reason };
    let symbol = format!("{DECLARATION_SYMBOL}\0");
    // SAFETY: the symbol is read as a plain address (a `*const PluginHeader`), not called or
    // dereferenced here; `library` is loaded for the duration of this call.
    let addr: *const PluginHeader = match unsafe { library.get::<*const PluginHeader>(symbol.as_bytes()) } {
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
    // SAFETY: `addr` is non-null and points at the exported static; the header's layout is fixed
    // (repr(C), plain integers, no invalid bit patterns), so it reads the same from any build,
    // and `read_unaligned` makes no assumption about alignment.
    let header = unsafe { std::ptr::read_unaligned(addr) };
    if header.magic != MAGIC {
        return Err(plugin_err(format!("not a tram plugin: `{DECLARATION_SYMBOL}` does not start with the tram magic bytes")));
    }
    if header.abi_version != ABI_VERSION || header.size != std::mem::size_of::<PluginDeclaration>() as u32 {
        return Ok((header, None));
    }
    // SAFETY: same magic, ABI version and size, so the static is a `PluginDeclaration` of this
    // layout: the fingerprint is a repr(C) run of fixed-size byte arrays (any bytes are valid)
    // at a known offset inside it; `addr_of!` takes its address without making a reference.
    let fingerprint: Fingerprint =
        unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*(addr as *const PluginDeclaration)).fingerprint)) };
    Ok((header, Some(fingerprint)))
}

/// Reads and checks the declaration of `library`, then returns its registration function.
///
/// # Safety
/// `library` must stay loaded while the returned function is used.
pub(super) unsafe fn checked_register_fn(library: &libloading::Library, path: &str) -> Result<RegisterFn> {
    let mismatch = |field: &str, plugin: String, host: String| Error::PluginMismatch {
        path: path.to_string(),
        field: field.to_string(),
        plugin,
        host,
    };
    // SAFETY: forwarded to the caller (`library` is loaded).
    let (header, fingerprint) = unsafe { read_declaration(library, path)? };
    if header.abi_version != ABI_VERSION {
        return Err(mismatch("plugin ABI version", header.abi_version.to_string(), ABI_VERSION.to_string()));
    }
    let size = std::mem::size_of::<PluginDeclaration>() as u32;
    if header.size != size {
        return Err(mismatch("declaration size", header.size.to_string(), size.to_string()));
    }
    let fingerprint = fingerprint.expect("read with this build's ABI version and size");
    if let Some((field, plugin, host)) = fingerprint.mismatch(&Fingerprint::CURRENT) {
        return Err(mismatch(field, plugin, host));
    }
    let symbol = format!("{DECLARATION_SYMBOL}\0");
    // SAFETY: `read_declaration` just read this symbol from the loaded `library`.
    let addr: *const PluginDeclaration = unsafe {
        *library
            .get::<*const PluginDeclaration>(symbol.as_bytes())
            .map_err(|e| Error::Plugin { path: path.to_string(), reason: e.to_string() })?
    };
    // SAFETY: the fingerprint matched, so the plugin was built by this compiler from this code
    // with these features: the `register` field is a valid `RegisterFn` with this program's ABI,
    // and the caller keeps `library` loaded while it is used.
    Ok(unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*addr).register)) })
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

    use crate::build_digest as digest;

    const CODE: &str = "/// Adds one.\npub fn f(x: u32) -> u32 {\n    x + 1 // the step\n}\n";

    #[test]
    fn comments_doc_comments_and_formatting_do_not_change_the_code_digest() {
        let d = |src: &str| digest::code_digest([("src/a.rs", src)]);
        let reworded = "/// Adds 1 to x.\n/* a block\n /* nested */ comment */\npub fn f( x : u32 )->u32{ x+1 }\n";
        assert_eq!(d(CODE), d(reworded));
        let with_tests =
            format!("{CODE}#[cfg(test)]\nmod tests {{\n    #[test]\n    fn t() {{ assert_eq!(super::f(1), 2); let _ = \"}}\"; }}\n}}\n");
        assert_eq!(d(CODE), d(&with_tests), "unit-test modules are not part of the digest");
    }

    #[test]
    fn any_change_to_code_changes_the_code_digest() {
        let d = |src: &str| digest::code_digest([("src/a.rs", src)]);
        for changed in [
            CODE.replace("x + 1", "x + 2"),
            CODE.replace("u32 {", "u64 {"),
            CODE.replace("pub fn f", "pub fn g"),
            format!("{CODE}pub struct S(u8);\n"),
        ] {
            assert_ne!(d(CODE), d(&changed), "{changed}");
        }
        assert_ne!(digest::code_digest([("src/a.rs", CODE)]), digest::code_digest([("src/b.rs", CODE)]));
        // Literals are tokens: a comment marker or a brace inside a string is code.
        assert_ne!(d("const S: &str = \"a // b\";"), d("const S: &str = \"a \";"));
        assert_eq!(digest::code_tokens("let c = '\"'; let s = r#\"{\"#; 'a: loop {}").len(), 16);
    }

    #[test]
    fn the_recorded_code_digest_is_the_one_of_this_source_tree() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut stack = vec![root.join("src")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"), std::fs::read_to_string(f).unwrap()))
            .filter(|(rel, _)| !rel.starts_with("src/testing/"))
            .collect();
        let h = digest::code_digest(sources.iter().map(|(p, s)| (p.as_str(), s.as_str())));
        assert_eq!(format!("{h:016x}"), TRAM_SOURCE_DIGEST);
    }

    #[test]
    fn a_panicking_registration_becomes_an_error() {
        let err = catch_panics(|| panic!("boom")).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
