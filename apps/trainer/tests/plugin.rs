//! Run-time plugins in the apps: the config key `plugins` (paths relative to the config file,
//! directories of plugins) loads the example `renyi` plugin, and TRAM-x with the Rényi
//! distance trains in `tram lm` on the tiny offline fixtures. The plugin is built as a cdylib
//! by the cargo running these tests, in the same profile.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

/// The example plugin `tram-renyi`, built once by the cargo running these tests (tram-tests).
fn plugin() -> &'static Path {
    tram_tests::example_plugin()
}

/// Put the plugin at `to` (a symbolic link where there are some: the debug build is large).
fn place_plugin(to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(plugin(), to).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(plugin(), to).unwrap();
}

fn config(out: &Path, plugins: &str) -> String {
    format!(
        r#"
model = "{GPT2}"
data = "{M2D2}"
out = "{out}"
seed = 5
plugins = {plugins}

[optimizer]
name = "noise(distance=renyi)+ball+adam"
lr = 1e-3

[optimizer.renyi]
alpha = 1.5

[train]
steps = 3
batch_size = 2
eval_every = 3
progress = false

[lm]
train_domain = "soc"
test_domains = ["hist"]
block_size = 8
max_eval_blocks = 4

[[runs]]
name = "tram-x-renyi"
label = "TRAM-x Rényi"
"#,
        out = out.display()
    )
}

#[test]
fn tram_x_with_the_renyi_plugin_from_the_config_trains_in_the_lm_app() {
    fixtures();
    let dir = scratch("plugin-lm");
    let out = dir.join("out");
    // `plugins` names a directory relative to the config file: every library in it is loaded.
    place_plugin(&dir.join("my-plugins").join(plugin().file_name().unwrap()));
    std::fs::write(dir.join("my-plugins").join("README.txt"), "not a library: skipped").unwrap();
    let cfg = write_config(&dir, &config(&out, r#"["my-plugins"]"#));
    let builtin = registry();
    assert!(builtin.find("renyi").is_none(), "the test registry has no renyi of its own");

    let summary = run_sources(App::Lm, &sources(&cfg, &[]), &[], false, &Control::default(), &builtin).unwrap();
    assert!(!summary.interrupted);
    assert!(summary.tables[0].contains("| TRAM-x Rényi |") && summary.tables[0].contains("noise(distance=renyi)+ball+adam"));

    let r: Value = serde_json::from_slice(&std::fs::read(out.join("tram-x-renyi/seed-5/results.json")).unwrap()).unwrap();
    assert_eq!(r["steps"], 3);
    assert_eq!(r["skipped_steps"], 0);
    // The results record the plugin's distance and its parameter.
    let opt = &r["optimizer"];
    assert_eq!(opt["composition"], "noise(distance=renyi)+ball+adam", "{opt}");
    assert_eq!(opt["region"]["distance"]["name"], "renyi", "{opt}");
    assert_eq!(opt["region"]["distance"]["params"]["alpha"], 1.5, "{opt}");
    assert_eq!(r["config"]["plugins"][0].as_str().unwrap(), dir.join("my-plugins").display().to_string());
    for c in r["columns"].as_array().unwrap() {
        let (loss, ppl) = (c["metrics"]["loss"].as_f64().unwrap(), c["metrics"]["perplexity"].as_f64().unwrap());
        assert!(loss.is_finite() && ppl.is_finite() && ppl > 1.0, "{c}");
    }
    let lines = metrics(&out.join("tram-x-renyi/seed-5/metrics.jsonl"));
    let train: Vec<&Value> = lines.iter().filter(|l| l["type"] == "train").collect();
    assert_eq!(train.len(), 3);
    for l in train {
        let (loss, delta) = (l["loss"].as_f64().unwrap(), l["delta"].as_f64().unwrap());
        assert!(loss.is_finite() && delta.is_finite() && delta >= 0.0, "{l}");
    }
}

#[test]
fn a_plugin_already_loaded_from_the_environment_is_not_loaded_twice() {
    fixtures();
    let dir = scratch("plugin-twice");
    let lib = plugin().display().to_string();
    // As `tram --plugin` / TRAM_PLUGINS would have loaded it.
    let mut reg = registry();
    reg.load_plugin(plugin()).unwrap();
    // A path relative to the config file's directory, here through a link.
    place_plugin(&dir.join("lib").join(plugin().file_name().unwrap()));
    let rel = format!("lib/{}", plugin().file_name().unwrap().to_string_lossy());
    for plugins in [format!("[{lib:?}]"), format!("[{rel:?}, {lib:?}]")] {
        let cfg = write_config(&dir, &config(&dir.join("out"), &plugins));
        let runs = sources(&cfg, &[]).resolve(&[], &reg).unwrap();
        let r = runs[0].config.plugin_registry(&reg).unwrap();
        assert_eq!(r.plugins().count(), 1, "{plugins}");
        assert!(r.find("renyi").is_some());
    }
}

#[test]
fn a_plugin_that_does_not_load_is_a_config_error_naming_the_key_and_path() {
    fixtures();
    let dir = scratch("plugin-missing");
    let cfg = write_config(&dir, &config(&dir.join("out"), r#"["missing/libtram_nothing.so"]"#));
    let err = sources(&cfg, &[]).resolve(&[], &registry()).unwrap_err().to_string();
    let expected = dir.join("missing/libtram_nothing.so").display().to_string();
    assert!(err.contains("key `plugins`") && err.contains(&expected) && err.contains("no such file"), "{err}");
    // Given with --set, a relative path is relative to the working directory.
    let err = sources(&cfg, &["plugins=[\"nowhere/libx.so\"]"]).resolve(&[], &registry()).unwrap_err().to_string();
    assert!(err.contains("key `plugins`: `nowhere/libx.so`") && err.contains("no such file"), "{err}");
    // Without the plugin, the composition names the unknown distance.
    let err = sources(&cfg, &["plugins=[]"]).resolve(&[], &registry()).unwrap_err().to_string();
    assert!(err.contains("key `optimizer`") && err.contains("renyi"), "{err}");
}
