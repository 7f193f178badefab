//! The heap settings of a training process. glibc's malloc returns every freed block above its
//! mmap threshold (128 KiB at first, adapting up to 32 MiB) to the kernel, so a step's
//! activation and gradient buffers are mapped, page-faulted, zeroed by the kernel and unmapped
//! again on every step, and each unmapping interrupts every thread to flush its TLB. [`tune`]
//! keeps freed blocks below 32 MiB in the heap for reuse (the settings of `side-by-side
//! --tune-malloc`): a CPU training step of the benchmark's wide shape takes 12–14% less wall
//! time at the same peak RSS (bench/RESULTS.md). Other platforms and allocators: nothing.

/// The glibc settings [`tune`] applies: `(mallopt parameter, value, its GLIBC_TUNABLES name)`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const SETTINGS: [(libc::c_int, libc::c_int, &str); 3] = [
    (libc::M_MMAP_THRESHOLD, 32 << 20, "glibc.malloc.mmap_threshold"),
    (libc::M_TRIM_THRESHOLD, 1 << 30, "glibc.malloc.trim_threshold"),
    (libc::M_TOP_PAD, 64 << 20, "glibc.malloc.top_pad"),
];

/// What [`tune`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// The settings were applied.
    Applied,
    /// Left as they are: `TRAM_MALLOC=default`, or `GLIBC_TUNABLES` already sets malloc.
    UserSettings,
    /// Not glibc on Linux: nothing to tune.
    Unsupported,
}

/// Whether the environment asks to keep the allocator as it is: `TRAM_MALLOC=default`, or
/// malloc settings of the user's own in `GLIBC_TUNABLES`.
pub fn user_settings(tram_malloc: Option<&str>, glibc_tunables: Option<&str>) -> bool {
    tram_malloc == Some("default") || glibc_tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

/// Apply the settings (module docs) unless the environment says otherwise ([`user_settings`]).
/// Call it first thing in `main`, before the first allocation worth keeping.
pub fn tune() -> Tuning {
    let env = |k: &str| std::env::var(k).ok();
    if user_settings(env("TRAM_MALLOC").as_deref(), env("GLIBC_TUNABLES").as_deref()) {
        return Tuning::UserSettings;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    for (param, value, name) in SETTINGS {
        // SAFETY: mallopt only changes the allocator's parameters; it returns 0 on failure.
        if unsafe { libc::mallopt(param, value) } == 0 {
            tracing::warn!(setting = name, value, "could not set a glibc malloc parameter; allocation stays as it was");
            return Tuning::Unsupported;
        }
    }
    Tuning::Applied
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_own_settings_and_the_opt_out_are_kept() {
        assert!(!user_settings(None, None));
        assert!(user_settings(Some("default"), None));
        assert!(!user_settings(Some("tuned"), None));
        assert!(user_settings(None, Some("glibc.malloc.mmap_threshold=65536")));
        // Tunables of something else than malloc leave malloc to tram.
        assert!(!user_settings(None, Some("glibc.cpu.hwcaps=-AVX512F")));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_settings_and_a_freed_block_below_the_threshold_is_reused() {
        assert_eq!(apply(), Tuning::Applied);
        // A 4 MiB block, above glibc's default mmap threshold: freed into the heap now, so the
        // next one of the same size is carved from the same place.
        let a = vec![1u8; 4 << 20];
        let p = a.as_ptr() as usize;
        drop(a);
        let b = vec![2u8; 4 << 20];
        assert_eq!(b.as_ptr() as usize, p, "the freed 4 MiB block was not reused");
    }
}
