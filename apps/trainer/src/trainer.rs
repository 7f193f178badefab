//! The training loop shared by every app: optimizer steps with accumulation, metrics lines,
//! validation on the training domain and model selection, checkpoints (periodic, final, on
//! Ctrl-C or SIGTERM), exact resume, and the final evaluation on every test set. A run holds its
//! run directory's lock throughout (see [`crate::rundir`]).

use crate::checkpoint::{self, Best, CheckpointFiles, TrainerState};
use crate::config::{RunConfig, Select};
use crate::error::{Error, Result};
use crate::eval::{evaluate_sharded, EvalMetrics};
use crate::results::{ColumnResult, RunResult};
use crate::task::{EvalSet, TaskData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tram::{Optimizer, Schedule, Snapshot};
use tram_models::Pretrained;

/// Metrics log of a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Final results of a run directory.
pub const RESULTS_FILE: &str = "results.json";
/// The selected model, in hub layout, under a run directory.
pub const MODEL_DIR: &str = "model";
/// The phase profile of a run's steps (`--profile`), in its run directory.
pub const PROFILE_FILE: &str = "profile.json";

/// How a run is driven from outside.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop as if interrupted once this many steps are done (tests, time-boxed jobs).
    pub stop_after: Option<u64>,
    /// Continue from the run directory's checkpoint when there is one; a finished run whose
    /// recorded results match the configuration is kept and skipped (another configuration
    /// is an error).
    pub resume: bool,
    /// Time the phases of every step, with the device synchronised at each phase boundary
    /// (`--profile`, [`tram::profile`]): `profile.json` in the run directory and a summary on
    /// the terminal. Off, it costs nothing (no synchronisation).
    pub profile: bool,
    /// Discard what an earlier run left in the run directory (results, checkpoints, metrics,
    /// model) and train from the start. Without it, a run directory with results or a
    /// checkpoint is never overwritten.
    pub force: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Trained and evaluated.
    Finished(Box<RunResult>),
    /// Stopped early; the checkpoint to resume from.
    Interrupted {
        /// Steps done.
        step: u64,
        /// The checkpoint directory.
        checkpoint: PathBuf,
    },
}

/// Everything a run needs besides its data.
pub struct RunSpec<'a> {
    /// The app (`lm`, `xnli`, `vision`).
    pub app: &'a str,
    /// The run.
    pub run: &'a RunConfig,
    /// Position of the run in the config's `[[runs]]` (table row order).
    pub row: usize,
    /// The seed.
    pub seed: u64,
    /// The tokenizer to save beside the selected model.
    pub tokenizer: Option<PathBuf>,
    /// The component registry (built-ins and loaded plugins).
    pub registry: &'a tram::Registry,
    /// This rank's collective when the driver started the job's ranks itself
    /// (`distributed.engine = "threads"`); `None`: the process's ([`crate::distributed::session`]).
    pub collective: Option<Arc<dyn tram::distributed::Collective>>,
}

/// Total optimizer steps of a run.
pub fn total_steps(run: &RunConfig, batches_per_epoch: usize) -> u64 {
    let t = &run.config.train;
    if t.evaluate_only {
        return 0;
    }
    match t.steps {
        Some(s) => s,
        None => {
            let per_epoch = batches_per_epoch.div_ceil(t.accumulation) as f64;
            (t.epochs * per_epoch).ceil() as u64
        }
    }
}

/// The optimizer configuration of a run: a schedule `total = 0` becomes the run's steps, and
/// the noise seed is mixed with the run's seed.
pub fn resolved_optimizer(run: &RunConfig, seed: u64, total: u64) -> tram::OptimizerConfig {
    let mut c = run.config.optimizer.clone();
    c.schedule = match c.schedule {
        // A warmup longer than the run (a short smoke run of a config; the config check warns)
        // never reaches the decay: a horizon of `warmup` gives the same rate at every step of
        // the run and keeps `warmup ≤ total`.
        Schedule::Polynomial { warmup, total: 0, power } => Schedule::Polynomial { warmup, total: total.max(warmup), power },
        Schedule::Cosine { total: 0 } => Schedule::Cosine { total },
        s => s,
    };
    c.seed = c.seed.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    c
}

/// The part of the configuration a checkpoint must agree with to be resumed.
pub fn fingerprint(app: &str, run: &RunConfig, seed: u64, optimizer: &tram::OptimizerConfig) -> Value {
    let mut v = run.config.to_json();
    if let Some(m) = v.as_object_mut() {
        // Where plugins are loaded from is not part of the run (the optimizer, with every
        // component's name and parameters, is), nor is the device it computes on (a checkpoint
        // holds no device data: one written on a GPU resumes on the CPU and vice versa).
        for k in ["out", "seeds", "label", "plugins", "device"] {
            m.remove(k);
        }
        m.insert("seed".into(), json!(seed));
        // (Never `null`: two different optimizers would then share a fingerprint.)
        m.insert("optimizer".into(), serde_json::to_value(optimizer).expect("an optimizer config serialises to JSON"));
        if let Some(Value::Object(t)) = m.get_mut("train") {
            for k in [
                "steps",
                "epochs",
                "evaluate_only",
                "eval_every",
                "checkpoint_every",
                "log_every",
                "progress",
                "eval_batch_size",
                "max_eval_examples",
            ] {
                t.remove(k);
            }
        }
        // Only the app's own section matters, less its keys that change nothing computed (`lm.cache_dir`).
        crate::apps::keep_own_section(m, app);
        crate::distributed::drop_untracked(m);
    }
    v
}

struct Metrics {
    file: std::fs::File,
    bytes: u64,
}

impl Metrics {
    fn open(path: &Path, keep: u64) -> Result<Self> {
        let io = |e| Error::io(format!("opening {}", path.display()), e);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < keep {
            return Err(Error::checkpoint(path, format!("has {len} bytes, the checkpoint recorded {keep}: the metrics log was truncated")));
        }
        if keep > 0 {
            // The checkpoint's length must end a line, or resuming would splice two lines.
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8];
            let mut reader = std::fs::File::open(path).map_err(io)?;
            reader.seek(SeekFrom::Start(keep - 1)).map_err(io)?;
            reader.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                return Err(Error::checkpoint(path, format!("the checkpoint's length {keep} does not end a line of the metrics log")));
            }
        }
        file.set_len(keep).map_err(io)?;
        Ok(Self { file, bytes: keep })
    }
    fn line(&mut self, v: &Value) -> Result<()> {
        let mut s = serde_json::to_string(v).expect("metrics serialise");
        s.push('\n');
        self.file.write_all(s.as_bytes()).map_err(|e| Error::io("writing metrics.jsonl", e))?;
        self.file.flush().map_err(|e| Error::io("writing metrics.jsonl", e))?;
        self.bytes += s.len() as u64;
        Ok(())
    }
}

/// Whether `step` is a multiple of a non-zero interval `n` (MSRV 1.80: no `is_multiple_of`).
fn every(step: u64, n: u64) -> bool {
    step.checked_rem(n) == Some(0)
}

/// A metrics-line number: non-finite values as `"inf"`, `"-inf"`, `"nan"`, as in results.json.
fn num(x: f64) -> Value {
    crate::results::float::to_json(x)
}

fn eval_line(kind: &str, step: u64, set: &EvalSet, m: &EvalMetrics) -> Value {
    json!({"type": kind, "step": step, "set": set.name, "loss": num(m.loss), "perplexity": num(m.perplexity), "accuracy": num(m.accuracy), "rows": m.rows})
}

fn progress_bar(total: u64, enabled: bool, prefix: String) -> ProgressBar {
    let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(total), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(prefix);
    pb
}

/// Train `model` on `data` as `spec` says, then evaluate; see the module docs. The steps are
/// those of the private `Run`: open (checks, lock, optimizer, recorded results), resume, train, select,
/// evaluate.
pub fn run(spec: &RunSpec<'_>, model: Box<dyn Pretrained>, data: TaskData, control: &Control) -> Result<Outcome> {
    let mut run = match Run::open(spec, model, data, control)? {
        Opened::Start(run) => run,
        Opened::Finished(recorded) => return Ok(Outcome::Finished(recorded)),
    };
    run.resume()?;
    if let Some(interrupted) = run.train()? {
        return Ok(interrupted);
    }
    let selected_step = run.select()?;
    run.evaluate(selected_step).map(|r| Outcome::Finished(Box::new(r)))
}

/// The best validation result so far, with the parameters then when model selection needs
/// them (`train.select = "best"`).
type BestSoFar = Option<(Best, Option<Snapshot>)>;

/// What [`Run::open`] found in the run directory.
enum Opened<'a> {
    /// A run to train (from the start, or from its checkpoint after [`Run::resume`]).
    Start(Box<Run<'a>>),
    /// Recorded results of this configuration, kept (`--resume` on a finished run).
    Finished(Box<RunResult>),
}

/// One run of one seed in its run directory, driven step by step: [`Run::open`] checks the
/// outputs and evaluation sets, takes the directory's lock and builds the optimizer;
/// [`Run::resume`] restores the checkpoint (`--resume`); [`Run::train`] takes the optimizer
/// steps with validation, checkpoints and interrupts; [`Run::select`] picks the parameters of
/// the final evaluation and saves them; [`Run::evaluate`] evaluates every test set and writes
/// `results.json`. The lock is held as long as the `Run` lives.
struct Run<'a> {
    spec: &'a RunSpec<'a>,
    control: &'a Control,
    model: Box<dyn Pretrained>,
    params: tram::Params,
    data: TaskData,
    dir: PathBuf,
    /// Held until the run is dropped: no second writer (rank 0 of a data-parallel job only).
    _lock: Option<crate::rundir::RunLock>,
    /// The data-parallel job's ranks (one process: [`tram::distributed::Single`]); only rank
    /// 0 writes the run directory.
    dist: std::sync::Arc<dyn tram::distributed::Collective>,
    /// Optimizer steps of the run.
    total: u64,
    opt: Optimizer,
    /// What a checkpoint must agree with to be resumed ([`fingerprint`]).
    print: Value,
    /// Steps done.
    step: u64,
    best: BestSoFar,
    /// Training time of earlier sessions of this run (resumed).
    train_seconds: f64,
    /// Length of the metrics log the checkpoint recorded (0: a new log).
    metrics_keep: u64,
    /// The metrics log, opened (cut to `metrics_keep`) when training starts.
    metrics: Option<Metrics>,
}

impl<'a> Run<'a> {
    /// Check the outputs and evaluation sets, create the run directory and take its lock,
    /// build the optimizer, apply `--force`, and keep recorded results of this configuration
    /// on `--resume` (other recorded results are an error).
    fn open(spec: &'a RunSpec<'a>, model: Box<dyn Pretrained>, data: TaskData, control: &'a Control) -> Result<Opened<'a>> {
        let run = spec.run;
        let cfg = &run.config;
        let dir = run.dir(spec.seed);
        crate::rundir::check_outputs(&dir)?;
        if control.resume && control.force {
            return Err(Error::Config("--resume keeps a run's results and --force discards them: pass one of them".into()));
        }
        // An empty evaluation set has no metric at all: refuse it before the first step.
        for (set, what) in data.valid.iter().map(|v| (v, "validation")).chain(data.tests.iter().map(|t| (t, "test"))) {
            if set.source.is_empty() {
                return Err(Error::Config(format!(
                    "the {what} set `{}` ({}) of run `{}` is empty: nothing to evaluate; check the settings that cut evaluation sets \
                     (train.max_eval_examples, lm.max_eval_blocks, the split names) and the data",
                    set.name, set.label, run.name
                )));
            }
        }
        let dist = match &spec.collective {
            Some(c) => c.clone(),
            None => crate::distributed::session(&cfg.distributed, &crate::device(&cfg.device)?)?,
        };
        // Only rank 0 of a data-parallel job writes the run directory (the others read it).
        let lock = if dist.rank() == 0 {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let lock = crate::rundir::RunLock::acquire(&dir)?;
            crate::rundir::remove_stale_temps(&dir, &lock)?;
            Some(lock)
        } else {
            None
        };
        let total = total_steps(run, data.train.batches_per_epoch());
        let opt_config = resolved_optimizer(run, spec.seed, total);
        let registry = cfg.plugin_registry(spec.registry)?; // with the config's `plugins`
        let mut opt = Optimizer::new(&registry, opt_config.clone())?;
        opt.set_collective(dist.clone());
        opt.set_ascent_scope(cfg.distributed.ascent);
        let print = fingerprint(spec.app, run, spec.seed, &opt_config);
        let params = model.params().clone();
        if let (true, Some(lock)) = (control.force, &lock) {
            // Only now that the run is known to start (its optimizer builds).
            crate::rundir::discard(&dir, lock)?;
        }
        // The other ranks read the run directory once rank 0 has cleaned it.
        dist.barrier()?;
        // Recorded results are kept: skipped on --resume when they are this configuration's.
        if let Some(mut recorded) = crate::rundir::recorded_result(&dir)? {
            if !control.resume {
                return Err(crate::rundir::already_finished(&dir));
            }
            let mut diff = crate::rundir::result_differences(spec.app, run, spec.seed, &recorded);
            if recorded.steps != total {
                diff.push(format!("steps (results: {}, now: {total})", recorded.steps));
            }
            if !diff.is_empty() {
                return Err(crate::rundir::other_config(&dir, &diff));
            }
            if (recorded.label.as_str(), recorded.row) != (run.label.as_str(), spec.row) {
                // Only where the row sits in the table changed.
                (recorded.label, recorded.row) = (run.label.clone(), spec.row);
                let results_path = dir.join(RESULTS_FILE);
                tram::state::write_atomic(&results_path, &serde_json::to_vec_pretty(&recorded).expect("results serialise"))?;
            }
            tracing::info!(run = %run.name, seed = spec.seed, dir = %dir.display(), "already finished: results kept");
            return Ok(Opened::Finished(Box::new(recorded)));
        }
        Ok(Opened::Start(Box::new(Run {
            spec,
            control,
            model,
            params,
            data,
            dir,
            _lock: lock,
            dist,
            total,
            opt,
            print,
            step: 0,
            best: None,
            train_seconds: 0.0,
            metrics_keep: 0,
            metrics: None,
        })))
    }

    /// With `--resume` and a checkpoint: check it belongs to this configuration and restore
    /// the parameters, optimizer state, best validation result, dropout and data positions,
    /// step, training time and metrics log length. A checkpoint without `--resume` is an error.
    fn resume(&mut self) -> Result<()> {
        let (run, seed, dir) = (self.spec.run, self.spec.seed, &self.dir);
        match checkpoint::latest(dir)? {
            Some(ck_dir) if self.control.resume => {
                let ck = checkpoint::read(&ck_dir)?;
                let diff = checkpoint::differences(&ck.state.fingerprint, &self.print);
                if !diff.is_empty() {
                    return Err(Error::checkpoint(
                        &ck_dir,
                        format!("was written by a run with a different configuration: {}; resume with the same configuration, or start a new run in another `out`", diff.join("; ")),
                    ));
                }
                if ck.state.step > self.total {
                    return Err(Error::checkpoint(&ck_dir, format!("is at step {}, past this run's {} steps", ck.state.step, self.total)));
                }
                let params = &self.params;
                let values = checkpoint::read_params(params, &ck.files.model, &ck.dir.join(checkpoint::MODEL_FILE))?;
                params.assign(&values)?;
                self.opt.load_state_bytes(params, &ck.files.optimizer, &ck.dir.join(checkpoint::OPTIMIZER_FILE).display().to_string())?;
                if let Some(b) = &ck.state.best {
                    let snap = match &ck.files.best {
                        Some(bytes) => Some(Snapshot::from_tensors(
                            params,
                            checkpoint::read_params(params, bytes, &ck.dir.join(checkpoint::BEST_FILE))?,
                        )?),
                        None if run.config.train.select == Select::Best => {
                            return Err(Error::checkpoint(
                                &ck.dir,
                                "records a best validation step but has no best.safetensors: the checkpoint is corrupt",
                            ))
                        }
                        None => None,
                    };
                    self.best = Some((b.clone(), snap));
                }
                let pos: u128 =
                    ck.state.dropout_position.parse().map_err(|_| Error::checkpoint(&ck.dir, "dropout_position is not a number"))?;
                self.model.set_dropout_position(pos)?;
                self.data.train.restore(&ck.state.data_position)?;
                self.step = ck.state.step;
                self.train_seconds = checkpoint::read_timing(dir);
                self.metrics_keep = ck.state.metrics_bytes;
                tracing::info!(run = %run.name, seed, step = self.step, checkpoint = %ck.dir.display(), "resuming");
            }
            Some(ck_dir) => return Err(crate::rundir::checkpoint_without_resume(dir, &ck_dir)),
            None => {
                if self.control.resume {
                    tracing::info!(run = %run.name, seed, dir = %dir.display(), "no checkpoint to resume: starting");
                }
            }
        }
        Ok(())
    }

    /// Take the remaining optimizer steps: metrics lines, validation every `eval_every`
    /// steps, checkpoints every `checkpoint_every`, and a stop (Ctrl-C, `stop_after`) with a
    /// checkpoint, returned as [`Outcome::Interrupted`]. After the last step: the final
    /// validation and the final checkpoint. Returns `None` when every step is done.
    fn train(&mut self) -> Result<Option<Outcome>> {
        let (run, seed, total) = (self.spec.run, self.spec.seed, self.total);
        let cfg = &run.config;
        let (rank, world) = (self.dist.rank(), self.dist.world());
        if world > 1 {
            // Every rank starts from rank 0's parameters (they are equal unless a rank read
            // other files): the job cannot drift from its first step.
            let theta = self.dist.broadcast(self.params.snapshot()?.tensors(), 0)?;
            self.params.assign(&theta)?;
        }
        self.metrics = if rank == 0 { Some(Metrics::open(&self.dir.join(METRICS_FILE), self.metrics_keep)?) } else { None };
        if self.step == 0 {
            self.log(&json!({"type": "start", "run": run.name, "seed": seed, "steps": total, "optimizer": self.opt.describe(), "parameters": self.params.elem_count()}))?;
        }
        tracing::info!(run = %run.name, seed, optimizer = %self.opt, steps = total, parameters = self.params.elem_count(), "training");

        if self.control.profile {
            let device = self.params.iter().next().map(|p| p.var.device().clone()).unwrap_or(candle_core::Device::Cpu);
            tram::profile::enable(&device);
        }
        let accumulation = cfg.train.accumulation;
        let pb = progress_bar(total, cfg.train.progress && rank == 0, format!("{} seed {}", run.name, seed));
        pb.set_position(self.step);
        let mut last_checkpoint = self.step;
        // A checkpoint at the last step is only written after the final validation (periodic and
        // interrupt checkpoints come before it), so resuming from one must not validate again.
        let mut last_eval = (self.step > 0 && self.step == total).then_some(total);
        let started = Instant::now();
        let (mut window_units, mut window_start) = (0usize, Instant::now());
        while self.step < total {
            // The profile's phases (`--profile`; nothing when off): the step, and after it the
            // bookkeeping, validation and checkpoints outside it.
            let step_phase = tram::profile::step();
            let batch_phase = tram::profile::scope("batch: data, host → device");
            let mut batches = Vec::with_capacity(accumulation);
            let mut offsets = Vec::with_capacity(accumulation);
            for _ in 0..accumulation {
                // Each rank's share of the global micro-batch (all of it in one process).
                let (b, offset) = crate::distributed::shard(&self.data.train.next_batch()?, rank, world)?;
                window_units += self.data.train.units(&b);
                batches.push(b);
                offsets.push(offset);
            }
            if world > 1 {
                self.opt.set_example_offsets(offsets);
            }
            drop(batch_phase);
            let report = self.opt.step(self.model.as_ref(), &batches)?;
            drop(step_phase);
            let after_phase = tram::profile::scope("log, progress");
            self.step += 1;
            let step = self.step;
            if every(step, cfg.train.log_every) || step == total {
                self.log(&json!({
                    "type": "train", "step": step, "lr": report.lr, "loss": num(report.loss), "penalty": report.penalty.map(num),
                    "delta": report.delta.map(num), "epsilon_norm": num(report.epsilon_norm), "grad_norm": num(report.grad_norm),
                    "ascent": report.ascent, "skipped": report.skipped,
                }))?;
            }
            let secs = window_start.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { window_units as f64 / secs } else { 0.0 };
            if secs > 5.0 {
                (window_units, window_start) = (0, Instant::now());
            }
            let delta = report.delta.map(|d| format!(" δ {d:.3e}")).unwrap_or_default();
            pb.set_message(format!("loss {:.4}{delta} {rate:.0} {}/s", report.loss, self.data.unit));
            pb.set_position(step);
            if every(step, cfg.train.log_every) {
                tracing::debug!(step, loss = report.loss, delta = ?report.delta, lr = report.lr, rate, unit = self.data.unit, "step");
            }
            if every(step, cfg.train.eval_every) {
                tram::profile::mark("eval");
                self.validate(step)?;
                last_eval = Some(step);
            }
            let elapsed = self.train_seconds + started.elapsed().as_secs_f64();
            if every(step, cfg.train.checkpoint_every) && step < total {
                tram::profile::mark("checkpoint");
                self.save(step, elapsed)?;
                last_checkpoint = step;
            }
            if self.control.stop_after == Some(step) {
                self.control.stop.store(true, Ordering::SeqCst);
            }
            if world > 1 {
                tram::profile::mark("all-reduce: stop flag");
                // A stop (Ctrl-C reaches the ranks at different steps) is the job's: every rank
                // stops after the same step.
                let mut stop = [f64::from(u8::from(self.control.stop.load(Ordering::SeqCst)))];
                self.dist.all_reduce_sum_f64(&mut stop)?;
                if stop[0] > 0.0 {
                    self.control.stop.store(true, Ordering::SeqCst);
                }
            }
            if self.control.stop.load(Ordering::SeqCst) && step < total {
                let d =
                    if last_checkpoint == step { checkpoint::latest(&self.dir)?.unwrap_or_default() } else { self.save(step, elapsed)? };
                pb.abandon_with_message(format!("interrupted at step {step}; resume with --resume"));
                drop(after_phase);
                self.write_profile()?;
                tracing::warn!(step, checkpoint = %d.display(), "interrupted: checkpoint written; run again with --resume to continue");
                return Ok(Some(Outcome::Interrupted { step, checkpoint: d }));
            }
        }
        pb.finish_and_clear();
        if world > 1 {
            let (secs, waited) = (started.elapsed().as_secs_f64(), self.dist.wait_seconds());
            tracing::info!(
                rank,
                world,
                train_seconds = secs,
                collective_seconds = waited,
                share = waited / secs.max(1e-9),
                "time in collectives (all-reduces, waiting for the other ranks included)"
            );
        }
        self.train_seconds += started.elapsed().as_secs_f64();
        if total > 0 && last_eval != Some(total) {
            let _eval = tram::profile::scope("eval");
            self.validate(total)?;
        }
        if total > 0 {
            let _checkpoint = tram::profile::scope("checkpoint");
            self.save(total, self.train_seconds)?;
        }
        self.write_profile()?;
        Ok(None)
    }

    /// With `--profile`: stop profiling, write `profile.json` (rank 0) and print the summary.
    fn write_profile(&self) -> Result<()> {
        let Some(profile) = tram::profile::take() else { return Ok(()) };
        if self.dist.rank() != 0 {
            return Ok(());
        }
        let run = self.spec.run;
        let mut v = serde_json::to_value(&profile).expect("a profile serialises to JSON");
        v["run"] = json!(run.name);
        v["seed"] = json!(self.spec.seed);
        v["optimizer"] = json!(self.opt.to_string());
        v["dtype"] = json!(run.config.dtype);
        let path = self.dir.join(PROFILE_FILE);
        tram::state::write_atomic(&path, &serde_json::to_vec_pretty(&v).expect("a profile serialises to JSON"))?;
        eprint!("{} seed {}: {}", run.name, self.spec.seed, profile.summary());
        eprintln!("  written to {}", path.display());
        Ok(())
    }

    /// Model selection for the final evaluation: the parameters of the best validation loss
    /// (`train.select = "best"`), or the final ones; saved in hub layout under `model/` when
    /// the run trained. Returns the selected step.
    fn select(&mut self) -> Result<u64> {
        let selected_step = match (&self.best, self.spec.run.config.train.select) {
            (Some((b, Some(snap))), Select::Best) => {
                self.params.assign(snap.tensors())?;
                b.step
            }
            _ => self.total,
        };
        if self.total > 0 && self.dist.rank() == 0 {
            tram_hub::save_model(&self.dir.join(MODEL_DIR), self.model.as_ref(), self.spec.tokenizer.as_deref())?;
        }
        Ok(selected_step)
    }

    /// Evaluate the selected parameters on the validation set and every test set, note
    /// failed (every step skipped), diverged and skipped-step runs, and write `results.json`.
    fn evaluate(mut self, selected_step: u64) -> Result<RunResult> {
        let (spec, run, total) = (self.spec, self.spec.run, self.total);
        let cfg = &run.config;
        let mut metrics = self.metrics.as_mut();
        let eval_started = Instant::now();
        let mut columns = Vec::new();
        let valid = match &self.data.valid {
            Some(v) => {
                let m = evaluate_sharded(self.model.as_ref(), v.source.as_ref(), self.dist.as_ref())?;
                if let Some(metrics) = metrics.as_mut() {
                    metrics.line(&eval_line("final-valid", selected_step, v, &m))?;
                }
                Some(m)
            }
            None => None,
        };
        for set in &self.data.tests {
            let m = evaluate_sharded(self.model.as_ref(), set.source.as_ref(), self.dist.as_ref())?;
            if let Some(metrics) = metrics.as_mut() {
                metrics.line(&eval_line("test", selected_step, set, &m))?;
            }
            tracing::info!(set = %set.name, loss = m.loss, perplexity = m.perplexity, accuracy = m.accuracy, "test");
            columns.push(ColumnResult { name: set.name.clone(), label: set.label.clone(), in_domain: set.in_domain, metrics: m });
        }
        let opt = &self.opt;
        let skipped_steps = opt.skipped_steps();
        let failed = (total > 0 && skipped_steps >= total).then(|| {
            format!(
                "every one of the {total} steps was skipped (non-finite loss or gradient), so the parameters are the starting ones; \
                 see the warnings above (e.g. a learning rate or radius far too large) and metrics.jsonl"
            )
        });
        let diverged = valid.as_ref().is_some_and(EvalMetrics::diverged) || columns.iter().any(|c| c.metrics.diverged());
        if diverged {
            tracing::warn!(run = %run.name, seed = spec.seed, "diverged: a non-finite loss or metric in the final evaluation (recorded; shown as `diverged` / `∞` in the table)");
        }
        if skipped_steps > 0 && failed.is_none() {
            tracing::warn!(run = %run.name, seed = spec.seed, skipped = skipped_steps, steps = total, "steps skipped (non-finite loss or gradient)");
        }
        let result = RunResult {
            app: spec.app.to_string(),
            run: run.name.clone(),
            label: run.label.clone(),
            row: spec.row,
            seed: spec.seed,
            steps: total,
            selected_step,
            selection: if cfg.train.select == Select::Best && self.best.is_some() { "best-validation-loss".into() } else { "last".into() },
            best_valid_loss: self.best.as_ref().map(|(b, _)| b.loss),
            valid,
            columns,
            optimizer: opt.describe(),
            skipped_steps,
            skipped_rows: self.data.skipped.clone(),
            no_ascent_steps: opt.no_ascent_steps(),
            diverged,
            failed,
            train_seconds: self.train_seconds,
            eval_seconds: eval_started.elapsed().as_secs_f64(),
            provenance: run.config.provenance.record(&run.config.to_json(), &opt.describe()),
            config: run.config.to_json(),
        };
        if self.dist.rank() != 0 {
            return Ok(result);
        }
        let results_path = self.dir.join(RESULTS_FILE);
        let bytes = serde_json::to_vec_pretty(&result).map_err(|e| Error::Data(format!("serialising {}: {e}", results_path.display())))?;
        tram::state::write_atomic(&results_path, &bytes)?;
        Ok(result)
    }

    /// Append a line to the metrics log (rank 0 of a data-parallel job; the others have none).
    fn log(&mut self, line: &Value) -> Result<()> {
        match self.metrics.as_mut() {
            Some(m) => m.line(line),
            None => Ok(()),
        }
    }

    /// Write a checkpoint of step `step` (and the training time so far, `seconds`), with the
    /// metrics log's length.
    fn save(&self, step: u64, seconds: f64) -> Result<PathBuf> {
        // Only rank 0 writes (the ranks hold the same state).
        let Some(metrics) = self.metrics.as_ref() else { return Ok(self.dir.clone()) };
        let metrics_bytes = metrics.bytes;
        let params = &self.params;
        let files = CheckpointFiles {
            model: checkpoint::params_bytes(params, None)?,
            optimizer: self.opt.state_bytes(params)?,
            best: self.best.as_ref().and_then(|(_, s)| s.as_ref()).map(|s| checkpoint::params_bytes(params, Some(s))).transpose()?,
        };
        let state = TrainerState {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            step,
            seed: self.spec.seed,
            data_position: self.data.train.position(),
            dropout_position: self.model.dropout_position()?.to_string(),
            best: self.best.as_ref().map(|(b, _)| b.clone()),
            metrics_bytes,
            fingerprint: self.print.clone(),
            files: Default::default(),
            state_hash: String::new(),
        };
        let d = checkpoint::write(&self.dir, state, files)?;
        checkpoint::write_timing(&self.dir, seconds)?;
        tracing::info!(step, checkpoint = %d.display(), "checkpoint written");
        Ok(d)
    }

    /// Evaluate on the training domain's validation set (when there is one), log it, and
    /// keep it as the best so far when its loss is lower (with the parameters when model
    /// selection needs them).
    fn validate(&mut self, step: u64) -> Result<()> {
        let Some(valid) = &self.data.valid else { return Ok(()) };
        let m = evaluate_sharded(self.model.as_ref(), valid.source.as_ref(), self.dist.as_ref())?;
        let improved = m.loss.is_finite() && self.best.as_ref().map(|(b, _)| m.loss < b.loss).unwrap_or(true);
        let mut line = eval_line("eval", step, valid, &m);
        line["best"] = json!(improved);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.line(&line)?;
        }
        tracing::info!(step, set = %valid.name, loss = m.loss, perplexity = m.perplexity, accuracy = m.accuracy, best = improved, "validation");
        if improved {
            // Only model selection needs the parameters themselves.
            let snap = if self.spec.run.config.train.select == Select::Best { Some(self.params.snapshot()?) } else { None };
            self.best = Some((Best { step, loss: m.loss }, snap));
        }
        Ok(())
    }
}
