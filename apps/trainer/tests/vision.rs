//! `tram vision` end to end on a tiny ViT and tiny PNG datasets: a TRAM variant on SGD and the
//! SGD baseline over two seeds, mean ± 95% CI, the final model, exact resume.

mod common;

use common::*;
use serde_json::Value;
use tram_trainer::apps::App;
use tram_trainer::cli::run_sources;
use tram_trainer::trainer::Control;

fn config(out: &std::path::Path) -> String {
    format!(
        r#"
model = "{VIT}"
data = "{IMAGES}"
out = "{out}"
seeds = [0, 1]

[optimizer]
name = "sgd"
lr = 0.05
schedule = {{ kind = "cosine", total = 0 }}

[train]
epochs = 1
batch_size = 4
select = "last"
checkpoint_every = 1
progress = false

[vision]
subset = "plain_text"
image_column = "img"
label_column = "label"
num_labels = 3
dataset_label = "Tiny"

[[runs]]
name = "sgd"
label = "SGD"

[[runs]]
name = "tram-prev"
label = "TRAM-θ_{{t-1}}"
optimizer = {{ name = "tram-prev+sgd" }}
"#,
        out = out.display()
    )
}

#[test]
fn vision_end_to_end_mean_and_confidence_interval() {
    fixtures();
    let dir = scratch("vision-e2e");
    let out = dir.join("out");
    let cfg = write_config(&dir, &config(&out));
    let s = run_sources(App::Vision, &sources(&cfg, &[]), &[], false, &Control::default(), &registry()).unwrap();
    let md = &s.tables[0];
    assert!(
        md.contains("| method | Tiny | seeds |") && md.contains("| SGD |") && md.contains("| TRAM-θ_{t-1} |") && md.contains(" ± "),
        "{md}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(out.join("tram-prev/seed-1/results.json")).unwrap()).unwrap();
    // 12 training images in batches of 4, one epoch: 3 steps; the cosine schedule spans them.
    assert_eq!(r["steps"], 3);
    assert_eq!(r["selection"], "last");
    assert_eq!(r["optimizer"]["composition"], "prev+ball+sgd");
    assert_eq!(r["optimizer"]["schedule"]["total"], 3);
    assert_eq!(r["columns"][0]["metrics"]["rows"], 6);
    let table: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let cell = &table["table"]["rows"][1]["cells"]["Tiny"];
    assert_eq!(cell["n"], 2);
    let (a, b) = (
        serde_json::from_slice::<Value>(&std::fs::read(out.join("tram-prev/seed-0/results.json")).unwrap()).unwrap()["columns"][0]
            ["metrics"]["accuracy"]
            .as_f64()
            .unwrap(),
        r["columns"][0]["metrics"]["accuracy"].as_f64().unwrap(),
    );
    let sd = ((a - b).powi(2) / 2.0).sqrt();
    assert!((cell["ci95"].as_f64().unwrap() - 12.706 * sd / 2f64.sqrt()).abs() < 1e-9, "{cell}");

    // Resume after an interruption gives the same metrics.
    let set = format!("out={}", dir.join("out2").display());
    let stop = Control { stop_after: Some(2), ..Default::default() };
    assert!(run_sources(App::Vision, &sources(&cfg, &[&set]), &["tram-prev".into()], false, &stop, &registry()).unwrap().interrupted);
    let resume = Control { resume: true, ..Default::default() };
    run_sources(App::Vision, &sources(&cfg, &[&set]), &["tram-prev".into()], false, &resume, &registry()).unwrap();
    for seed in 0..2 {
        let p = format!("tram-prev/seed-{seed}/metrics.jsonl");
        assert_eq!(std::fs::read_to_string(out.join(&p)).unwrap(), std::fs::read_to_string(dir.join("out2").join(&p)).unwrap());
    }
}

#[test]
fn vision_undecodable_images_are_skipped_and_bad_labels_are_errors() {
    fixtures();
    let dir = scratch("vision-bad");
    let local = dir.join("data");
    let mut rows = tram_data::fixtures::image_records(
        "img",
        "label",
        &[
            (tram_data::fixtures::png_solid(8, 8, [1, 2, 3]), 0),
            (b"not an image".to_vec(), 1),
            (tram_data::fixtures::png_solid(8, 8, [9, 9, 9]), 2),
        ],
    );
    rows.push(tram_data::Record::from([
        ("img".to_string(), tram_data::fixtures::image_field(None, "gone.png")),
        ("label".to_string(), tram_data::Field::Int(1)),
    ]));
    tram_data::fixtures::write_parquet(&local.join("train.parquet"), &rows).unwrap();
    tram_data::fixtures::write_parquet(&local.join("test.parquet"), &rows).unwrap();
    let cfg = write_config(&dir, &config(&dir.join("out")));
    let reg = registry();
    let data = format!("data={}", local.display());
    let runs = sources(&cfg, &[&data, "vision.subset=\"\""]).resolve(&["sgd".to_string()], &reg).unwrap();
    let p = App::Vision.prepare(&runs[0], 0).unwrap();
    assert_eq!(p.data.tests[0].source.len(), 2);
    assert_eq!(p.data.skipped.values().map(|s| s.undecodable).sum::<usize>(), 4, "{:?}", p.data.skipped);
    let runs = sources(&cfg, &[&data, "vision.subset=\"\"", "vision.num_labels=2"]).resolve(&["sgd".to_string()], &reg).unwrap();
    let e = App::Vision.prepare(&runs[0], 0).err().unwrap().to_string();
    assert!(e.contains("vision.num_labels"), "{e}");
}

/// The encoders' padding masks and token types, and the image pipeline, split over thread ranks
/// (each rank its share of the global micro-batch and of every evaluation set).
#[test]
fn vision_thread_ranks_equal_one_process() {
    fixtures();
    let dir = scratch("vision-thread-ranks");
    let cfg = write_config(&dir, &config(&dir.join("out")));
    thread_ranks_equal_one_process(App::Vision, &dir, &cfg, "tram-prev");
}
