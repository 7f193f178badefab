//! Data-parallel `tram lm` under Open MPI (README "Data-parallel training"; needs the `mpi`
//! feature and `mpirun`, which `.ci/run` installs): `mpirun -np 2` runs on the bundled
//! quickstart model and data, each rank with 2 of the global micro-batch's 4 blocks, end with
//! the weights of the single-process run of the same global batch for every composition the
//! issue names (noise and dropout included), with and without accumulation, and so do 3 ranks
//! of unequal shares (the reduce-and-broadcast path); a job SIGKILLed
//! (every process) after a checkpoint resumes with the other world size to the uninterrupted
//! run's weights, from its last complete checkpoint, and so does one stopped on 2 ranks; a
//! rank killed or hung mid-run fails the job with a message within 60 s, and no process of a
//! job outlives it.
//!
//! Without the `mpi` feature the tests only say that they are skipped.

#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_tests_need_the_mpi_feature() {
    eprintln!("skipped: tram-cli built without the `mpi` feature (run `cargo test -p tram-cli --features mpi --test mpi`)");
}

#[cfg(feature = "mpi")]
mod common;

#[cfg(feature = "mpi")]
mod mpi {
    use super::common::*;
    use std::path::Path;
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    fn command(world: usize, args: &[String]) -> Command {
        let tram = env!("CARGO_BIN_EXE_tram");
        let mut cmd = if world == 1 {
            Command::new(tram)
        } else {
            let mut c = Command::new("mpirun");
            // CI runs as root on two cores: `--allow-run-as-root`, `--oversubscribe`.
            c.args(["--allow-run-as-root", "--oversubscribe", "-np", &world.to_string(), "-x", "DP_TEST_TAG", tram]);
            c
        };
        cmd.args(args)
            .env_remove("TRAM_PLUGINS")
            .env_remove("TRAM_LOG")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .env("CANDLE_NUM_THREADS", "1")
            .env("RAYON_NUM_THREADS", "1")
            .env("HF_HUB_OFFLINE", "1");
        cmd
    }

    fn run(world: usize, args: &[String]) -> Output {
        command(world, args).output().expect("running tram (is `mpirun` installed? .ci/run installs Open MPI)")
    }

    fn ok(world: usize, args: &[String]) {
        let o = run(world, args);
        assert!(
            o.status.success(),
            "W = {world}: {:?}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn two_ranks_of_batch_2_equal_one_process_of_batch_4_for_every_composition() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("w1"), tmp.path().join("w2"));
        // Evaluation batches of one block: the two validation blocks are shared by the ranks.
        let eval = ["--set", "train.eval_batch_size=1"];
        ok(1, &args(&one, METHODS, 3, &eval));
        ok(2, &args(&two, METHODS, 3, &eval));
        assert_close(&one, &two, METHODS, "W=2 vs W=1");
        // The ranks evaluate half the validation set each and sum: the whole set's metrics.
        for m in METHODS.split(',') {
            let valid = |dir: &Path| -> serde_json::Value {
                let r: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(dir.join(format!("{m}/seed-0/results.json"))).unwrap()).unwrap();
                r["valid"].clone()
            };
            let (v1, v2) = (valid(&one), valid(&two));
            assert_eq!(v1["rows"], v2["rows"], "{m}: validation rows, W=1 {v1} vs W=2 {v2}");
            let (l1, l2) = (v1["loss"].as_f64().unwrap(), v2["loss"].as_f64().unwrap());
            assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "{m}: validation loss W=1 {l1} vs W=2 {l2}");
        }
        // Only rank 0 writes: one metrics log, each line once.
        let log = std::fs::read_to_string(two.join("adam/seed-0/metrics.jsonl")).unwrap();
        assert_eq!(log.lines().filter(|l| l.contains("\"type\":\"start\"")).count(), 1, "{log}");
        assert_eq!(log.lines().filter(|l| l.contains("\"type\":\"train\"")).count(), 3, "{log}");
    }

    /// Three ranks take the other reduction path (a reduce at rank 0 and a broadcast, where two
    /// ranks exchange with one all-reduce) and unequal shares of the 4 blocks (1, 1, 2 rows),
    /// which the row weighting must undo.
    #[test]
    fn three_ranks_with_unequal_shares_equal_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, three) = (tmp.path().join("w1"), tmp.path().join("w3"));
        let methods = "sam,tram-noise";
        ok(1, &args(&one, methods, 2, &[]));
        ok(3, &args(&three, methods, 2, &[]));
        assert_close(&one, &three, methods, "W=3 vs W=1");
    }

    #[test]
    fn two_ranks_equal_one_process_with_gradient_accumulation() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("w1"), tmp.path().join("w2"));
        let acc = ["--set", "train.accumulation=2"];
        ok(1, &args(&one, METHODS, 2, &acc));
        ok(2, &args(&two, METHODS, 2, &acc));
        assert_close(&one, &two, METHODS, "accumulation, W=2 vs W=1");
    }

    /// The compositions of the resume tests: a noise one and one with step state (θ_{t−1}).
    const RESUMED: &str = "tram-noise,tram-prev";
    /// Steps of the resume tests' runs; the first run is ended after step 2.
    const RESUME_STEPS: u64 = 6;

    /// The uninterrupted single-process runs the resumed ones must end at.
    fn uninterrupted(out: &Path, methods: &str) {
        ok(1, &args(out, methods, RESUME_STEPS, &["--set", "train.checkpoint_every=1"]));
    }

    /// The step of the checkpoint `latest` names in a run directory, if it names one.
    fn latest_step(seed_dir: &Path) -> Option<u64> {
        let name = std::fs::read_to_string(seed_dir.join("checkpoints/latest")).ok()?;
        name.trim().strip_prefix("step-")?.parse().ok()
    }

    /// The entries of a directory whose names start with a dot (the writers' temporaries), but
    /// the run's lock file.
    fn hidden(dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut names: Vec<String> =
            entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with('.') && n != ".lock").collect();
        names.sort();
        names
    }

    /// Each step's `train` line is in the metrics log exactly once, in order.
    fn assert_one_line_per_step(seed_dir: &Path, steps: u64, what: &str) {
        let log = std::fs::read_to_string(seed_dir.join("metrics.jsonl")).unwrap();
        let logged: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("\"type\":\"train\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect();
        assert_eq!(logged, (1..=steps).collect::<Vec<_>>(), "{what}: the metrics log's train lines\n{log}");
    }

    #[test]
    fn a_job_killed_on_one_world_size_resumes_on_the_other_to_the_uninterrupted_weights() {
        let tmp = tempfile::tempdir().unwrap();
        let reference = tmp.path().join("ref");
        uninterrupted(&reference, RESUMED);
        for (first, then) in [(2, 1), (1, 2)] {
            let out = tmp.path().join(format!("w{first}-w{then}"));
            // One method per command: the kill ends the command.
            for m in RESUMED.split(',') {
                let what = format!("{m} killed at W={first}, resumed at W={then}");
                let seed = out.join(m).join("seed-0");
                let tag = format!("resume-{}-{first}-{m}", std::process::id());
                let a = args(&out, m, RESUME_STEPS, &["--set", "train.checkpoint_every=1"]);
                let mut job = Job::start(first, &a, &tag);
                // Wait until the checkpoint of step 2 is complete (`latest` is written, atomically,
                // only once a checkpoint's directory is in place), then SIGKILL every process.
                let started = Instant::now();
                while latest_step(&seed).is_none_or(|s| s < 2) {
                    assert!(started.elapsed() < Duration::from_secs(120), "{what}: no checkpoint of step 2 in 120 s");
                    if let Some(status) = job.try_wait() {
                        panic!("{what}: the job ended ({status:?}) before its checkpoint of step 2");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let rank0 = job.pid(0).expect("rank 0's process");
                let killed = job.kill();
                assert!(!killed.success(), "{what}: the killed job reports success ({killed:?})");
                let left = job.survivors(Duration::from_secs(10));
                assert!(left.is_empty(), "{what}: processes of the killed job (pid, rank) still run 10 s later: {left:?}");
                let at = latest_step(&seed).unwrap();
                assert!(
                    at < RESUME_STEPS && !seed.join("results.json").exists(),
                    "{what}: the job finished before the kill (checkpoint of step {at}); the test needs a longer run"
                );
                // What a kill during a checkpoint write leaves: a temporary checkpoint directory of a
                // later step, truncated, and a temporary `latest` naming it (the writers' names,
                // with the killed process's pid). The resume must take neither.
                let ck = seed.join("checkpoints");
                let complete = ck.join(format!("step-{at:08}"));
                let partial = ck.join(format!(".step-{:08}.tmp{}", at + 1, rank0));
                std::fs::create_dir_all(&partial).unwrap();
                let model = std::fs::read(complete.join("model.safetensors")).unwrap();
                std::fs::write(partial.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
                std::fs::write(ck.join(format!(".latest.tmp{}", rank0)), format!("step-{:08}", at + 1)).unwrap();
                let o = command(then, &args(&out, m, RESUME_STEPS, &["--resume"])).env("TRAM_LOG", "info").output().unwrap();
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                assert!(o.status.success(), "{what}: the resumed run: {:?}\n{text}", o.status);
                let resumed =
                    text.lines().find(|l| l.contains("resuming")).unwrap_or_else(|| panic!("{what}: no `resuming` line:\n{text}"));
                assert!(
                    resumed.contains(&format!("step={at} ")),
                    "{what}: resumed from another step than the complete checkpoint {at}: {resumed}"
                );
                assert_eq!(hidden(&ck), Vec::<String>::new(), "{what}: temporaries left in {}:\n{text}", ck.display());
                assert_eq!(hidden(&seed), Vec::<String>::new(), "{what}: temporaries left in {}", seed.display());
                assert_one_line_per_step(&seed, RESUME_STEPS, &what);
                eprintln!("{what}: killed after the checkpoint of step {at}");
            }
            assert_close(&reference, &out, RESUMED, &format!("killed at W={first}, resumed at W={then}"));
        }
    }

    #[test]
    fn a_job_stopped_on_two_ranks_stops_them_after_the_same_step_and_resumes_on_one() {
        let tmp = tempfile::tempdir().unwrap();
        let m = "tram-prev";
        let (reference, out) = (tmp.path().join("ref"), tmp.path().join("w2-w1"));
        uninterrupted(&reference, m);
        let o = run(2, &args(&out, m, RESUME_STEPS, &["--stop-after", "2"]));
        assert_eq!(o.status.code(), Some(130), "the stopped run: {}", String::from_utf8_lossy(&o.stderr));
        let seed = out.join(m).join("seed-0");
        assert!(latest_step(&seed) == Some(2) && !seed.join("results.json").exists());
        ok(1, &args(&out, m, RESUME_STEPS, &["--resume"]));
        assert_one_line_per_step(&seed, RESUME_STEPS, "stopped at W=2");
        assert_close(&reference, &out, m, "stopped at W=2, resumed at W=1");
    }

    /// The live processes (zombies excluded) whose environment carries `DP_TEST_TAG=tag`, each
    /// with its MPI rank: `mpirun` (no rank) and its ranks, or the one `tram` of W = 1 (no rank).
    fn tagged(tag: &str) -> Vec<(i32, Option<usize>)> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return found };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            if !vars.contains(&format!("DP_TEST_TAG={tag}").as_bytes()) {
                continue;
            }
            // The state follows the command's closing parenthesis in `stat`.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])) {
                continue;
            }
            let rank = vars.iter().find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
            found.push((pid, rank));
        }
        found
    }

    /// A started job (`mpirun` and its ranks, or one `tram`) whose processes carry
    /// `DP_TEST_TAG=tag`. Dropping it SIGKILLs every one still alive, ranks included (killing
    /// only `mpirun` would orphan them), so a failing test leaves no process behind.
    struct Job {
        child: Option<std::process::Child>,
        tag: String,
        world: usize,
    }

    impl Job {
        fn start(world: usize, args: &[String], tag: &str) -> Job {
            let child = command(world, args).env("DP_TEST_TAG", tag).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
            Job { child: Some(child.expect("running tram (is `mpirun` installed? .ci/run installs Open MPI)")), tag: tag.into(), world }
        }

        fn child(&mut self) -> &mut std::process::Child {
            self.child.as_mut().expect("the job's process")
        }

        /// Whether the started process (`mpirun`, or `tram` for W = 1) has ended, and how.
        fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
            self.child().try_wait().unwrap()
        }

        /// The pid of rank `rank` (the started `tram` for W = 1).
        fn pid(&mut self, rank: usize) -> Option<i32> {
            if self.world == 1 {
                return Some(self.child().id() as i32);
            }
            tagged(&self.tag).into_iter().find(|(_, r)| *r == Some(rank)).map(|(p, _)| p)
        }

        /// SIGKILL every process of the job at once, ranks first, and the started process's status.
        fn kill(&mut self) -> std::process::ExitStatus {
            let mut procs = tagged(&self.tag);
            procs.sort_by_key(|(_, rank)| rank.is_none());
            if !procs.is_empty() {
                let pids: Vec<String> = procs.iter().map(|(p, _)| p.to_string()).collect();
                let _ = Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
            }
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
            }
            self.child().wait().unwrap()
        }

        /// The processes of the job still alive `grace` after the started one ended.
        fn survivors(&self, grace: Duration) -> Vec<(i32, Option<usize>)> {
            let since = Instant::now();
            loop {
                let left = tagged(&self.tag);
                if left.is_empty() || since.elapsed() > grace {
                    return left;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// The started process's status and output, once it has ended.
        fn output(&mut self) -> Output {
            self.child.take().expect("the job's process").wait_with_output().unwrap()
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            let procs = tagged(&self.tag);
            if !procs.is_empty() {
                let pids: Vec<String> = procs.iter().map(|(p, _)| p.to_string()).collect();
                let _ = Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Start a long 2-rank run, wait for its first step, send rank 1 `signal`, and return the
    /// job's exit status, output and how long it took to end after the signal. No process of
    /// the job may outlive `mpirun` by more than 10 s.
    fn signal_rank_1(signal: &str, tag: &str) -> (std::process::ExitStatus, String, Duration) {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let a = args(&out, "tram-noise", 100_000, &["--set", "distributed.timeout_s=10"]);
        let mut job = Job::start(2, &a, tag);
        let metrics = out.join("tram-noise/seed-0/metrics.jsonl");
        let started = Instant::now();
        while !std::fs::read_to_string(&metrics).unwrap_or_default().contains("\"type\":\"train\"") {
            assert!(started.elapsed() < Duration::from_secs(120), "the job took no step in 120 s");
            if job.try_wait().is_some() {
                let o = job.output();
                panic!(
                    "the job ended before its first step:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = job.pid(1).expect("rank 1's process");
        let killed = Instant::now();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap().success());
        while job.try_wait().is_none() {
            // Dropping the job on the panic kills every process of it.
            assert!(killed.elapsed() < Duration::from_secs(90), "the job still ran 90 s after rank 1 got SIG{signal}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = killed.elapsed();
        let o = job.output();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let left = job.survivors(Duration::from_secs(10));
        assert!(left.is_empty(), "processes of the job (pid, rank) outlived mpirun by 10 s: {left:?}\n{text}");
        (o.status, text, took)
    }

    #[test]
    fn a_rank_killed_mid_run_fails_the_job_with_a_message_within_60_s() {
        let (status, text, took) = signal_rank_1("KILL", &format!("kill-{}", std::process::id()));
        eprintln!("killed rank: job ended in {:.1} s with {status:?}:\n{text}", took.as_secs_f64());
        assert!(!status.success() && took < Duration::from_secs(60), "{status:?} after {took:?}\n{text}");
        assert!(text.contains("signal 9") || text.contains("Killed") || text.contains("has waited"), "{text}");
    }

    #[test]
    fn a_rank_that_hangs_fails_the_job_through_the_watchdog_within_60_s() {
        let (status, text, took) = signal_rank_1("STOP", &format!("stop-{}", std::process::id()));
        eprintln!("hung rank: job ended in {:.1} s with {status:?}:\n{text}", took.as_secs_f64());
        assert!(!status.success() && took < Duration::from_secs(60), "{status:?} after {took:?}\n{text}");
        assert!(text.contains("rank 0 of 2") && text.contains("has waited") && text.contains("timeout 10 s"), "{text}");
    }
}
