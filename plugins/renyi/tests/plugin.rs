//! The run-time plugin path end to end. The example plugin is built as a cdylib by the cargo
//! running these tests (same profile, so usually already built), loaded with
//! `Registry::load_plugin`, and trained with; a build of it with another fingerprint is refused
//! naming the field; a missing file and a library that is not a plugin are clear errors.

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;
use tram::{Distance, Error, Kind, Model, Optimizer, OptimizerConfig, Reduction, Registry};
use tram_tests::{eval_loss, synthetic_batches, ClassifierShape, EmbeddingClassifier};

const SHAPE: ClassifierShape = ClassifierShape { vocab: 32, embed: 8, hidden: 16, layers: 1, classes: 4 };

/// The example plugin, built once per test binary.
fn plugin() -> &'static Path {
    tram_tests::example_plugin()
}

fn registry_with_plugin() -> Registry {
    let mut r = tram_plugins::registry().unwrap();
    let names = r.load_plugin(plugin()).unwrap();
    assert_eq!(names, ["renyi", "tram-noise-renyi"]);
    r
}

fn batches() -> Vec<tram::Batch> {
    synthetic_batches(SHAPE, 4, 16, 6, 7, &Device::Cpu).unwrap()
}

fn model() -> EmbeddingClassifier {
    EmbeddingClassifier::random(SHAPE, 1, &Device::Cpu).unwrap()
}

fn params(m: &dyn Model) -> Vec<f32> {
    m.params().iter().flat_map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn the_plugin_registers_renyi_with_its_path_as_origin() {
    let r = registry_with_plugin();
    let path = plugin().canonicalize().unwrap().display().to_string();
    let e = r.find("renyi").expect("renyi registered");
    assert_eq!(e.kind, Kind::Distance);
    assert_eq!(e.origin, path);
    assert_eq!((e.params[0].name.as_str(), e.params[0].default.as_str()), ("alpha", "2.0"));
    assert_eq!(r.alias("tram-noise-renyi").unwrap().composition, "noise(distance=renyi)+ball+adam");
    assert_eq!((r.alias_origin("tram-noise-renyi"), r.alias_origin("sam")), (path.as_str(), "built-in"));
    assert_eq!(r.plugins().map(|l| l.path().display().to_string()).collect::<Vec<_>>(), [path]);
    // Built-ins are untouched.
    assert_eq!(r.find("kl").unwrap().origin, "built-in");
}

#[test]
fn tram_x_with_the_renyi_plugin_decreases_the_loss() {
    let r = registry_with_plugin();
    let data = batches();
    let m = model();
    let cfg = OptimizerConfig::new("noise(distance=renyi)+ball+adam", 0.01).with("noise", "sigma", 1e-3);
    let mut opt = Optimizer::new(&r, cfg).unwrap();
    assert!(opt.to_string().contains("renyi"), "{opt}");
    let before = eval_loss(&m, &data).unwrap();
    for s in 0..40 {
        let rep = opt.step(&m, std::slice::from_ref(&data[s % data.len()])).unwrap();
        assert!(!rep.skipped, "step {s} skipped");
        let delta = rep.delta.expect("TRAM measures δ");
        assert!(delta.is_finite() && delta > 0.0, "step {s}: δ = {delta}");
    }
    let after = eval_loss(&m, &data).unwrap();
    assert!(after < 0.8 * before, "loss {before:.4} -> {after:.4}");
}

fn distance(r: &Registry, alpha: f64) -> Box<dyn Distance> {
    match r.build(Kind::Distance, "renyi", &serde_json::json!({ "alpha": alpha })).unwrap() {
        tram::Component::Distance(d) => d,
        _ => unreachable!(),
    }
}

#[test]
fn gradients_through_the_plugin_distance_equal_those_through_the_linked_one() {
    // The plugin differentiates inside its own copy of candle; the host re-attaches the result.
    // Value and parameter gradients must match the same code linked into this binary.
    let mut linked = tram_plugins::registry().unwrap();
    tram_renyi::register(&mut linked).unwrap();
    let loaded = registry_with_plugin();
    let (m, other) = (model(), EmbeddingClassifier::random(SHAPE, 2, &Device::Cpu).unwrap());
    let batch = &batches()[0];
    let target = other.forward(&other.params().detached(), batch, tram::Mode::EVAL).unwrap().logits;
    for alpha in [0.5, 1.0, 2.0] {
        let run = |r: &Registry| {
            let current = m.forward(m.params(), batch, tram::Mode::TRAIN).unwrap().logits;
            let d = distance(r, alpha).distance(&target, &current, Reduction::Mean, 16).unwrap();
            let grads = d.backward().unwrap();
            let g: Vec<Vec<f32>> =
                m.params().iter().map(|p| grads.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
            (d.to_scalar::<f32>().unwrap(), g)
        };
        let ((d_linked, g_linked), (d_loaded, g_loaded)) = (run(&linked), run(&loaded));
        assert!(d_linked > 0.0 && (d_linked - d_loaded).abs() <= 1e-6 * d_linked, "α = {alpha}: D {d_linked} vs {d_loaded}");
        for (i, (a, b)) in g_linked.iter().zip(&g_loaded).enumerate() {
            let scale = a.iter().fold(0f32, |s, x| s.max(x.abs()));
            assert!(scale > 0.0, "α = {alpha}: parameter {i} has no gradient");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-4 * scale, "α = {alpha}, parameter {i}: {x} vs {y} (scale {scale})");
            }
        }
    }
}

#[test]
fn a_penalty_through_the_plugin_distance_trains_like_the_linked_one() {
    let mut linked = tram_plugins::registry().unwrap();
    tram_renyi::register(&mut linked).unwrap();
    let loaded = registry_with_plugin();
    let data = batches();
    let run = |r: &Registry| {
        let m = model();
        let cfg = OptimizerConfig::new("reg:noise(distance=renyi,lambda=5)+sgd(momentum=0)", 0.1)
            .with("noise", "sigma", 0.5)
            .with("renyi", "alpha", 0.5);
        let mut opt = Optimizer::new(r, cfg).unwrap();
        let pen: Vec<f64> = (0..10).map(|s| opt.step(&m, std::slice::from_ref(&data[s % data.len()])).unwrap().penalty.unwrap()).collect();
        (params(&m), pen)
    };
    let ((p_linked, pen_linked), (p_loaded, pen_loaded)) = (run(&linked), run(&loaded));
    for (a, b) in pen_linked.iter().zip(&pen_loaded) {
        assert!(*a > 1e-3 && (a - b).abs() <= 1e-3 * a, "penalty {a} vs {b}");
    }
    for (i, (a, b)) in p_linked.iter().zip(&p_loaded).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "parameter {i}: linked {a} vs plugin {b}");
    }
}

#[test]
fn components_built_from_a_plugin_outlive_the_registry() {
    let r = registry_with_plugin();
    let entry = r.find("renyi").unwrap().clone();
    let d = distance(&r, 2.0);
    drop(r);
    // p = (1/4, 3/4), q = (1/2, 1/2): D_2 = log 5/4.
    let t = Tensor::new(&[[0.0f32, 3f32.ln()]], &Device::Cpu).unwrap();
    let c = Tensor::new(&[[0.0f32, 0.0]], &Device::Cpu).unwrap();
    let v = d.distance(&t, &c, Reduction::Mean, 1).unwrap().to_scalar::<f32>().unwrap();
    assert!((v - 1.25f32.ln()).abs() < 1e-6, "{v}");
    assert_eq!(d.name(), "renyi");
    drop(d);
    // The entry's constructor holds the library too.
    assert!((entry.build)(&Value::Null).is_ok());
}

#[test]
fn the_same_library_under_any_name_is_loaded_once() {
    let mut r = registry_with_plugin();
    let before = (r.names(None), r.aliases().count(), r.plugins().count());
    // Again, through a symbolic link and through a path with `..` in it: nothing new.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("linked.so");
    #[cfg(unix)]
    std::os::unix::fs::symlink(plugin(), &link).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(plugin(), &link).unwrap();
    let dotted =
        plugin().parent().unwrap().join("..").join(plugin().parent().unwrap().file_name().unwrap()).join(plugin().file_name().unwrap());
    for p in [plugin().to_path_buf(), dotted] {
        assert_eq!(r.load_plugin(&p).unwrap(), Vec::<String>::new(), "{}", p.display());
    }
    #[cfg(unix)]
    assert_eq!(r.load_plugin(&link).unwrap(), Vec::<String>::new());
    assert_eq!((r.names(None), r.aliases().count(), r.plugins().count()), before);
    assert_eq!(r.load_plugin_list(&std::env::join_paths([plugin(), plugin()]).unwrap()).unwrap(), Vec::<String>::new());
}

#[test]
fn another_library_with_the_same_names_is_a_duplicate_name_error_and_registers_nothing() {
    let mut r = registry_with_plugin();
    let before = (r.names(None), r.aliases().count());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(plugin().file_name().unwrap());
    std::fs::copy(plugin(), &copy).unwrap();
    let err = r.load_plugin(&copy).unwrap_err();
    assert!(matches!(err, Error::DuplicateComponent { ref name, .. } if name == "renyi"), "{err}");
    assert_eq!((r.names(None), r.aliases().count()), before);
}

/// `head -c 100000 libtram_renyi.so > t.so`: the loader used to map it and die of SIGBUS.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[test]
fn a_truncated_plugin_is_a_clear_error_not_a_crash() {
    let bytes = std::fs::read(plugin()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for keep in [100_000, bytes.len() / 2, bytes.len() - 1, 60] {
        let t = dir.path().join(format!("t{keep}.so"));
        std::fs::write(&t, &bytes[..keep]).unwrap();
        let mut r = tram_plugins::registry().unwrap();
        let err = r.load_plugin(&t).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Plugin { .. }) && msg.contains(&format!("t{keep}.so")) && msg.contains("truncated"), "{msg}");
        assert!(msg.contains(&format!("only {keep} bytes")) && msg.contains("rebuild the plugin"), "{msg}");
        assert!(r.find("renyi").is_none());
    }
}

/// The example plugin built with the `fingerprint-test` feature (another fingerprint), once.
fn mismatched_plugin() -> &'static Path {
    tram_tests::mismatched_example_plugin()
}

#[test]
fn a_plugin_built_with_another_fingerprint_is_refused_naming_the_field_and_both_values() {
    let lib = mismatched_plugin();
    let mut r = tram_plugins::registry().unwrap();
    let names = r.names(None);
    let err = r.load_plugin(lib).unwrap_err();
    match &err {
        Error::PluginMismatch { field, plugin, host, .. } => {
            assert_eq!((field.as_str(), plugin.as_str(), host.as_str()), ("framework features", "fingerprint-test", "(none)"));
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("framework features") && msg.contains("`fingerprint-test`") && msg.contains("`(none)`"), "{msg}");
    // The advice is the one for this cause: the plugin crate's tram features.
    assert!(msg.contains("enable the same tram features"), "{msg}");
    assert_eq!(r.names(None), names, "nothing registered");
}

/// `tram plugin check`'s reading: both fingerprints, field by field, without registering.
#[test]
fn inspect_reads_a_plugins_fingerprint_beside_the_hosts() {
    let good = tram::plugin::inspect(plugin()).unwrap();
    assert!(good.matches(), "{:?}", good.compare());
    assert_eq!(good.compare().len(), 7);
    let bad = tram::plugin::inspect(mismatched_plugin()).unwrap();
    assert!(!bad.matches());
    let differing: Vec<_> = bad.compare().into_iter().filter(|(_, p, h)| p != h).collect();
    assert_eq!(differing, [("framework features", "fingerprint-test".to_string(), "(none)".to_string())]);
    let err = tram::plugin::inspect("/no/such/libx.so").unwrap_err();
    assert!(matches!(err, Error::Plugin { .. }), "{err}");
}

/// A stale or mismatched plugin among several: the others load, it is recorded as refused
/// with the reason, compositions that do not use it work, and an unknown name lists it.
#[test]
fn a_lenient_load_refuses_a_mismatched_plugin_and_keeps_the_others() {
    let mut r = tram_plugins::registry().unwrap();
    let errors = r.load_plugins_lenient([mismatched_plugin(), plugin()]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(matches!(errors[0], Error::PluginMismatch { .. }));
    let refused: Vec<(String, String)> = r.refused_plugins().map(|(p, why)| (p.to_string(), why.to_string())).collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].0.ends_with("libtram_renyi.so") && refused[0].1.contains("framework features"), "{refused:?}");
    assert!(r.find("renyi").is_some(), "the good copy loaded");
    Optimizer::new(&r, OptimizerConfig::new("adam", 0.01)).unwrap();
    Optimizer::new(&r, OptimizerConfig::new("tram-noise-renyi", 0.01)).unwrap();
    let err = Optimizer::new(&r, OptimizerConfig::new("noise(distance=hellinger)+ball+adam", 0.01)).err().unwrap().to_string();
    assert!(err.contains("hellinger") && err.contains("could not be loaded") && err.contains("framework features"), "{err}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = Registry::empty().load_plugin("/no/such/dir/libtram_nothing.so").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Plugin { .. }) && msg.contains("/no/such/dir/libtram_nothing.so") && msg.contains("no such file"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_shared_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("libgarbage.{}", std::env::consts::DLL_EXTENSION));
    std::fs::write(&path, b"this is not a shared library").unwrap();
    let err = Registry::empty().load_plugin(&path).unwrap_err();
    let msg = err.to_string();
    // ELF platforms check the file before the loader sees it.
    let expected = if cfg!(any(target_os = "linux", target_os = "android", target_os = "freebsd")) {
        "not an ELF shared library"
    } else {
        "cannot be loaded as a shared library"
    };
    assert!(matches!(err, Error::Plugin { .. }) && msg.contains(expected), "{msg}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_shared_library_that_is_not_a_plugin_is_a_clear_error() {
    // The C library this process runs on: a real shared library without a declaration.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p).file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so") || n.to_string_lossy().starts_with("libc-"))
        })
        .expect("libc mapped");
    let mut r = tram_plugins::registry().unwrap();
    let names = r.names(None);
    let err = r.load_plugin(libc).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Plugin { .. }) && msg.contains("not a tram plugin") && msg.contains("TRAM_PLUGIN_DECLARATION"), "{msg}");
    assert_eq!(r.names(None), names);
}

#[cfg(unix)]
#[test]
fn a_directory_in_a_plugin_list_loads_every_shared_library_in_it_in_name_order() {
    use std::os::unix::fs::symlink;
    let ext = std::env::consts::DLL_EXTENSION;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join(format!("libtram_renyi.{ext}"));
    symlink(plugin(), &lib).unwrap();
    // Other files and sub-directories are not loaded (a second renyi would be a duplicate).
    std::fs::write(dir.path().join("README.txt"), "not a library").unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    symlink(plugin(), dir.path().join("nested").join(format!("libtram_renyi.{ext}"))).unwrap();
    assert_eq!(tram::plugin::plugin_files(dir.path()).unwrap(), [lib]);
    let empty = tempfile::tempdir().unwrap();

    // The value of TRAM_PLUGINS, with an empty directory and an empty entry.
    let list = std::env::join_paths([dir.path(), Path::new(""), empty.path()]).unwrap();
    let mut r = tram_plugins::registry().unwrap();
    assert_eq!(r.load_plugin_list(&list).unwrap(), ["renyi", "tram-noise-renyi"]);
    assert_eq!(r.find("renyi").unwrap().origin, plugin().canonicalize().unwrap().display().to_string());

    // In name order: the plugin loads, then the library after it that is not one is an error naming it.
    let bad_dir = tempfile::tempdir().unwrap();
    symlink(plugin(), bad_dir.path().join(format!("a-renyi.{ext}"))).unwrap();
    let bad = bad_dir.path().join(format!("b-garbage.{ext}"));
    std::fs::write(&bad, b"this is not a shared library").unwrap();
    let mut r = tram_plugins::registry().unwrap();
    let err = r.load_plugins([bad_dir.path()]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Plugin { .. })
            && msg.contains("b-garbage")
            && (msg.contains("not an ELF shared library") || msg.contains("cannot be loaded")),
        "{msg}"
    );
    assert!(r.find("renyi").is_some(), "the library before it was loaded");
}

/// `tram::testing::static_equals_loaded`, the helper plugin authors use: TRAM-x with Rényi
/// (the plugin distance sees detached logits) is bitwise the same linked and loaded, a penalty
/// (gradient through the plugin boundary) the same within 1e-4.
#[test]
fn the_static_equals_loaded_helper_passes_the_renyi_plugin() {
    let base = tram_plugins::registry().unwrap();
    let cfg = OptimizerConfig::new("tram-noise-renyi", 0.01).with("noise", "sigma", 1e-2);
    let r = tram::testing::static_equals_loaded(&base, tram_renyi::register, plugin(), &cfg, 3, 0.0).unwrap();
    assert_eq!((r.steps, r.max_difference), (3, 0.0));
    assert!(r.values > 0 && r.last_loss.is_finite(), "{r:?}");
    let cfg = OptimizerConfig::new("reg:noise(distance=renyi,lambda=5)+sgd", 0.1).with("noise", "sigma", 0.5);
    let r = tram::testing::static_equals_loaded(&base, tram_renyi::register, plugin(), &cfg, 3, 1e-4).unwrap();
    assert!(r.max_difference <= 1e-4, "{r:?}");
}

/// The helper catches a plugin whose run-time build computes something else than the crate
/// linked statically (here: a linked `renyi` that is really squared L2).
#[test]
fn the_static_equals_loaded_helper_catches_a_plugin_that_differs_from_the_linked_crate() {
    struct NotRenyi;
    impl Distance for NotRenyi {
        fn name(&self) -> &str {
            "renyi"
        }
        fn distance(&self, t: &Tensor, c: &Tensor, _: Reduction, _: usize) -> tram::Result<Tensor> {
            Ok(t.sub(c)?.sqr()?.mean_all()?)
        }
    }
    fn register(r: &mut dyn tram::plugin::Registrar) -> tram::Result<()> {
        r.register(tram::Entry::new(Kind::Distance, "renyi", "not Rényi", vec![], |_| Ok(tram::Component::Distance(Box::new(NotRenyi)))))?;
        r.register_alias(tram::Alias {
            name: "tram-noise-renyi".into(),
            composition: "noise(distance=renyi)+ball+adam".into(),
            summary: "TRAM-x, not with Rényi".into(),
        })
    }
    let base = tram_plugins::registry().unwrap();
    let cfg = OptimizerConfig::new("tram-noise-renyi", 0.01).with("noise", "sigma", 1e-2);
    let err = tram::testing::static_equals_loaded(&base, register, plugin(), &cfg, 3, 0.0).unwrap_err().to_string();
    assert!(err.contains("step 0") && err.contains("linked statically and loaded"), "{err}");
}
