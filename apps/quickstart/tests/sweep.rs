//! `tram quickstart sweep`: the recorded choice is the config's, the grid runs end to end on
//! a reduced setting and writes its choice into a config without touching anything else.

use tram_quickstart::sweep::{self, Grid, SweepOptions};
use tram_quickstart::{repo_path, Options, FINETUNE_CONFIG};
use tram_trainer::config::Sources;
use tram_trainer::Control;

/// The value of `optimizer.<key>` in a resolved row (`ball.rho`, `reg:noise.lambda`).
fn param(optimizer: &tram::OptimizerConfig, key: &str) -> Option<f64> {
    let (table, rest) = key.split_once('.')?;
    let mut v = optimizer.components.get(table)?;
    for k in rest.split('.') {
        v = v.get(k)?;
    }
    v.as_f64()
}

#[test]
fn the_bundled_config_runs_the_values_the_recorded_sweep_chose() {
    let grid = Grid::read(&repo_path(sweep::SWEEP_CONFIG)).unwrap();
    let csv = std::fs::read_to_string(repo_path(sweep::RECORD_DIR).join("sweep.csv")).unwrap();
    let chosen = sweep::read_chosen_csv(&csv).unwrap();
    // One choice per method of the grid, each a point of the grid.
    assert_eq!(chosen.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), grid.methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>());
    let points = grid.points();
    // Every point of the grid was scored, once.
    assert_eq!(csv.lines().count() - 1, points.len(), "sweep.csv has one line per grid point");
    let sources = Sources { file: Some(repo_path(FINETUNE_CONFIG)), sets: Vec::new(), env: Some(Vec::new()) };
    let registry = tram_plugins::registry().unwrap();
    let runs = sources.resolve(&[], &registry).unwrap();
    for (method, lr, key, value) in &chosen {
        assert!(
            points.iter().any(|p| &p.method == method && p.lr == *lr && &p.key == key && p.value == *value),
            "{method}: not a grid point"
        );
        let run = runs.iter().find(|r| &r.name == method).unwrap_or_else(|| panic!("no row `{method}` in {FINETUNE_CONFIG}"));
        let o = &run.config.optimizer;
        assert_eq!(o.lr, *lr, "{method}: the config's lr is not the sweep's choice");
        if let (Some(k), Some(v)) = (key, value) {
            assert_eq!(param(o, k), Some(*v), "{method}: the config's `optimizer.{k}` is not the sweep's choice");
        }
    }
    // The recorded Markdown names the same choices.
    let md = std::fs::read_to_string(repo_path(sweep::RECORD_DIR).join("sweep.md")).unwrap();
    for (method, lr, _, _) in &chosen {
        assert!(md.contains(&format!("| {method} | {lr} |")), "sweep.md lacks the choice of {method}");
    }
}

#[test]
fn a_reduced_sweep_scores_every_point_and_writes_the_best_into_the_config() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the bundled config (its paths made absolute) to write into.
    let config = dir.path().join("finetune.toml");
    let text = std::fs::read_to_string(repo_path(FINETUNE_CONFIG)).unwrap();
    let text = text
        .replace(
            "\"../../models/quickstart\"",
            &format!("{:?}", repo_path("models/quickstart").canonicalize().unwrap().display().to_string()),
        )
        .replace("\"../../data/quickstart\"", &format!("{:?}", repo_path("data/quickstart").canonicalize().unwrap().display().to_string()));
    std::fs::write(&config, &text).unwrap();
    let grid = dir.path().join("sweep.toml");
    std::fs::write(
        &grid,
        "seed = 0\nlr = [1e-5, 3e-3]\n[[methods]]\nname = \"adam\"\n[[methods]]\nname = \"sam\"\nkey = \"ball.rho\"\nvalues = [0.01, 0.3]\n",
    )
    .unwrap();
    let quick = Options {
        config: Some(config.clone()),
        out: dir.path().join("runs"),
        steps: Some(3),
        sets: vec!["lm.max_eval_blocks=2".into(), "train.max_train_examples=20".into(), "train.eval_every=3".into()],
        progress: false,
        ..Default::default()
    };
    let record = dir.path().join("record");
    let opts = SweepOptions { grid: Some(grid), quick, record: Some(record.clone()), write_config: true };
    let registry = tram_plugins::registry().unwrap();
    let report = sweep::run(&opts, &Control::default(), &registry).unwrap();
    assert_eq!(report.scores.len(), 2 + 4);
    for s in &report.scores {
        assert!(s.valid_perplexity.is_finite() && s.valid_perplexity > 1.0, "{s:?}");
    }
    // The choice is the lowest score of each method.
    for c in &report.chosen {
        let min =
            report.scores.iter().filter(|s| s.point.method == c.point.method).map(|s| s.valid_perplexity).fold(f64::INFINITY, f64::min);
        assert_eq!(c.valid_perplexity, min);
    }
    // Recorded, and written into the config: the rows resolve to the chosen values.
    let csv = std::fs::read_to_string(record.join("sweep.csv")).unwrap();
    let chosen = sweep::read_chosen_csv(&csv).unwrap();
    assert_eq!(chosen.len(), 2);
    let sources = Sources { file: Some(config.clone()), sets: Vec::new(), env: Some(Vec::new()) };
    let runs = sources.resolve(&["adam".into(), "sam".into()], &registry).unwrap();
    assert_eq!(runs[0].config.optimizer.lr, chosen[0].1);
    assert_eq!(runs[1].config.optimizer.lr, chosen[1].1);
    assert_eq!(param(&runs[1].config.optimizer, "ball.rho"), chosen[1].3);
    // Everything else of the file is kept: its comments and the other rows.
    let after = std::fs::read_to_string(&config).unwrap();
    let fisher = |t: &str| t.lines().find(|l| l.contains("name = \"tram-fisher\"")).map(String::from);
    assert!(after.contains("# --- rows (paper Table 4) ---") && fisher(&after).is_some() && fisher(&after) == fisher(&text), "{after}");
    assert_eq!(after.lines().count(), text.lines().count(), "only the swept rows' optimizer lines change");
    // A grid naming a method the config does not have is refused before anything runs.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "seed = 0\nlr = [1e-3]\n[[methods]]\nname = \"adamax\"\n").unwrap();
    let e = format!("{:#}", sweep::run(&SweepOptions { grid: Some(bad), ..opts.clone() }, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("`adamax`") && e.contains("not a trained row"), "{e}");
}
