//! Running the quickstart again into the same `--out`: earlier results are never replaced
//! without `--force`; `--resume` keeps the rows finished with the same settings; `--force`
//! deletes every seed of the selected rows, so no stale seed joins the table.

use tram_quickstart::Options;
use tram_trainer::Control;

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn rerunning_into_the_same_out_needs_resume_or_force() {
    let registry = tram_plugins::registry().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let opts = Options {
        methods: vec!["adam".into()],
        steps: Some(1),
        seeds: Some(2),
        out: out.clone(),
        sets: vec!["lm.max_eval_blocks=1".into(), "train.max_train_examples=10".into()],
        progress: false,
        ..Default::default()
    };
    tram_quickstart::run(&opts, &Control::default(), &registry).unwrap();
    let adam = out.join("adam/seed-0/results.json");
    let first = read(&adam);
    // Again, without a flag: refused; the results stay.
    let e = format!("{:#}", tram_quickstart::run(&opts, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("already holds the results") && e.contains("--force") && e.contains("--resume"), "{e}");
    assert!(read(&adam) == first);
    // A clash in the last row is found before the first row runs.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(fresh.join("adam/seed-0")).unwrap();
    std::fs::write(fresh.join("adam/seed-0/model"), b"not a directory").unwrap();
    let e =
        format!("{:#}", tram_quickstart::run(&Options { out: fresh.clone(), ..opts.clone() }, &Control::default(), &registry).unwrap_err());
    assert!(e.contains("selected model"), "{e}");
    assert!(!fresh.join("zero-shot").exists(), "the zero-shot row ran before the clash was found");
    // --resume: the finished rows are kept as they are.
    let resume = Control { resume: true, ..Default::default() };
    let report = tram_quickstart::run(&opts, &resume, &registry).unwrap();
    assert!(read(&adam) == first, "--resume trained a finished row again");
    assert!(report.text.contains("Adam"), "{}", report.text);
    // --force: trained again; a seed left from another command is deleted, not tabled.
    std::fs::create_dir_all(out.join("adam/seed-7")).unwrap();
    std::fs::copy(&adam, out.join("adam/seed-7/results.json")).unwrap();
    let force = Control { force: true, ..Default::default() };
    let two = Options { steps: Some(2), ..opts.clone() };
    let e = format!("{:#}", tram_quickstart::run(&two, &resume, &registry).unwrap_err());
    assert!(e.contains("different configuration") && e.contains("train.steps"), "{e}");
    tram_quickstart::run(&two, &force, &registry).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&read(&adam)).unwrap();
    assert_eq!(r["steps"], 2, "--force kept the earlier results");
    assert!(!out.join("adam/seed-7").exists(), "a stale seed survived --force");
}
