//! `tram list` / `tram explain` with run-time plugins from `--plugin` (repeatable, before or
//! after the subcommand) and `TRAM_PLUGINS`. The example plugin is built by the cargo running
//! these tests, in the same profile.

use std::path::Path;
use std::process::{Command, Output};

/// The example plugin `tram-renyi`, built once by the cargo running these tests (tram-tests).
fn plugin() -> &'static Path {
    tram_tests::example_plugin()
}

fn tram(args: &[&str], env_plugins: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tram"));
    cmd.args(args).env_remove("TRAM_PLUGINS").env("RUST_BACKTRACE", "0");
    if let Some(p) = env_plugins {
        cmd.env("TRAM_PLUGINS", p);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "tram failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn list_with_a_plugin_shows_its_distance_with_the_library_path_and_its_alias() {
    let p = plugin().to_str().unwrap();
    let out = stdout(&tram(&["list", "--plugin", p], None));
    let canonical = plugin().canonicalize().unwrap().display().to_string();
    let line = out.lines().find(|l| l.trim_start().starts_with("renyi ")).unwrap_or_else(|| panic!("no renyi in:\n{out}"));
    assert!(line.contains(&format!("[{canonical}]")), "{line}");
    assert!(out.contains("alpha") && out.contains("tram-noise-renyi"), "{out}");
    // Without the plugin there is no renyi.
    assert!(!stdout(&tram(&["list"], None)).contains("renyi"));
}

#[test]
fn explain_resolves_a_composition_using_the_plugin_given_before_or_after_the_subcommand() {
    let p = plugin().to_str().unwrap();
    for args in
        [["explain", "noise(distance=renyi)+ball+adam", "--plugin", p], ["--plugin", p, "explain", "noise(distance=renyi)+ball+adam"]]
    {
        let out = stdout(&tram(&args, None));
        assert!(out.starts_with("noise(distance=renyi)+ball+adam\n"), "{out}");
        assert!(out.contains("\"name\": \"renyi\""), "{out}");
    }
}

#[test]
fn the_environment_variable_loads_plugins_too() {
    let out = stdout(&tram(&["explain", "tram-noise-renyi+sgd"], Some(plugin())));
    assert!(out.starts_with("noise(distance=renyi)+ball+sgd\n"), "{out}");
}

#[test]
fn plugin_errors_are_reported_not_crashes() {
    let o = tram(&["explain", "noise(distance=renyi)+ball+adam"], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown distance `renyi`"));
    // A plugin that does not load is a warning, and `tram list` shows it refused with the reason.
    let o = tram(&["list", "--plugin", "/no/such/libplugin.so"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: plugin /no/such/libplugin.so: no such file"), "{err}");
    let out = stdout(&o);
    let refused = out.split("refused plugins").nth(1).unwrap_or_else(|| panic!("no refused section in:\n{out}"));
    assert!(refused.contains("/no/such/libplugin.so") && refused.contains("no such file"), "{out}");
}

/// One stale or broken plugin in `TRAM_PLUGINS` used to break every command, even
/// `tram explain adam`: now commands that do not use it run, with a warning, and one that
/// names its components is told which plugins were refused and why.
#[test]
fn a_plugin_that_does_not_load_is_a_warning_for_commands_that_do_not_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join(format!("libstale.{}", std::env::consts::DLL_EXTENSION));
    std::fs::write(&broken, b"not a shared library").unwrap();
    let list = std::env::join_paths([broken.as_path(), plugin()]).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tram"));
    let o = cmd.args(["explain", "adam"]).env("TRAM_PLUGINS", &list).env("RUST_BACKTRACE", "0").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: plugin") && String::from_utf8_lossy(&o.stderr).contains("libstale"));
    assert!(stdout(&o).starts_with("adam\n"));
    // The good plugin in the same list still loads.
    let o = Command::new(env!("CARGO_BIN_EXE_tram")).args(["explain", "tram-noise-renyi"]).env("TRAM_PLUGINS", &list).output().unwrap();
    assert!(stdout(&o).starts_with("noise(distance=renyi)+ball+adam\n"));
    // Only the broken one: naming a component it might define lists it with the reason.
    let o = tram(&["explain", "noise(distance=renyi)+ball+adam"], Some(&broken));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown distance `renyi`") && err.contains("could not be loaded") && err.contains("libstale"),
        "{err}"
    );
}

#[test]
fn list_shows_where_a_plugin_alias_comes_from() {
    let out = stdout(&tram(&["list", "--plugin", plugin().to_str().unwrap()], None));
    let canonical = plugin().canonicalize().unwrap().display().to_string();
    let line = out.lines().find(|l| l.trim_start().starts_with("tram-noise-renyi ")).unwrap_or_else(|| panic!("no alias in:\n{out}"));
    assert!(line.ends_with(&format!("[{canonical}]")), "{line}");
    let sam = out.lines().find(|l| l.trim_start().starts_with("sam ")).unwrap();
    assert!(!sam.contains('['), "built-in aliases have no origin: {sam}");
}

#[test]
fn version_verbose_and_plugin_host_print_the_fingerprint_fields() {
    let verbose = stdout(&tram(&["--version", "--verbose"], None));
    assert_eq!(verbose, stdout(&tram(&["plugin", "host"], None)));
    for field in [
        "plugin ABI version",
        "rustc version",
        "tram version",
        "tram code digest",
        "candle version",
        "framework features",
        "type layout digest",
    ] {
        assert!(verbose.contains(field), "{field} missing:\n{verbose}");
    }
    assert!(verbose.contains(tram::plugin::TRAM_SOURCE_DIGEST) && verbose.contains(tram::plugin::RUSTC_VERSION), "{verbose}");
    // Plain --version stays one line.
    assert_eq!(stdout(&tram(&["--version"], None)).lines().count(), 1);
}

#[test]
fn plugin_check_prints_both_fingerprints_and_fails_when_they_differ() {
    let o = tram(&["plugin", "check", plugin().to_str().unwrap()], None);
    let out = stdout(&o);
    assert!(out.contains("the fingerprints match") && out.contains("tram code digest") && !out.contains("differs"), "{out}");
    // The example plugin built with another fingerprint (the same build as tram-renyi's test).
    let other = tram_tests::mismatched_example_plugin();
    let o = tram(&["plugin", "check", other.to_str().unwrap()], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let row = out.lines().find(|l| l.trim_start().starts_with("framework features")).unwrap();
    assert!(row.contains("fingerprint-test") && row.contains("(none)") && row.ends_with("<- differs"), "{row}");
    assert!(out.contains("would be refused") && out.contains("enable the same tram features"), "{out}");
    // Not a plugin at all: an error naming the file.
    let o = tram(&["plugin", "check", "/no/such/lib.so"], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("/no/such/lib.so"));
}

#[test]
fn the_same_plugin_given_twice_is_loaded_once() {
    // The flag repeats, and adds to TRAM_PLUGINS; one library named twice (here also through
    // a link) is one library, wherever the names come from.
    let p = plugin().to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("tram-cli-plugin-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(plugin(), dir.join("linked.so")).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(plugin(), dir.join("linked.so")).unwrap();
    let linked = dir.join("linked.so");
    for (args, env) in [
        (vec!["list", "--plugin", p, "--plugin", p], None),
        (vec!["list", "--plugin", p], Some(plugin())),
        (vec!["list", "--plugin", linked.to_str().unwrap()], Some(plugin())),
    ] {
        let out = stdout(&tram(&args, env));
        assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("renyi ")).count(), 1, "{args:?}:\n{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `head -c 100000 libtram_renyi.so > t.so; tram list --plugin t.so` died of SIGBUS, silently.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[test]
fn a_truncated_plugin_is_an_error_message_not_a_crash() {
    let dir = std::env::temp_dir().join(format!("tram-cli-plugin-truncated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = dir.join("t.so");
    std::fs::write(&t, &std::fs::read(plugin()).unwrap()[..100_000]).unwrap();
    let o = tram(&["list", "--plugin", t.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "killed by a signal? {:?}\n{err}", o.status);
    assert!(err.contains("t.so") && err.contains("truncated") && err.contains("only 100000 bytes"), "{err}");
    assert!(stdout(&o).contains("only 100000 bytes"), "listed as refused with the reason");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn the_environment_variable_may_name_a_directory_of_plugins() {
    let dir = std::env::temp_dir().join(format!("tram-cli-plugin-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(plugin(), dir.join(plugin().file_name().unwrap())).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a library").unwrap();
    let out = stdout(&tram(&["list"], Some(&dir)));
    let canonical = plugin().canonicalize().unwrap().display().to_string();
    let line = out.lines().find(|l| l.trim_start().starts_with("renyi ")).unwrap_or_else(|| panic!("no renyi in:\n{out}"));
    assert!(line.contains(&format!("[{canonical}]")), "{line}");
    // `--plugin` takes a directory too.
    let out = stdout(&tram(&["explain", "tram-noise-renyi", "--plugin", dir.to_str().unwrap()], None));
    assert!(out.starts_with("noise(distance=renyi)+ball+adam\n"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
