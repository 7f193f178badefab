//! Configuration: precedence (file < TRAM_* < --set), strict keys and types, `[[runs]]`.

mod common;

use common::{registry, scratch, write_config};
use tram_trainer::config::{parse_value, Select};
use tram_trainer::Sources;

const FILE: &str = r#"
model = "org/model"
data = "org/data"
seed = 1
[optimizer]
name = "adam"
lr = 1e-4
[train]
steps = 10
batch_size = 4
[[runs]]
name = "sam"
label = "SAM"
optimizer = { name = "sam" }
[[runs]]
name = "zero-shot"
train = { evaluate_only = true }
"#;

fn env(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn resolve(
    file: &std::path::Path,
    envs: &[(&str, &str)],
    sets: &[&str],
    runs: &[&str],
) -> tram_trainer::Result<Vec<tram_trainer::RunConfig>> {
    let s = Sources { file: Some(file.to_path_buf()), sets: sets.iter().map(|s| s.to_string()).collect(), env: env(envs) };
    s.resolve(&runs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &registry())
}

#[test]
fn file_then_environment_then_set() {
    let dir = scratch("config-precedence");
    let f = write_config(&dir, FILE);
    let r = &resolve(&f, &[], &[], &["sam"]).unwrap()[0];
    assert_eq!((r.config.train.steps, r.config.optimizer.lr, r.config.seed), (Some(10), 1e-4, 1));
    assert_eq!((r.name.as_str(), r.label.as_str(), r.config.optimizer.name.as_str()), ("sam", "SAM", "sam"));
    // Environment beats the file (and the run overlay); numbers like 3e-5 are numbers.
    let e = [("TRAM_TRAIN__STEPS", "20"), ("TRAM_OPTIMIZER__LR", "3e-5"), ("TRAM_OPTIMIZER__NAME", "tram-prev"), ("TRAM_PLUGINS", "/x.so")];
    let r = &resolve(&f, &e, &[], &["sam"]).unwrap()[0];
    assert_eq!((r.config.train.steps, r.config.optimizer.lr, r.config.optimizer.name.as_str()), (Some(20), 3e-5, "tram-prev"));
    // --set beats both.
    let r = &resolve(&f, &e, &["train.steps=30", "optimizer.lr=2e-5", "train.select=last", "out=/tmp/x y"], &["sam"]).unwrap()[0];
    assert_eq!((r.config.train.steps, r.config.optimizer.lr), (Some(30), 2e-5));
    assert_eq!(r.config.train.select, Select::Last);
    assert_eq!(r.config.out, std::path::PathBuf::from("/tmp/x y"));
    assert_eq!(r.dir(1), std::path::PathBuf::from("/tmp/x y/sam/seed-1"));
    // Component tables through --set and env, keys with underscores through `__` levels.
    let r = &resolve(&f, &[("TRAM_OPTIMIZER__MAX_GRAD_NORM", "1.5")], &["optimizer.ball.rho=0.1", "seeds=[1, 2, 3]"], &["sam"]).unwrap()[0];
    assert_eq!(r.config.optimizer.max_grad_norm, Some(1.5));
    assert_eq!(r.config.optimizer.components["ball"]["rho"], 0.1);
    assert_eq!(r.seeds(), [1, 2, 3]);
}

#[test]
fn runs_select_rows_in_order() {
    let dir = scratch("config-runs");
    let f = write_config(&dir, FILE);
    let all = resolve(&f, &[], &[], &[]).unwrap();
    assert_eq!(all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["sam", "zero-shot"]);
    assert!(all[1].config.train.evaluate_only);
    assert_eq!(all[1].label, "zero-shot");
    let err = resolve(&f, &[], &[], &["nope"]).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("sam, zero-shot"), "{err}");
    // No [[runs]]: one run named after the optimizer.
    let f2 = write_config(&scratch("config-no-runs"), "model = \"m/m\"\n[optimizer]\nname = \"noise+ball+adam\"\n");
    let r = resolve(&f2, &[], &[], &[]).unwrap();
    assert_eq!(r[0].name, "noise_ball_adam");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    let dir = scratch("config-errors");
    let f = write_config(&dir, FILE);
    let err = |envs: &[(&str, &str)], sets: &[&str]| resolve(&f, envs, sets, &["sam"]).unwrap_err().to_string();
    let e = err(&[], &["train.stepz=3"]);
    assert!(e.contains("stepz") && e.contains("train"), "{e}");
    let e = err(&[], &["train.steps=many"]);
    assert!(e.contains("train.steps") && e.contains("many"), "{e}");
    let e = err(&[("TRAM_TRAIN__BATCH_SIZE", "-1")], &[]);
    assert!(e.contains("train.batch_size") && e.contains("TRAM_"), "{e}");
    let e = err(&[("TRAM_MODLE", "x")], &[]);
    assert!(e.contains("modle"), "{e}");
    let e = err(&[], &["optimizer.name=nosuch+adam"]);
    assert!(e.contains("optimizer") && e.contains("nosuch"), "{e}");
    let e = err(&[], &["optimizer.lrr=1"]);
    assert!(e.contains("lrr"), "{e}");
    let e = err(&[], &["train.batch_size=0"]);
    assert!(e.contains("train.batch_size"), "{e}");
    let e = err(&[], &["device=tpu"]);
    assert!(e.contains("device") && e.contains("tpu"), "{e}");
    let e = err(&[], &["novalue"]);
    assert!(e.contains("key=value"), "{e}");
    // In the file too, with the file named.
    let bad = write_config(&scratch("config-errors-file"), "model = \"a/b\"\n[train]\nsteps = \"ten\"\n");
    let e = resolve(&bad, &[], &[], &[]).unwrap_err().to_string();
    assert!(e.contains("train.steps") && e.contains("config.toml"), "{e}");
    let bad = write_config(&scratch("config-errors-syntax"), "model = \n");
    let e = resolve(&bad, &[], &[], &[]).unwrap_err().to_string();
    assert!(e.contains("config.toml"), "{e}");
    let e = resolve(&dir.join("absent.toml"), &[], &[], &[]).unwrap_err().to_string();
    assert!(e.contains("absent.toml") && e.contains("does not exist"), "{e}");
}

#[test]
fn values_parse_as_toml_else_text() {
    assert_eq!(parse_value("3e-5"), serde_json::json!(3e-5));
    assert_eq!(parse_value("10"), serde_json::json!(10));
    assert_eq!(parse_value("true"), serde_json::json!(true));
    assert_eq!(parse_value("[1, 2]"), serde_json::json!([1, 2]));
    assert_eq!(parse_value("noise+ball+adam"), serde_json::json!("noise+ball+adam"));
    assert_eq!(parse_value("/a/b"), serde_json::json!("/a/b"));
    assert_eq!(parse_value("\"quoted\""), serde_json::json!("quoted"));
}

#[test]
fn shipped_configs_resolve() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let reg = registry();
    let mut n = 0;
    for e in std::fs::read_dir(&configs).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name == "optimizers.toml" || p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let s = Sources { file: Some(p.clone()), sets: vec![], env: Some(vec![]) };
        let runs = s.resolve(&[], &reg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!runs.is_empty(), "{name}");
        n += 1;
    }
    assert!(n >= 5, "only {n} experiment configs");
}
