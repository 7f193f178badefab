//! Data-parallel `tram lm` with the ranks as threads of one process (`distributed.engine =
//! "threads"`, README "Data-parallel training"; no MPI needed): two ranks of 2 blocks each
//! end with the weights of the single-process run of the same global batch of 4 for every
//! composition the data-parallel issue names, and so do three ranks of unequal shares with
//! gradient accumulation; a job stopped on two ranks resumes in one process to the
//! uninterrupted run's weights; settings the engine cannot honour are refused by name.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

/// `tram lm args`: one process of one candle thread (`ranks` = 0), or that many thread ranks.
fn run(ranks: usize, args: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tram"));
    cmd.args(args);
    if ranks > 0 {
        cmd.args(["--set", "distributed.engine=\"threads\"", "--set", &format!("distributed.ranks={ranks}")]);
    }
    cmd.env_remove("TRAM_PLUGINS")
        .env_remove("TRAM_LOG")
        .env_remove("RUST_LOG")
        .env("RAYON_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn ok(ranks: usize, args: &[String]) {
    let o = run(ranks, args);
    assert!(
        o.status.success(),
        "ranks = {ranks}: {:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn valid(dir: &Path, m: &str) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{m}/seed-0/results.json"))).unwrap()).unwrap();
    r["valid"].clone()
}

#[test]
fn two_thread_ranks_of_batch_2_equal_one_process_of_batch_4_for_every_composition() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("w1"), tmp.path().join("w2"));
    let eval = ["--set", "train.eval_batch_size=1"];
    ok(0, &args(&one, METHODS, 3, &eval));
    ok(2, &args(&two, METHODS, 3, &eval));
    assert_close(&one, &two, METHODS, "2 thread ranks vs one process");
    for m in METHODS.split(',') {
        let (v1, v2) = (valid(&one, m), valid(&two, m));
        assert_eq!(v1["rows"], v2["rows"], "{m}: validation rows, one process {v1} vs two ranks {v2}");
        let (l1, l2) = (v1["loss"].as_f64().unwrap(), v2["loss"].as_f64().unwrap());
        assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "{m}: validation loss, one process {l1} vs two ranks {l2}");
    }
    // Only rank 0 writes: one metrics log, each line once; one results table.
    let log = std::fs::read_to_string(two.join("adam/seed-0/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"type\":\"start\"")).count(), 1, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("\"type\":\"train\"")).count(), 3, "{log}");
    assert!(two.join("results.md").is_file());
}

#[test]
fn three_thread_ranks_of_unequal_shares_with_accumulation_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, three) = (tmp.path().join("w1"), tmp.path().join("w3"));
    let (methods, acc) = ("sam,tram-noise", ["--set", "train.accumulation=2"]);
    ok(0, &args(&one, methods, 2, &acc));
    ok(3, &args(&three, methods, 2, &acc));
    assert_close(&one, &three, methods, "3 thread ranks (1, 1, 2 rows) with accumulation vs one process");
}

#[test]
fn a_job_stopped_on_two_thread_ranks_resumes_in_one_process_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference, out) = (tmp.path().join("ref"), tmp.path().join("out"));
    let m = "tram-noise";
    let every = ["--set", "train.checkpoint_every=1"];
    ok(0, &args(&reference, m, 4, &every));
    let mut stop = every.to_vec();
    stop.extend(["--stop-after", "2"]);
    let o = run(2, &args(&out, m, 4, &stop));
    assert_eq!(o.status.code(), Some(130), "a stop exits 130: {}", String::from_utf8_lossy(&o.stderr));
    let mut resume = every.to_vec();
    resume.push("--resume");
    ok(0, &args(&out, m, 4, &resume));
    assert_close(&reference, &out, m, "stopped on 2 thread ranks, resumed in one process");
}

#[test]
fn settings_thread_ranks_cannot_honour_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let a = args(tmp.path(), "adam", 1, &[]);
    let o = run(5, &a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot be split over 5 ranks") && err.contains("train.batch_size"), "{err}");
    let mut nccl = a.clone();
    nccl.extend(["--set".into(), "distributed.allreduce=\"nccl\"".into()]);
    let o = run(2, &nccl);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("engine = \"threads\" sums on the CPU") && err.contains("nccl"), "{err}");
}
