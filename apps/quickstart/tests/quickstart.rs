//! The quickstart end to end on the bundled corpus and model, reduced to a few steps and two
//! methods, and the bundled checkpoint against an untrained model of the same configuration.

use std::path::Path;
use tram_quickstart::table::{Best, QuickTable};
use tram_quickstart::{repo_path, Options, DATA_DIR, MODEL_DIR};
use tram_trainer::task::{BatchList, EvalSource};
use tram_trainer::Control;

fn positive(x: f64, what: &str) {
    assert!(x.is_finite() && x > 0.0, "{what}: perplexity {x} is not finite and positive");
}

#[test]
fn reduced_quickstart_writes_parseable_tables_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let opts = Options {
        methods: vec!["adam".into(), "tram-noise".into()],
        steps: Some(2),
        seeds: Some(2),
        out: out.clone(),
        sets: vec![
            "lm.max_eval_blocks=3".into(),
            "train.max_train_examples=30".into(),
            "train.eval_every=1".into(),
            // Two steps at the full rate, the last model evaluated: fine-tuning shows.
            "optimizer.schedule={ kind = \"constant\" }".into(),
            "train.select=\"last\"".into(),
        ],
        progress: false,
        ..Default::default()
    };
    let registry = tram_plugins::registry().unwrap();
    let report = tram_quickstart::run(&opts, &Control::default(), &registry).unwrap();

    let domains = tram_quickstart::domains(&repo_path(DATA_DIR)).unwrap();
    assert_eq!(domains, ["bible", "dictionary", "jargon", "manuals", "novels"]);
    let columns = ["bible", "dictionary", "jargon", "manuals", "novels"];
    let rows = ["zero-shot", "adam", "tram-noise"];

    // JSON: the table, rows and columns in order, finite positive perplexities.
    let json = QuickTable::read_json(&out.join("quickstart.json")).unwrap();
    // (serde_json's float parsing may differ in the last bit.)
    assert_eq!((&json.columns, &json.best), (&report.table.columns, &report.table.best));
    for (a, b) in json.rows.iter().zip(&report.table.rows) {
        assert_eq!((&a.method, &a.label, &a.composition, a.steps, &a.seeds), (&b.method, &b.label, &b.composition, b.steps, &b.seeds));
        for (x, y) in a
            .perplexity
            .iter()
            .chain(&a.ci95)
            .chain([&a.zero_shot_average, &a.zero_shot_ci95])
            .zip(b.perplexity.iter().chain(&b.ci95).chain([&b.zero_shot_average, &b.zero_shot_ci95]))
        {
            assert!((x - y).abs() <= 1e-12 * y.abs(), "{x} vs {y}");
        }
    }
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quickstart.json")).unwrap()).unwrap();
    assert_eq!(raw["summary"].as_array().unwrap().len(), 2, "the JSON carries the sentences below the table");
    assert_eq!(json.train_domain, "bible");
    assert_eq!(json.columns, columns);
    assert_eq!(json.rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), rows);
    assert_eq!(json.rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["Pretrained (zero-shot)", "Adam", "TRAM-x"]);
    // The untouched checkpoint is evaluated once; each method on both seeds.
    assert_eq!(json.rows.iter().map(|r| r.seeds.clone()).collect::<Vec<_>>(), [vec![0], vec![0, 1], vec![0, 1]]);
    assert!(!out.join("zero-shot").join("seed-1").exists(), "the zero-shot row was evaluated twice");
    for r in &json.rows {
        assert_eq!(r.perplexity.len(), columns.len());
        assert_eq!(r.ci95.len(), columns.len());
        assert_eq!(r.seed_perplexity.len(), r.seeds.len());
        for (c, name) in columns.iter().enumerate() {
            positive(r.perplexity[c], &format!("{} on {name}", r.method));
            // The mean and the Student-t interval of the seeds' values (t = 12.706 for two seeds).
            let xs: Vec<f64> = r.seed_perplexity.iter().map(|s| s.perplexity[c]).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!((r.perplexity[c] - mean).abs() <= 1e-9 * mean, "{}: the mean of the seeds", r.method);
            if xs.len() == 2 {
                let ci = 12.706 * (xs[0] - xs[1]).abs() / 2f64.sqrt() / 2f64.sqrt();
                assert!((r.ci95[c] - ci).abs() <= 1e-9 * ci.max(1.0), "{}: ci {} vs {ci}", r.method, r.ci95[c]);
            } else {
                assert_eq!(r.ci95[c], 0.0);
            }
        }
        positive(r.zero_shot_average, &r.method);
        for s in &r.seed_perplexity {
            let mean = s.perplexity[1..].iter().sum::<f64>() / 4.0;
            assert!((s.zero_shot_average - mean).abs() < 1e-9 * mean, "the zero-shot average is the mean over the unseen domains");
        }
    }
    // Different seeds train differently (data order, dropout, noise): a real interval.
    assert!(json.rows[1].ci95[0] > 0.0, "the two seeds of Adam gave the same in-domain perplexity");
    assert_eq!(json.rows[0].steps, 0, "the zero-shot row does not train");
    assert_eq!(json.rows[0].composition, "");
    assert_eq!((json.rows[1].steps, json.rows[1].composition.as_str()), (2, "adam"));
    assert_eq!((json.rows[2].steps, json.rows[2].composition.as_str()), (2, "noise+ball+adam"));
    assert_ne!(json.rows[0].perplexity, json.rows[1].perplexity, "fine-tuning changes the model");
    assert_eq!(json.best.len(), columns.len() + 1);
    for b in &json.best {
        match b {
            Best::Row { row } => assert!(matches!(row, 1 | 2), "the best of a column is a fine-tuned row, got {b:?}"),
            Best::Tied { rows } => assert!(rows.len() >= 2 && rows.iter().all(|r| matches!(r, 1 | 2)), "{b:?}"),
            Best::None => panic!("every column has finite values"),
        }
    }

    // CSV: a header and one line per row, numbers that parse: per column the mean and its interval.
    let csv = std::fs::read_to_string(out.join("quickstart.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + rows.len());
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..4], ["method", "label", "composition", "seeds"]);
    let mut expect: Vec<String> = columns.iter().flat_map(|c| [c.to_string(), format!("{c}_ci95")]).collect();
    expect.extend(["zero_shot_average".into(), "zero_shot_average_ci95".into()]);
    assert_eq!(&header[4..16], expect);
    for ((line, row), r) in lines[1..].iter().zip(rows).zip(&json.rows) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], row);
        assert_eq!(f[3], if row == "zero-shot" { "0" } else { "0 1" });
        for (k, x) in f[4..16].iter().enumerate() {
            let v: f64 = x.parse().unwrap();
            let (m, ci) = r.value(k / 2);
            let want = if k % 2 == 0 { m } else { ci };
            // (the JSON's floats may differ from the CSV's in the last bit)
            assert!((v - want).abs() <= 1e-12 * want.abs().max(1.0), "{row}: {}: {v} vs {want}", header[4 + k]);
        }
    }

    // Markdown and the terminal text: every row and column, intervals, the best line, the finding.
    let md = std::fs::read_to_string(out.join("quickstart.md")).unwrap();
    let adam = &json.rows[1];
    for needle in [
        "| method | bible (in-domain) | dictionary | jargon | manuals | novels | ZS Avg. |",
        "| Pretrained (zero-shot) |",
        &format!("| Adam | {:.2} ± {:.2} |", adam.perplexity[0], adam.ci95[0]),
        "| TRAM-x |",
        "| *best* |",
        "mean ± 95% CI (Student t) over 2 seeds (the untouched checkpoint once)",
        "Finding:",
    ] {
        assert!(md.contains(needle), "quickstart.md lacks `{needle}`:\n{md}");
    }
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 2 + rows.len());
    assert!(report.text.contains("TRAM-x") && report.text.contains(" ± ") && report.text.contains("Finding:"), "{}", report.text);
    assert!(report.text.lines().any(|l| l.starts_with("best ")), "{}", report.text);

    // Plots: an SVG with the labels and the intervals, a PNG of the documented size.
    let svg = std::fs::read_to_string(out.join("quickstart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in ["Adam", "TRAM-x", "Pretrained (zero-shot)", &format!("{:.1} ± {:.1}", adam.perplexity[0], adam.ci95[0])] {
        assert!(svg.contains(label), "the SVG lacks the label {label}");
    }
    let png = image::open(out.join("quickstart.png")).unwrap();
    assert_eq!((png.width(), png.height()), tram_quickstart::plot::SIZE);
    let rgb = png.to_rgb8();
    assert!(rgb.pixels().any(|p| p.0 != [255, 255, 255]), "the PNG is blank");

    // `tram quickstart --table` rebuilds the same table from the results on disk.
    let (again, _) = tram_quickstart::rebuild(&out).unwrap();
    assert_eq!(again, report.table);

    // The trainer's own outputs are there too.
    for r in rows {
        assert!(out.join(r).join("seed-0").join("results.json").is_file());
    }
    for r in &rows[1..] {
        assert!(out.join(r).join("seed-1").join("results.json").is_file());
    }
    for f in ["results.md", "results.csv", "results.json"] {
        assert!(out.join(f).is_file());
    }
    for f in ["quickstart.md", "quickstart.csv", "quickstart.json", "quickstart.svg", "quickstart.png"] {
        assert!(report.files.contains(&out.join(f)), "{f} is reported");
    }
}

#[test]
fn unknown_methods_and_domains_are_errors() {
    let registry = tram_plugins::registry().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { methods: vec!["nope".into()], out: dir.path().into(), progress: false, ..Default::default() };
    let e = tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err().to_string();
    assert!(e.contains("method `nope`") && e.contains("tram-fisher") && e.contains("unknown component `nope`"), "{e}");
    let opts = Options { train_domain: Some("poetry".into()), out: dir.path().into(), progress: false, ..Default::default() };
    let e = format!("{:#}", tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("`poetry` is not a domain") && e.contains("novels"), "{e}");
    // `--set seed=N` would be ignored beside the config's `seeds`: refused, naming --seeds.
    let opts = Options { sets: vec!["seed=1".into()], out: dir.path().into(), progress: false, ..Default::default() };
    let e = format!("{:#}", tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("seed=1") && e.contains("--seeds"), "{e}");
    let opts = Options { seeds: Some(0), out: dir.path().into(), progress: false, ..Default::default() };
    let e = format!("{:#}", tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("--seeds 0"), "{e}");
}

/// The quickstart trains with thread ranks unless told otherwise (`--set`), or unless an MPI
/// launcher started it (its ranks are then the processes).
#[test]
fn runs_train_as_thread_ranks_unless_the_options_say_otherwise() {
    use tram_trainer::config::DistributedEngine;
    let registry = tram_plugins::registry().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = |sets: Vec<String>| {
        let opts = Options { sets, out: dir.path().into(), progress: false, ..Default::default() };
        let (sources, _) = tram_quickstart::sources(&opts).unwrap();
        let runs = sources.resolve(&[], &registry).unwrap();
        assert!(runs.len() > 1);
        let engines: Vec<DistributedEngine> = runs.iter().map(|r| r.config.distributed.engine).collect();
        assert!(engines.iter().all(|e| *e == engines[0]), "{engines:?}");
        engines[0]
    };
    assert_eq!(engine(Vec::new()), DistributedEngine::Threads);
    assert_eq!(engine(vec!["distributed.engine=\"single\"".into()]), DistributedEngine::Single);
}

/// `--methods` took only the config's row names; any composition or alias, a plugin's
/// included, is now an extra row labelled with it.
#[test]
fn methods_may_be_any_composition_or_alias_a_plugins_included() {
    let mut registry = tram_plugins::registry().unwrap();
    registry.load_plugin(tram_tests::example_plugin()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { out: dir.path().into(), progress: false, ..Default::default() };
    let (sources, _) = tram_quickstart::sources(&opts).unwrap();
    let rows = sources.run_names().unwrap();
    let methods: Vec<String> =
        ["adam", "tram-noise-renyi", "noise(sigma=1e-4,scale=2)+ball+sgd", "tram-noise-renyi"].map(String::from).to_vec();
    let (selected, extra) = tram_quickstart::select_methods(&methods, &rows, &registry).unwrap();
    assert_eq!(selected, ["zero-shot", "adam", "tram-noise-renyi", "noise_sigma_1e-4_scale_2__ball_sgd"]);
    assert_eq!(extra.len(), 2, "{extra:?}");
    let runs = sources.resolve_with_runs(&extra, &selected, &registry).unwrap();
    let got: Vec<(&str, &str, &str)> = runs.iter().map(|r| (r.name.as_str(), r.label.as_str(), r.config.optimizer.name.as_str())).collect();
    assert_eq!(
        got[2..],
        [
            ("tram-noise-renyi", "tram-noise-renyi", "tram-noise-renyi"),
            ("noise_sigma_1e-4_scale_2__ball_sgd", "noise(sigma=1e-4,scale=2)+ball+sgd", "noise(sigma=1e-4,scale=2)+ball+sgd")
        ]
    );
    tram_trainer::rows::check_labels(&sources, &runs).unwrap();
    // Without the plugin its alias is not a method: the error names both kinds of method.
    let e = tram_quickstart::select_methods(&methods, &rows, &tram_plugins::registry().unwrap()).unwrap_err().to_string();
    assert!(e.contains("tram-noise-renyi") && e.contains("nor a composition or alias") && e.contains("tram-fisher"), "{e}");
}

/// Test perplexity of `model` on (up to) 24 evenly spaced blocks of 128 tokens of a domain.
fn perplexity(model: &dyn tram_models::Pretrained, tokenizer: &tram_hub::Tokenizer, domain: &str) -> f64 {
    let text = std::fs::read_to_string(repo_path(DATA_DIR).join(domain).join("test.txt")).unwrap();
    let (blocks, _) = tram_data::lm::token_blocks(text.lines(), tokenizer, 128).unwrap();
    assert!(blocks.len() >= 24, "{domain}: only {} test blocks", blocks.len());
    let picked: Vec<Vec<u32>> = (0..24).map(|i| blocks[i * blocks.len() / 24].clone()).collect();
    let batches: Vec<tram::Batch> = picked.chunks(8).map(|c| tram_data::lm::batch(c, &candle_core::Device::Cpu).unwrap()).collect();
    let source = BatchList(batches, picked.len());
    assert_eq!(source.len(), 24);
    tram_trainer::eval::evaluate(model, &source).unwrap().perplexity
}

#[test]
fn bundled_checkpoint_beats_an_untrained_model_of_its_configuration_on_every_domain() {
    let dir = repo_path(MODEL_DIR);
    assert!(Path::new(&dir).join("model.safetensors").is_file(), "the bundled model is missing from {}", dir.display());
    let files = tram_hub::ModelSource::local(&dir).files(&tram_hub::HubOptions::from_env());
    let tokenizer = files.tokenizer().unwrap();
    let config = files.config().unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["vocab_size"].as_u64().unwrap() as usize, tokenizer.get_vocab_size(true), "tokenizer and model agree");
    assert_eq!(tokenizer.token_to_id(tram_quickstart::tokenizer::EOS), Some(0));
    let opts = tram_models::LoadOptions::default();
    let pretrained = tram_hub::load_model_from(&files, &opts).unwrap();
    let untrained = tram_hub::init_model_from(&files, &opts).unwrap();
    assert_eq!(pretrained.params().elem_count(), untrained.params().elem_count());
    for domain in tram_quickstart::domains(&repo_path(DATA_DIR)).unwrap() {
        let p = perplexity(pretrained.as_ref(), &tokenizer, &domain);
        let u = perplexity(untrained.as_ref(), &tokenizer, &domain);
        positive(p, &domain);
        positive(u, &domain);
        // An untrained model is close to uniform over the vocabulary; pretraining must do far better.
        assert!(u > 1000.0, "{domain}: untrained perplexity {u}");
        assert!(p < u / 10.0, "{domain}: pretrained perplexity {p} is not well below the untrained {u}");
    }
}

#[test]
fn the_tokenizer_is_deterministic_and_byte_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corpus");
    for (d, text) in [("a", "the cat sat on the mat\nthe dog sat on the log\n"), ("b", "fn main() { println!(\"hi\"); }\nlet x = 1;\n")] {
        std::fs::create_dir_all(data.join(d)).unwrap();
        std::fs::write(data.join(d).join("train.txt"), text.repeat(20)).unwrap();
    }
    let (one, two) = (dir.path().join("1.json"), dir.path().join("2.json"));
    let n = tram_quickstart::tokenizer::build(&data, 300, &one, None).unwrap();
    tram_quickstart::tokenizer::build(&data, 300, &two, None).unwrap();
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap(), "same corpus, same tokenizer");
    assert!(n <= 300 && n > 257, "{n}");
    let tok = tram_hub::load_tokenizer(&one).unwrap();
    assert_eq!(tok.token_to_id(tram_quickstart::tokenizer::EOS), Some(0));
    // Byte-level: any text round-trips, even characters never seen in training.
    let text = "Ünïcödé — θ₀ & the cat";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert!(tram_quickstart::tokenizer::build(&data, 100, &one, None).is_err(), "too small a vocabulary");
}

#[test]
fn pretraining_starts_from_a_random_initialisation_on_the_mixture_of_every_domain() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pretrain");
    let install = dir.path().join("installed");
    let opts = tram_quickstart::PretrainOptions {
        config: None,
        sets: vec![
            format!("out={}", serde_json::to_string(&out.display().to_string()).unwrap()),
            format!("model={}", serde_json::to_string(&repo_path(MODEL_DIR).display().to_string()).unwrap()),
            format!("data={}", serde_json::to_string(&repo_path(DATA_DIR).display().to_string()).unwrap()),
            "train.steps=2".into(),
            "train.batch_size=2".into(),
            "train.eval_every=1".into(),
            "train.checkpoint_every=0".into(),
            "train.max_train_examples=40".into(),
            "lm.max_eval_blocks=2".into(),
            "train.progress=false".into(),
        ],
        install: Some(install.clone()),
    };
    let registry = tram_plugins::registry().unwrap();
    let model = tram_quickstart::pretrain(&opts, &Control::default(), &registry).unwrap();
    let result = tram_quickstart::table::read_result(&out.join("pretrain").join("seed-0")).unwrap();
    assert_eq!(result.steps, 2);
    let cols: Vec<(&str, bool)> = result.columns.iter().map(|c| (c.name.as_str(), c.in_domain)).collect();
    // Four genres pretrained on; `bible`, the quickstart's fine-tuning domain, held out.
    assert_eq!(cols, [("dictionary", true), ("jargon", true), ("manuals", true), ("novels", true), ("bible", false)]);
    assert_eq!(result.config["init"], "random");
    for c in &result.columns {
        // Two steps from a random start: still close to uniform over the 4096 tokens.
        assert!(c.metrics.perplexity > 1000.0, "{}: {}", c.name, c.metrics.perplexity);
        assert_eq!(c.metrics.rows, 2 * 128, "{}: two blocks of 128 tokens", c.name);
    }
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(std::fs::read(model.join(f)).unwrap(), std::fs::read(install.join(f)).unwrap(), "{f} installed");
    }
    let files = tram_hub::ModelSource::local(&install).files(&tram_hub::HubOptions::from_env());
    tram_hub::load_model_from(&files, &tram_models::LoadOptions::default()).unwrap();
}

#[test]
fn a_diverged_method_is_a_marked_row_and_the_other_methods_still_run() {
    // The repro, reduced: `--methods adam,sam --steps 3 --set optimizer.lr=1e3`.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let opts = Options {
        methods: vec!["adam".into(), "sam".into()],
        steps: Some(3),
        seeds: Some(1),
        out: out.clone(),
        sets: vec![
            "optimizer.lr=1e3".into(),
            "lm.max_eval_blocks=2".into(),
            "train.max_train_examples=30".into(),
            "optimizer.schedule={ kind = \"constant\" }".into(),
            "train.select=\"last\"".into(),
        ],
        progress: false,
        ..Default::default()
    };
    let registry = tram_plugins::registry().unwrap();
    let report = tram_quickstart::run(&opts, &Control::default(), &registry).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let t = &report.table;
    assert_eq!(t.rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["zero-shot", "adam", "sam"]);
    let diverged: Vec<&tram_quickstart::table::QuickRow> = t.rows.iter().filter(|r| r.diverged).collect();
    assert!(!diverged.is_empty(), "lr 1e3 diverges: {:?}", t.rows);
    for (i, r) in t.rows.iter().enumerate() {
        let finite = r.perplexity.iter().all(|p| p.is_finite());
        assert_eq!(r.diverged, !finite, "{r:?}");
        if r.diverged {
            assert!(
                t.best.iter().all(|b| b.row() != Some(i) && !matches!(b, Best::Tied { rows } if rows.contains(&i))),
                "a diverged row is never best: {:?}",
                t.best
            );
            assert!(r.marked_label().ends_with('†'));
        }
    }
    // Every table shows it: terminal text, Markdown, CSV, JSON (strings, never null), the plot.
    let label = diverged[0].label.as_str();
    let line = report.text.lines().find(|l| l.starts_with(&format!("{label} †"))).unwrap_or_else(|| panic!("{}", report.text));
    assert!(line.contains('∞') || line.contains("diverged"), "{line}");
    assert!(report.text.contains(&format!("† {label}: diverged")), "{}", report.text);
    let md = std::fs::read_to_string(out.join("quickstart.md")).unwrap();
    assert!(md.contains(&format!("| {label} † |")) && !md.lines().any(|l| l.contains(&format!("| {label} †")) && l.contains("**")), "{md}");
    let csv = std::fs::read_to_string(out.join("quickstart.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with(&diverged[0].method) && l.contains("diverged")), "{csv}");
    let json = std::fs::read_to_string(out.join("quickstart.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for r in v["rows"].as_array().unwrap() {
        let cells: Vec<&serde_json::Value> = r["perplexity"].as_array().unwrap().iter().chain([&r["zero_shot_average"]]).collect();
        assert!(cells.iter().all(|c| c.is_number() || *c == "inf" || *c == "nan"), "never null: {r}");
        assert_eq!(r["diverged"], cells.iter().any(|c| c.is_string()), "{r}");
    }
    let back: QuickTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back.best, t.best);
    let svg = std::fs::read_to_string(out.join("quickstart.svg")).unwrap();
    // (SVG text elements hold their text on a line of its own.)
    assert!(svg.lines().any(|l| l.trim() == "inf" || l.trim() == "diverged"), "the plot's legend shows the diverged values");
    // `--table` rebuilds it from the files on disk; the trainer's own table has it too.
    let (again, _) = tram_quickstart::rebuild(&out).unwrap();
    assert_eq!(again.best, t.best);
    assert!(std::fs::read_to_string(out.join("results.md")).unwrap().contains(&format!("| {label} †")));
}

#[test]
fn settings_that_empty_the_evaluation_sets_are_refused_before_any_row_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let registry = tram_plugins::registry().unwrap();
    for set in ["lm.max_eval_blocks=0", "train.max_eval_examples=0"] {
        let opts = Options {
            methods: vec!["adam".into()],
            steps: Some(1),
            out: out.clone(),
            sets: vec![set.into()],
            progress: false,
            ..Default::default()
        };
        let e = format!("{:#}", tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err());
        assert!(e.contains(&format!("`{}` = 0", set.trim_end_matches("=0"))), "{set}: {e}");
        assert!(!out.join("zero-shot").exists(), "{set}: a row ran");
    }
}

/// A `results.json` of the quickstart's shape: perplexities per column, the step counts.
#[allow(clippy::too_many_arguments)]
fn result(run: &str, row: usize, seed: u64, ppl: [f64; 3], skipped: u64, no_ascent: u64, failed: bool) -> tram_trainer::results::RunResult {
    let col = |name: &str, in_domain: bool, p: f64| {
        serde_json::json!({"name": name, "label": name, "in_domain": in_domain,
            "metrics": {"loss": p.ln(), "perplexity": p, "accuracy": 10.0, "rows": 100}})
    };
    let mut v = serde_json::json!({
        "app": "lm", "run": run, "label": run.to_uppercase(), "row": row, "seed": seed, "steps": if run == "zero-shot" { 0 } else { 4 },
        "selected_step": 4, "selection": "last", "best_valid_loss": null, "valid": null,
        "columns": [col("novels", true, ppl[0]), col("bible", false, ppl[1]), col("jargon", false, ppl[2])],
        "optimizer": {"composition": "ball+adam", "lr": 1e-3}, "skipped_steps": skipped, "no_ascent_steps": no_ascent,
        "train_seconds": 1.0, "eval_seconds": 1.0, "config": {}
    });
    if failed {
        v["failed"] = "every one of the 4 steps was skipped".into();
    }
    serde_json::from_value(v).unwrap()
}

/// Seeds 0 and 1 of a row: `ppl` and `ppl + 0.1` (a 95% interval of ± 0.64 for two seeds).
fn two_seeds(run: &str, row: usize, ppl: [f64; 3], skipped: u64, no_ascent: u64, failed: bool) -> [tram_trainer::results::RunResult; 2] {
    [result(run, row, 0, ppl, skipped, no_ascent, failed), result(run, row, 1, ppl.map(|p| p + 0.1), skipped, no_ascent, failed)]
}

#[test]
fn failed_rows_are_never_best_and_skips_are_marked() {
    // SAM with every step skipped keeps the starting model, better here than Adam's: not best.
    let rs: Vec<_> = [
        two_seeds("zero-shot", 0, [100.0, 100.0, 100.0], 0, 0, false),
        two_seeds("adam", 1, [90.0, 120.0, 130.0], 0, 0, false),
        two_seeds("sam", 2, [100.0, 100.0, 100.0], 4, 0, true),
        two_seeds("tram", 3, [95.0, 110.0, 140.0], 1, 2, false),
    ]
    .into_iter()
    .flatten()
    .collect();
    let t = QuickTable::from_results("novels", &rs).unwrap();
    // The zero-shot averages, Adam's (120 + 130) / 2 and TRAM's (110 + 140) / 2, are equal: tied.
    assert_eq!(t.best, [Best::Row { row: 1 }, Best::Row { row: 3 }, Best::Row { row: 1 }, Best::Tied { rows: vec![1, 3] }], "{:?}", t.best);
    let (m, ci) = t.rows[1].value(0);
    assert!((m - 90.05).abs() < 1e-9 && (ci - 12.706 * 0.05).abs() < 1e-9, "{m} ± {ci}");
    let text = t.text();
    assert!(text.lines().any(|l| l.starts_with("SAM ‡ ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("TRAM ‡§ ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("best ") && l.trim_end().ends_with("tied")), "{text}");
    assert!(text.contains("tied: ZS Avg.: ADAM, TRAM"), "{text}");
    assert!(text.contains("‡ SAM: 8 of 8 steps skipped (over 2 seeds)") && text.contains("FAILED"), "{text}");
    assert!(text.contains("‡ TRAM: 2 of 8 steps skipped") && text.contains("§ TRAM: 4 of 8 steps without ascent"), "{text}");
    let md = t.markdown();
    assert!(!md.lines().any(|l| l.starts_with("| SAM") && l.contains("**")), "{md}");
    assert!(md.contains("| ADAM | **90.05 ± 0.64** |"), "{md}");
    let csv = t.csv();
    assert!(csv.lines().any(|l| l.starts_with("sam,") && l.ends_with(",8,0,failed; 8/8 skipped")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("adam,") && l.contains(",novels jargon,ZS Avg.,")), "{csv}");
}

#[test]
fn the_finding_is_computed_from_the_intervals() {
    // TRAM's zero-shot average (110, 111, 112) lies below Adam's and SAM's beyond the intervals.
    let row = |run: &str, row: usize, zs: [f64; 3]| -> Vec<tram_trainer::results::RunResult> {
        (0..3).map(|s| result(run, row, s, [50.0, zs[s as usize], zs[s as usize]], 0, 0, false)).collect()
    };
    let mut rs = vec![result("zero-shot", 0, 0, [80.0, 100.0, 100.0], 0, 0, false)];
    rs.extend(row("adam", 1, [120.0, 121.0, 122.0]));
    rs.extend(row("sam", 2, [119.0, 120.0, 121.0]));
    rs.extend(row("tram-prev", 3, [110.0, 111.0, 112.0]));
    let t = QuickTable::from_results("novels", &rs).unwrap();
    let f = t.finding();
    assert!(f.contains("beats ADAM's and SAM's beyond the intervals"), "{f}");
    assert!(f.contains("1 of 1 TRAM variants") && !f.contains("learning rates differ"), "{f}");
    // A winner trained at another learning rate than the baselines: the confound is named.
    let mut lr = rs.clone();
    for r in lr.iter_mut().filter(|r| r.run == "tram-prev") {
        r.optimizer["lr"] = 1e-4.into();
    }
    let f = QuickTable::from_results("novels", &lr).unwrap().finding();
    assert!(f.contains("learning rates differ (lr: TRAM-PREV 0.0001, ADAM 0.001, SAM 0.001)"), "{f}");
    // The effect line: the in-domain gain and the forgetting against the untouched checkpoint.
    let s = t.summary();
    assert!(s[0].contains("80.00 → 50.00 ± 0.00 (-30.00)") && s[0].contains("100.00 → 121.00 ± 2.48 (+21.00"), "{}", s[0]);
    // Overlapping intervals: no claim.
    let mut rs2 = rs.clone();
    rs2.retain(|r| r.run != "tram-prev");
    rs2.extend(row("tram-prev", 3, [118.0, 120.0, 122.0]));
    let f = QuickTable::from_results("novels", &rs2).unwrap().finding();
    assert!(f.contains("does not beat") && f.contains("the intervals overlap"), "{f}");
    // One seed: no intervals, no claim.
    let one: Vec<_> = rs.iter().filter(|r| r.seed == 0).cloned().collect();
    let f = QuickTable::from_results("novels", &one).unwrap().finding();
    assert!(f.contains("with one seed there are no intervals"), "{f}");
}
