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

#[test]
fn a_non_finite_number_is_an_error_naming_the_key_and_the_value_wherever_it_is_given() {
    let dir = scratch("config-non-finite");
    let f = write_config(&dir, FILE);
    let err = |envs: &[(&str, &str)], sets: &[&str]| resolve(&f, envs, sets, &["sam"]).unwrap_err().to_string();
    // --set: used to be "found unit" for lr, and ρ = 0.05 (the default) for ball.rho.
    let e = err(&[], &["optimizer.lr=nan"]);
    assert!(e.contains("--set") && e.contains("key `optimizer.lr` = NaN") && e.contains("finite"), "{e}");
    for v in ["nan", "inf", "-inf", "+inf"] {
        let e = err(&[], &[&format!("optimizer.ball.rho={v}")]);
        assert!(e.contains("key `optimizer.ball.rho` = ") && e.contains("finite"), "{v}: {e}");
    }
    let e = err(&[], &["optimizer.mmd.bandwidths=[1.0, nan]"]);
    assert!(e.contains("key `optimizer.mmd.bandwidths[1]` = NaN"), "{e}");
    // Environment.
    let e = err(&[("TRAM_OPTIMIZER__BALL__RHO", "inf")], &[]);
    assert!(e.contains("TRAM_") && e.contains("key `optimizer.ball.rho` = inf"), "{e}");
    // The file, top level and [[runs]] entries.
    let file = write_config(&scratch("config-non-finite-file"), &format!("{FILE}\n[optimizer.ball]\nrho = nan\n"));
    let e = resolve(&file, &[], &[], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("config.toml") && e.contains("key `optimizer.ball.rho` = NaN"), "{e}");
    let file = write_config(
        &scratch("config-non-finite-run"),
        &FILE.replace(r#"optimizer = { name = "sam" }"#, r#"optimizer = { name = "sam", ball = { rho = -inf } }"#),
    );
    let e = resolve(&file, &[], &[], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("key `runs[0].optimizer.ball.rho` = -inf"), "{e}");
    // Inline in a composition.
    let e = err(&[], &["optimizer.name=\"ball(rho=nan)+adam\""]);
    assert!(e.contains("`rho=nan`") && e.contains("not a finite number"), "{e}");
    // A word is still a word when quoted.
    assert!(resolve(&f, &[], &["label=\"inf\""], &["sam"]).is_ok());
}

#[test]
fn meaningless_settings_are_refused_with_the_valid_range() {
    let dir = scratch("config-meaningless");
    let f = write_config(&dir, FILE);
    let err = |sets: &[&str]| resolve(&f, &[], sets, &["sam"]).unwrap_err().to_string();
    for (sets, expected) in [
        (&["seeds=[]"][..], "key `seeds` (from --set): an empty list runs no seed"),
        (&["seeds=[1, 2, 1]"], "seed 1 is listed twice"),
        (&["optimizer.ball.rho=1e308"], "`rho` must be in [0, 1000], got 1e308"),
        (&["optimizer.name=sgd", "optimizer.sgd.momentum=2"], "`momentum` must be in [0, 1), got 2"),
        (&["optimizer.name=\"reg:noise(lambda=-1)+adam\""], "`lambda` must be in [0, ∞) (finite), got -1"),
        (&["optimizer.name=mesa", "optimizer.ema.temperature=0"], "`temperature` must be in (0, ∞) (finite), got 0"),
        (&["optimizer.noise.sigma=1e300", "optimizer.name=tram-noise"], "`sigma` must be in [0, 1000], got 1e300"),
        (&["optimizer.max_grad_norm=-1"], "`max_grad_norm` must be in (0, ∞) (finite), got -1"),
        (&["lm.max_eval_blocks=0"], "key `lm.max_eval_blocks` = 0: must be at least 1"),
        (&["train.max_eval_examples=0"], "key `train.max_eval_examples` = 0: must be at least 1"),
    ] {
        let e = err(sets);
        assert!(e.contains(expected), "{sets:?}: {e}");
    }
    // train.epochs = 0 without steps would train 0 steps: the message says how to evaluate only.
    let no_steps = write_config(&scratch("config-epochs-zero"), &FILE.replace("steps = 10\n", ""));
    let e = resolve(&no_steps, &[], &["train.epochs=0"], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("key `train.epochs`: must be in (0, ∞)") && e.contains("evaluate_only"), "{e}");
}

#[test]
fn steps_and_epochs_from_one_source_are_an_error_and_from_two_the_later_source_wins() {
    let dir = scratch("config-steps-epochs");
    let both = write_config(&dir, &FILE.replace("steps = 10\n", "steps = 10\nepochs = 3\n"));
    let e = resolve(&both, &[], &[], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("`train.steps` and `train.epochs` are both set by the config file"), "{e}");
    let e = resolve(&write_config(&scratch("config-steps-epochs-set"), FILE), &[], &["train.steps=5", "train.epochs=2"], &["sam"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("both set by --set"), "{e}");
    // --set train.epochs over the file's steps: epochs decides (steps used to win silently).
    let f = write_config(&scratch("config-steps-epochs-override"), FILE);
    let r = &resolve(&f, &[], &["train.epochs=2"], &["sam"]).unwrap()[0];
    assert_eq!((r.config.train.steps, r.config.train.epochs), (None, 2.0));
    // --set train.steps over the file's epochs: steps decides.
    let f = write_config(&scratch("config-epochs-steps-override"), &FILE.replace("steps = 10\n", "epochs = 3\n"));
    let r = &resolve(&f, &[("TRAM_TRAIN__STEPS", "7")], &[], &["sam"]).unwrap()[0];
    assert_eq!(r.config.train.steps, Some(7));
}

#[test]
fn overriding_the_schedule_kind_does_not_silently_drop_the_files_warmup() {
    let f = write_config(
        &scratch("config-schedule-kind"),
        &FILE.replace("lr = 1e-4\n", "lr = 1e-4\nschedule = { kind = \"polynomial\", warmup = 4, total = 0 }\n"),
    );
    let e = resolve(&f, &[], &["optimizer.schedule.kind=constant"], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("key `optimizer.schedule`") && e.contains("schedule kind `constant` does not take `warmup`, `total`"), "{e}");
    let r = &resolve(&f, &[], &["optimizer.schedule.warmup=2"], &["sam"]).unwrap()[0];
    assert_eq!(r.config.optimizer.schedule, tram::Schedule::Polynomial { warmup: 2, total: 0, power: 1.0 });
    // A whole table replaces the file's (environment or --set); other keys of `optimizer` stay.
    let r = &resolve(&f, &[], &["optimizer.schedule={ kind = \"constant\" }"], &["sam"]).unwrap()[0];
    assert_eq!((&r.config.optimizer.schedule, r.config.optimizer.lr), (&tram::Schedule::Constant, 1e-4));
    let r = &resolve(&f, &[("TRAM_OPTIMIZER__SCHEDULE", "{kind=\"cosine\", total=3}")], &[], &["sam"]).unwrap()[0];
    assert_eq!(r.config.optimizer.schedule, tram::Schedule::Cosine { total: 3 });
    // --set over the environment's table, and its own error when a key does not belong.
    let r =
        &resolve(&f, &[("TRAM_OPTIMIZER__SCHEDULE", "{kind=\"cosine\", total=3}")], &["optimizer.schedule={kind=\"constant\"}"], &["sam"])
            .unwrap()[0];
    assert_eq!(r.config.optimizer.schedule, tram::Schedule::Constant);
    let e = resolve(&f, &[], &["optimizer.schedule={kind=\"cosine\", warmup=1, total=3}"], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("`cosine` does not take `warmup`"), "{e}");
}

#[test]
fn f16_is_refused_naming_what_to_use_instead() {
    let f = write_config(&scratch("config-f16"), FILE);
    let e = resolve(&f, &[], &["dtype=f16"], &["sam"]).unwrap_err().to_string();
    assert!(e.contains("key `dtype`") && e.contains("`f16` is not supported") && e.contains("`bf16`") && e.contains("`f32`"), "{e}");
    assert!(tram_trainer::dtype("f16").is_err());
    for ok in ["f32", "bf16"] {
        resolve(&f, &[], &[&format!("dtype={ok}")], &["sam"]).unwrap();
    }
}

/// `tram lm -c <repo>/configs/quickstart/finetune.toml` failed outside the repository: its
/// `model` / `data` were relative to the working directory. A relative local path written in a
/// config file is now looked up beside the file first.
#[test]
fn model_and_data_written_in_a_file_are_found_beside_it_whatever_the_working_directory() {
    let dir = scratch("config-file-relative");
    std::fs::create_dir_all(dir.join("assets/model")).unwrap();
    std::fs::create_dir_all(dir.join("assets/data")).unwrap();
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    let file = dir.join("configs/run.toml");
    std::fs::write(
        &file,
        FILE.replace("model = \"org/model\"", "model = \"../assets/model\"").replace("data = \"org/data\"", "data = \"../assets/data\""),
    )
    .unwrap();
    let r = &resolve(&file, &[], &[], &["sam"]).unwrap()[0];
    let (model, data) = (std::path::PathBuf::from(&r.config.model), std::path::PathBuf::from(&r.config.data));
    assert_eq!(model.canonicalize().unwrap(), dir.join("assets/model").canonicalize().unwrap());
    assert_eq!(data.canonicalize().unwrap(), dir.join("assets/data").canonicalize().unwrap());
    // Hub ids (nothing beside the file by that name) and values given with --set are kept.
    let r = &resolve(&file, &[], &["model=../assets/model", "data=org/data"], &["sam"]).unwrap()[0];
    assert_eq!((r.config.model.as_str(), r.config.data.as_str()), ("../assets/model", "org/data"));
    let hub = write_config(&dir, FILE);
    let r = &resolve(&hub, &[], &[], &["sam"]).unwrap()[0];
    assert_eq!((r.config.model.as_str(), r.config.data.as_str()), ("org/model", "org/data"));
}

/// The shipped quickstart config names the bundled model and corpus relative to itself.
#[test]
fn the_quickstart_config_finds_the_bundled_model_and_corpus_from_any_directory() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let s = Sources { file: Some(root.join("configs/quickstart/finetune.toml")), sets: vec![], env: env(&[]) };
    let r = &s.resolve(&["adam".to_string()], &registry()).unwrap()[0];
    assert_eq!(std::path::Path::new(&r.config.model).canonicalize().unwrap(), root.join("models/quickstart"));
    assert_eq!(std::path::Path::new(&r.config.data).canonicalize().unwrap(), root.join("data/quickstart"));
}
