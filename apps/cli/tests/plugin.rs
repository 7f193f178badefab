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
    let o = tram(&["list", "--plugin", "/no/such/libplugin.so"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("plugin /no/such/libplugin.so: no such file"), "{err}");
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
    assert_eq!(o.status.code(), Some(1), "killed by a signal? {:?}\n{err}", o.status);
    assert!(err.contains("t.so") && err.contains("truncated") && err.contains("only 100000 bytes"), "{err}");
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
