//! Step-cost benchmark of every registered alias against its base optimizer.
//!
//! `cargo bench -p tram-tests --bench optimizers [alias ...]` (about 3 minutes on 2 cores).
//!
//! For every alias in the registry (or the ones named on the command line) it trains a copy
//! of the same per-token [`EmbeddingClassifier`] (every token runs through the hidden layers, as
//! in a transformer, so matmuls dominate a step) on the same batch and reports, relative to the base
//! optimizer (`adam` for Adam-based aliases, `sgd` for SGD):
//!
//! - the mean time of a step and its ratio to the base's;
//! - forward / backward passes per step (from [`StepReport`]), the cost in units
//!   `fwd + 2·bwd` (a backward ≈ two forwards), its ratio to the base's, and the deviation
//!   of the time ratio from that unit ratio;
//! - the peak memory of the run (model + optimizer state + the step's transient peak, counted
//!   by a `#[global_allocator]` wrapper) relative to the base's;
//! - the bookkeeping share: the part of a step not spent in model passes, the pass time being
//!   rebuilt from separately timed plain passes on the same model and batch (forward + loss +
//!   backward for every backward pass, a no-grad forward on a detached snapshot for every
//!   target forward), and the part of it the composition adds beyond the base's own.
//!
//! It also times the bookkeeping operations one by one (snapshot, perturbation, restore,
//! norms, neighborhoods, base updates, EMA, noise sampling, distances) to show where the
//! non-pass time of a step goes. The noise-sized TRAM-x aliases are run a second time with a
//! larger noise scale (`σ=1e-2` rows), because at the default σ = 1e-5 their δ is at f32
//! rounding level on this model.
//!
//! The table is printed and written to `target/bench/optimizers.md`, with CSVs next to it
//! (`optimizers.csv`, `optimizers-operations.csv`; directory: `TRAM_BENCH_OUT`).
//!
//! Measurement on a shared machine: steps of all aliases are interleaved round-robin so that
//! drifting load affects every alias alike; the bench first waits (at most
//! `TRAM_BENCH_WAIT_QUIET` [30] s) for other processes to go quiet; a step or pass during which
//! other processes kept more cores busy than the bench leaves free (+0.2, read from `/proc`) is
//! repeated (up to 4 times, during the first `TRAM_BENCH_RETRY_SECS` [240] s), and disturbed
//! samples left are dropped from the means when at least half are clean.
//! `TRAM_BENCH_THREADS` [auto]: candle's thread count; `auto` uses every core on a quiet
//! machine and only the free ones on a busy one (a 2-thread gemm sharing a core with another
//! process stalls for whole scheduler time slices). `TRAM_BENCH_CLOCK` [auto]: `wall`, or `cpu`
//! (process CPU time, not inflated by other processes when the bench is single-threaded);
//! `auto` picks `cpu` only when it dropped to one thread on a busy machine.
//!
//! Sizes (defaults in brackets): `TRAM_BENCH_VOCAB` [1024], `TRAM_BENCH_EMBED` [512],
//! `TRAM_BENCH_HIDDEN` [2048], `TRAM_BENCH_LAYERS` [2], `TRAM_BENCH_CLASSES` [8],
//! `TRAM_BENCH_BATCH` [256], `TRAM_BENCH_SEQ` [16], `TRAM_BENCH_WARMUP` [2 steps per run, at
//! least 2: the first TRAM-θ_{t-1} step has δ = 0], `TRAM_BENCH_ROUNDS` [3],
//! `TRAM_BENCH_STEPS` [2 timed steps per run per round], `TRAM_BENCH_PASS_REPS` [4 reference
//! passes of each kind per round], `TRAM_BENCH_MICRO_REPS` [7]. `TRAM_BENCH_VERBOSE=1` prints
//! δ and ‖ε‖ of every warm-up step.

use candle_core::{Device, Tensor};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tram::{
    Batch, Component, Kind, Mode, Model, NoiseKind, NoiseSource, Optimizer, OptimizerConfig, Reduction, Registry, SeededNoise, StepReport,
};
use tram_tests::{synthetic_batches, ClassifierShape, EmbeddingClassifier};

// ---------------------------------------------------------------------------------------------
// Counting allocator: current and peak live heap bytes.

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract on `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn current_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}
/// Start a new peak window at the current level; returns that level.
fn reset_peak() -> usize {
    let now = current_bytes();
    PEAK.store(now, Ordering::Relaxed);
    now
}
fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Other processes' CPU use (this is a shared machine): busy jiffies of the whole machine minus
// this process's, from /proc (Linux; elsewhere every window reads as quiet).

#[derive(Clone, Copy)]
struct CpuSample {
    busy: u64,
    own: u64,
    at: Instant,
}

fn cpu_sample() -> CpuSample {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            (f.len() >= 8).then(|| f[0] + f[1] + f[2] + f[5] + f[6] + f[7])
        })
        .unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // after the command: state(0) ... utime(11) stime(12)
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    CpuSample { busy, own, at: Instant::now() }
}

/// Mean number of cores other processes kept busy between two samples (jiffies at 100 Hz).
fn others_cores(a: CpuSample, b: CpuSample) -> f64 {
    let secs = (b.at - a.at).as_secs_f64().max(1e-3);
    let other = (b.busy.saturating_sub(a.busy)).saturating_sub(b.own.saturating_sub(a.own));
    other as f64 / 100.0 / secs
}

/// A step or pass is "disturbed" when other processes used more than the cores this bench
/// leaves free plus this margin.
const DISTURBED_MARGIN: f64 = 0.2;
/// Cores other processes may use without disturbing a measurement (set once the thread count
/// is known, in hundredths of a core).
static ALLOWED_OTHERS: AtomicUsize = AtomicUsize::new(20);

fn allowed_others() -> f64 {
    ALLOWED_OTHERS.load(Ordering::Relaxed) as f64 / 100.0
}
fn disturbed(others: f64) -> bool {
    others > allowed_others()
}

// ---------------------------------------------------------------------------------------------
// Clocks: wall time, or this process's CPU time (all threads), which a single-threaded
// computation accumulates at the same rate whether or not other processes share the machine.

#[cfg(target_os = "linux")]
fn process_cpu_secs() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (64-bit time_t on the Linux targets built here).
    if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
#[cfg(not(target_os = "linux"))]
fn process_cpu_secs() -> f64 {
    f64::NAN
}

/// Whether the primary clock (every time in the tables) is process CPU time instead of wall time.
static CPU_CLOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy)]
struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch { wall: Instant::now(), cpu: process_cpu_secs() }
    }
    /// `(primary, wall)` seconds since the start.
    fn read(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let primary = if CPU_CLOCK.load(Ordering::Relaxed) { process_cpu_secs() - self.cpu } else { wall };
        (primary, wall)
    }
}

/// Until when a disturbed measurement is repeated (set at the start from
/// `TRAM_BENCH_RETRY_SECS`), how often at most, and how many repeats were made.
static RETRY_UNTIL: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
const MAX_RETRIES: usize = 4;
static RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Run `f` (timed) until it is not [`disturbed`], at most
/// `1 + MAX_RETRIES` times and only while the retry budget lasts; returns the last try's
/// `(seconds on the primary clock, wall seconds, other processes' cores, value)`.
fn measure<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, f64, f64, T)> {
    let mut tries = 0;
    loop {
        let cpu = cpu_sample();
        let t = Stopwatch::start();
        let v = f()?;
        let (dt, wall) = t.read();
        let o = others_cores(cpu, cpu_sample());
        tries += 1;
        let budget = RETRY_UNTIL.get().is_some_and(|d| Instant::now() < *d);
        if !disturbed(o) || tries > MAX_RETRIES || !budget {
            return Ok((dt, wall, o, v));
        }
        RETRIES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wait (at most `max_secs`) until other processes leave the machine quiet for a second.
fn wait_quiet(max_secs: u64) -> f64 {
    let start = Instant::now();
    loop {
        let a = cpu_sample();
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let o = others_cores(a, cpu_sample());
        if o < DISTURBED_MARGIN || start.elapsed().as_secs() >= max_secs {
            return o;
        }
        eprintln!("  waiting for a quiet machine: other processes use {o:.2} cores");
    }
}

// ---------------------------------------------------------------------------------------------
// Settings.

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Settings {
    shape: ClassifierShape,
    batch: usize,
    seq: usize,
    warmup: usize,
    rounds: usize,
    steps: usize,
    pass_reps: usize,
    micro_reps: usize,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            shape: ClassifierShape {
                vocab: env_usize("TRAM_BENCH_VOCAB", 1024),
                embed: env_usize("TRAM_BENCH_EMBED", 256),
                hidden: env_usize("TRAM_BENCH_HIDDEN", 1024),
                layers: env_usize("TRAM_BENCH_LAYERS", 2),
                classes: env_usize("TRAM_BENCH_CLASSES", 8),
            },
            batch: env_usize("TRAM_BENCH_BATCH", 64),
            seq: env_usize("TRAM_BENCH_SEQ", 32),
            warmup: env_usize("TRAM_BENCH_WARMUP", 2).max(2),
            rounds: env_usize("TRAM_BENCH_ROUNDS", 3).max(1),
            steps: env_usize("TRAM_BENCH_STEPS", 2).max(1),
            pass_reps: env_usize("TRAM_BENCH_PASS_REPS", 4).max(1),
            micro_reps: env_usize("TRAM_BENCH_MICRO_REPS", 7).max(1),
        }
    }
}

const MODEL_SEED: u64 = 7;
const DATA_SEED: u64 = 11;
const LR: f64 = 1e-4;
/// Targets.
const MAX_BOOKKEEPING: f64 = 0.05;
const MAX_DEVIATION: f64 = 0.10;
/// Noise scale of the extra TRAM-x rows (the aliases' σ = 1e-5 gives δ at f32 rounding level).
const NOISE_VARIANT_SIGMA: f64 = 1e-2;

// ---------------------------------------------------------------------------------------------
// Plain passes (the reference cost of the model itself).

#[derive(Default, Clone, Copy)]
struct PassTimes {
    /// Forward + loss with a graph (no backward).
    fwd: f64,
    /// Forward + loss on a detached snapshot (no graph).
    fwd_nograd: f64,
    /// Forward + loss + backward, gradients collected.
    fwd_bwd: f64,
}

/// Timed samples `(seconds, other processes' cores)` of each kind of plain pass.
#[derive(Default)]
struct PassSamples {
    fwd: Vec<(f64, f64)>,
    fwd_nograd: Vec<(f64, f64)>,
    fwd_bwd: Vec<(f64, f64)>,
}

impl PassSamples {
    fn record(&mut self, model: &EmbeddingClassifier, batch: &Batch, reps: usize) -> anyhow::Result<()> {
        let params = model.params();
        let timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<(f64, f64)> {
            let (dt, _, o, ()) = measure(f)?;
            Ok((dt, o))
        };
        for _ in 0..reps {
            self.fwd.push(timed(&mut || {
                let l = model.forward(params, batch, Mode::TRAIN)?;
                let loss = model.loss(&l)?;
                std::hint::black_box(loss.to_scalar::<f32>()?);
                Ok(())
            })?);
            self.fwd_nograd.push(timed(&mut || {
                let w = params.detached();
                let l = model.forward(&w, batch, Mode::EVAL)?;
                let loss = model.loss(&l)?;
                std::hint::black_box(loss.to_scalar::<f32>()?);
                Ok(())
            })?);
            self.fwd_bwd.push(timed(&mut || {
                let l = model.forward(params, batch, Mode::TRAIN)?;
                let loss = model.loss(&l)?;
                std::hint::black_box(loss.to_scalar::<f32>()?);
                let store = loss.backward()?;
                let grads: Vec<Tensor> = params.iter().map(|p| store.get(p.var.as_tensor()).expect("gradient").clone()).collect();
                std::hint::black_box(&grads);
                Ok(())
            })?);
        }
        Ok(())
    }

    /// Mean over the undisturbed samples (all samples when fewer than half are undisturbed).
    fn mean(v: &[(f64, f64)]) -> f64 {
        let clean: Vec<f64> = v.iter().filter(|(_, o)| !disturbed(*o)).map(|(t, _)| *t).collect();
        let use_: Vec<f64> = if 2 * clean.len() >= v.len() { clean } else { v.iter().map(|(t, _)| *t).collect() };
        use_.iter().sum::<f64>() / use_.len().max(1) as f64
    }

    fn times(&self) -> PassTimes {
        PassTimes { fwd: Self::mean(&self.fwd), fwd_nograd: Self::mean(&self.fwd_nograd), fwd_bwd: Self::mean(&self.fwd_bwd) }
    }
    fn count(&self) -> usize {
        self.fwd.len()
    }
    fn disturbed(&self) -> usize {
        [&self.fwd, &self.fwd_nograd, &self.fwd_bwd].iter().flat_map(|v| v.iter()).filter(|(_, o)| disturbed(*o)).count()
    }
}

// ---------------------------------------------------------------------------------------------
// One alias under test.

struct Run {
    alias: String,
    composition: String,
    base: &'static str,
    /// Penalties whose gradient flows through the target branch (R3F): each adds a graph
    /// forward and a backward branch to every backward pass.
    through_target: usize,
    model: EmbeddingClassifier,
    opt: Optimizer,
    /// Bytes held by model + optimizer state after warm-up.
    resident: usize,
    times: Vec<f64>,
    /// Wall time of each timed step (equal to `times` unless the primary clock is CPU time).
    wall: Vec<f64>,
    /// Cores other processes used during each timed step.
    others: Vec<f64>,
    transient_peak: usize,
    reports: Vec<StepReport>,
}

impl Run {
    fn new(
        registry: &Registry,
        label: &str,
        config: OptimizerConfig,
        composition: &str,
        s: &Settings,
        batches: &[Batch],
    ) -> anyhow::Result<Run> {
        let alias = label;
        let before = current_bytes();
        let model = EmbeddingClassifier::random_per_token(s.shape, MODEL_SEED, &Device::Cpu)?;
        let mut opt = Optimizer::new(registry, config)?;
        let base = if opt.composition().base.name == "sgd" { "sgd" } else { "adam" };
        let desc = opt.describe();
        let through_target = desc["penalties"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["penalty"]["through_target"].as_bool().unwrap_or(false)).count())
            .unwrap_or(0);
        // Warm-up: the first TRAM-θ_{t-1} step has δ = 0 (no ascent); lazily created state
        // (Adam moments, snapshots) exists after the first step.
        for _ in 0..s.warmup {
            let r = opt.step(&model, batches)?;
            if std::env::var_os("TRAM_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "    {alias} warm-up step {}: delta {:?} eps {:.3e} ascent {} loss {:.4}",
                    r.step, r.delta, r.epsilon_norm, r.ascent, r.loss
                );
            }
        }
        let resident = current_bytes().saturating_sub(before);
        Ok(Run {
            alias: alias.to_string(),
            composition: composition.to_string(),
            base,
            through_target,
            model,
            opt,
            resident,
            times: Vec::new(),
            wall: Vec::new(),
            others: Vec::new(),
            transient_peak: 0,
            reports: Vec::new(),
        })
    }

    fn timed_step(&mut self, batches: &[Batch]) -> anyhow::Result<()> {
        let mut transient = 0;
        let (dt, wall, others, report) = measure(|| {
            let start_bytes = reset_peak();
            let r = self.opt.step(&self.model, batches)?;
            transient = transient.max(peak_bytes().saturating_sub(start_bytes));
            Ok(r)
        })?;
        self.others.push(others);
        self.transient_peak = self.transient_peak.max(transient);
        anyhow::ensure!(!report.skipped, "{}: step {} skipped", self.alias, report.step);
        self.times.push(dt);
        self.wall.push(wall);
        self.reports.push(report);
        Ok(())
    }

    /// The step times used for statistics: the undisturbed steps when at least half are.
    fn clean_times(&self) -> Vec<f64> {
        let clean: Vec<f64> = self.times.iter().zip(&self.others).filter(|(_, o)| !disturbed(**o)).map(|(t, _)| *t).collect();
        if 2 * clean.len() >= self.times.len() {
            clean
        } else {
            self.times.clone()
        }
    }
    fn disturbed(&self) -> usize {
        self.others.iter().filter(|o| disturbed(**o)).count()
    }
    fn mean_time(&self) -> f64 {
        let v = self.clean_times();
        v.iter().sum::<f64>() / v.len() as f64
    }
    fn sd_time(&self) -> f64 {
        let v = self.clean_times();
        let m = self.mean_time();
        let n = v.len() as f64;
        (v.iter().map(|t| (t - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
    }
    fn mean_wall(&self) -> f64 {
        self.wall.iter().sum::<f64>() / self.wall.len().max(1) as f64
    }
    fn median_time(&self) -> f64 {
        median(self.clean_times())
    }
    fn mean_delta(&self) -> Option<f64> {
        let d: Vec<f64> = self.reports.iter().filter_map(|r| r.delta).collect();
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    }
    /// Mean (forward, backward) passes per timed step.
    fn passes(&self) -> (f64, f64) {
        let n = self.reports.len() as f64;
        (
            self.reports.iter().map(|r| r.forward_passes as f64).sum::<f64>() / n,
            self.reports.iter().map(|r| r.backward_passes as f64).sum::<f64>() / n,
        )
    }
    fn ascents(&self) -> usize {
        self.reports.iter().filter(|r| r.ascent).count()
    }
    fn peak(&self) -> usize {
        self.resident + self.transient_peak
    }
    /// The time the step's model passes take when run on their own: every backward pass
    /// covers one graph forward (the engine counts R3F's graph-carrying target as a backward
    /// pass of its own); the remaining forwards are no-grad targets.
    fn pass_time(&self, p: &PassTimes) -> f64 {
        let (fwd, bwd) = self.passes();
        let graph = bwd;
        let nograd = (fwd - graph).max(0.0);
        graph * p.fwd_bwd + nograd * p.fwd_nograd
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn units(fwd: f64, bwd: f64) -> f64 {
    fwd + 2.0 * bwd
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping operations one by one.

struct Micro {
    name: &'static str,
    what: &'static str,
    secs: f64,
}

/// Median time of `reps` calls (after one warm-up call).
fn time_it(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?; // warm
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(measure(&mut f)?.0);
    }
    Ok(median(v))
}

fn micro_costs(registry: &Registry, s: &Settings, batch: &Batch) -> anyhow::Result<Vec<Micro>> {
    let model = EmbeddingClassifier::random_per_token(s.shape, MODEL_SEED, &Device::Cpu)?;
    let params = model.params();
    let logits = model.forward(params, batch, Mode::TRAIN)?;
    let store = model.loss(&logits)?.backward()?;
    let grads: Vec<Tensor> = params.iter().map(|p| store.get(p.var.as_tensor()).expect("gradient").clone()).collect();
    drop(store);
    let reps = s.micro_reps;
    let mut out = Vec::new();
    let mut push = |name, what, secs| out.push(Micro { name, what, secs });

    push(
        "snapshot",
        "params.snapshot(): exact copy of θ (two-pass backup; prev/ema/pretrained init)",
        time_it(reps, || {
            std::hint::black_box(params.snapshot()?);
            Ok(())
        })?,
    );
    let snap = params.snapshot()?;
    let eps = tram::ops::scale_all(&grads, 1e-3)?;
    push(
        "perturb+assign",
        "θ+ε per tensor, then params.assign (copy into the vars)",
        time_it(reps, || {
            let perturbed = snap.tensors().iter().zip(&eps).map(|(t, e)| t.add(e)).collect::<candle_core::Result<Vec<_>>>()?;
            Ok(params.assign(&perturbed)?)
        })?,
    );
    push("restore", "params.restore(&snapshot) (bitwise copy back)", time_it(reps, || Ok(params.restore(&snap)?))?);
    push(
        "global_norm",
        "global L2 norm of the gradients (one device sync)",
        time_it(reps, || {
            std::hint::black_box(tram::ops::global_norm(&grads)?);
            Ok(())
        })?,
    );
    for (name, what, table) in [
        ("ball", "ball perturbation ε = ρ g/‖g‖ (SAM)", json!({})),
        ("ball(adaptive)", "adaptive ball ε = r T²g/‖Tg‖ (ASAM, TRAM)", json!({"adaptive": true})),
    ] {
        let Component::Neighborhood(n) = registry.build(Kind::Neighborhood, "ball", &table)? else { anyhow::bail!("ball") };
        push(
            name,
            what,
            time_it(reps, || {
                std::hint::black_box(n.perturbation(params, &grads, 0.05)?);
                Ok(())
            })?,
        );
    }
    let Component::Neighborhood(n) = registry.build(Kind::Neighborhood, "fisher", &json!({}))? else { anyhow::bail!("fisher") };
    push(
        "fisher",
        "Fisher-ellipse perturbation (FSAM, TRAM-Fisher)",
        time_it(reps, || {
            std::hint::black_box(n.perturbation(params, &grads, 0.1)?);
            Ok(())
        })?,
    );
    for (name, what) in [("adam", "Adam update (base step)"), ("sgd", "SGD momentum update (base step)")] {
        let Component::Base(mut b) = registry.build(Kind::Base, name, &json!({}))? else { anyhow::bail!("{name}") };
        push(name, what, time_it(reps, || Ok(b.update(params, &grads, 1e-12)?))?);
    }
    params.restore(&snap)?;
    let Component::TrustRegion(mut ema) = registry.build(Kind::TrustRegion, "ema", &json!({}))? else { anyhow::bail!("ema") };
    ema.init(params)?;
    push("ema.after_update", "θ_ema ← dθ_ema + (1-d)θ (MESA)", time_it(reps, || Ok(ema.after_update(params)?))?);
    let Component::TrustRegion(mut prev) = registry.build(Kind::TrustRegion, "prev", &json!({}))? else { anyhow::bail!("prev") };
    prev.init(params)?;
    push(
        "prev.before_update",
        "θ_{t-1} ← copy of θ without a two-pass backup (TRPO)",
        time_it(reps, || Ok(prev.before_update(params, None)?))?,
    );
    let embeds = model.embed(params, batch, Mode::TRAIN)?;
    let mut noise = SeededNoise::new(0);
    for (name, what, kind) in [
        ("noise(normal)", "N(0,σ²) sample of the embeddings' shape (TRAM-x, TRAM-Fisher)", NoiseKind::Normal),
        ("noise(uniform)", "U(-σ,σ) sample of the embeddings' shape (R3F)", NoiseKind::Uniform),
    ] {
        push(
            name,
            what,
            time_it(reps, || {
                std::hint::black_box(noise.sample(embeds.shape(), kind, 1e-5, embeds.device(), embeds.dtype())?);
                Ok(())
            })?,
        );
    }
    let target = logits.logits.detach().affine(1.01, 0.0)?;
    let current = logits.logits.detach();
    let rows = batch.examples()?;
    for name in ["kl", "kl-sym", "mmd", "l2"] {
        let Component::Distance(d) = registry.build(Kind::Distance, name, &json!({}))? else { anyhow::bail!("{name}") };
        let what = match name {
            "kl" => "KL distance on [rows, classes] logits (TRAM δ, TRPO, MESA)",
            "kl-sym" => "symmetric KL (R3F)",
            "mmd" => "MMD, O(rows²) (TRAM-x MMD)",
            _ => "L2 (TRAM-x L2)",
        };
        push(
            name,
            what,
            time_it(reps, || {
                std::hint::black_box(d.distance(&target, &current, Reduction::Mean, rows)?.to_scalar::<f32>()?);
                Ok(())
            })?,
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let s = Settings::from_env();
    let registry = tram_plugins::registry()?;
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut aliases: Vec<(String, String)> = registry.aliases().map(|a| (a.name.clone(), a.composition.clone())).collect();
    // The paper's table order; any other registered alias follows alphabetically.
    let order = tram_plugins::aliases::PAPER_ROWS;
    aliases.sort_by_key(|(n, _)| (order.iter().position(|o| o.name == n).unwrap_or(order.len()), n.clone()));
    if !filter.is_empty() {
        // Keep the named aliases and the bases they are compared with.
        aliases
            .retain(|(n, c)| filter.contains(n) || n == "adam" || (n == "sgd" && filter.iter().any(|f| f == "sgd" || c.contains("sgd"))));
    }
    let batches = synthetic_batches(s.shape, 1, s.batch, s.seq, DATA_SEED, &Device::Cpu)?;
    let batch = &batches[0];
    let sh = s.shape;
    let n_params = EmbeddingClassifier::random_per_token(sh, MODEL_SEED, &Device::Cpu)?.params().elem_count();
    eprintln!(
        "optimizers bench: {} aliases; model vocab {} embed {} hidden {}×{} classes {} ({:.2}M params), batch {}×{}; \
         {} warm-up + {}×{} timed steps each; {} threads",
        aliases.len(),
        sh.vocab,
        sh.embed,
        sh.hidden,
        sh.layers,
        sh.classes,
        n_params as f64 / 1e6,
        s.batch,
        s.seq,
        s.warmup,
        s.rounds,
        s.steps,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    let quiet = wait_quiet(env_usize("TRAM_BENCH_WAIT_QUIET", 30) as u64);
    // Threads: candle's matmul runs on rayon with RAYON_NUM_THREADS threads (read at every
    // call); with another process holding a core, a 2-thread gemm stalls for scheduler time
    // slices, so `auto` drops to the cores left free.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads_setting = std::env::var("TRAM_BENCH_THREADS").unwrap_or_else(|_| "auto".into());
    let threads_note = match threads_setting.parse::<usize>() {
        Ok(n) if n > 0 => {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            format!("{n} (TRAM_BENCH_THREADS)")
        }
        _ if std::env::var_os("RAYON_NUM_THREADS").is_some() => format!("{} (RAYON_NUM_THREADS)", candle_core::utils::get_num_threads()),
        _ => {
            let busy = quiet.round().max(0.0) as usize;
            if quiet >= 0.5 && cores > 1 {
                let n = cores.saturating_sub(busy).max(1);
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
                format!("{n} (auto: other processes kept {quiet:.1} of {cores} cores busy)")
            } else {
                format!("{} (auto: machine quiet)", candle_core::utils::get_num_threads())
            }
        }
    };
    let threads = candle_core::utils::get_num_threads();
    ALLOWED_OTHERS.store(((cores.saturating_sub(threads) as f64 + DISTURBED_MARGIN) * 100.0) as usize, Ordering::Relaxed);
    // Clock: wall time on a quiet machine; process CPU time when the bench runs single-threaded
    // on a busy one (wall time then mostly measures the other processes).
    let clock_setting = std::env::var("TRAM_BENCH_CLOCK").unwrap_or_else(|_| "auto".into());
    let cpu_clock = match clock_setting.as_str() {
        "cpu" => true,
        "wall" => false,
        _ => threads == 1 && quiet >= 0.5 && process_cpu_secs().is_finite(),
    };
    CPU_CLOCK.store(cpu_clock, Ordering::Relaxed);
    let clock_note = if cpu_clock {
        // CPU time is not inflated by other processes: nothing to repeat or leave out.
        ALLOWED_OTHERS.store(usize::MAX / 2, Ordering::Relaxed);
        if threads > 1 {
            "process CPU time (all threads; rayon spin-waits included)".to_string()
        } else {
            "process CPU time of the single compute thread (the machine is shared)".to_string()
        }
    } else {
        "wall time".to_string()
    };
    eprintln!("  candle threads: {threads_note}; clock: {clock_note}");
    let started = Instant::now();
    let _ = RETRY_UNTIL.set(started + std::time::Duration::from_secs(env_usize("TRAM_BENCH_RETRY_SECS", 240) as u64));
    let cpu_start = cpu_sample();

    // Reference passes on their own model (the same weights as every run's at the start).
    let ref_model = EmbeddingClassifier::random_per_token(sh, MODEL_SEED, &Device::Cpu)?;
    PassSamples::default().record(&ref_model, batch, 2)?; // warm caches / allocator

    // The runs: every alias, then the noise-sized TRAM-x aliases again with a noise scale at
    // which δ clears f32 rounding, so their two-pass path is timed too (see the notes).
    let mut plan: Vec<(String, OptimizerConfig, String)> =
        aliases.iter().map(|(a, c)| (a.clone(), OptimizerConfig::new(a.as_str(), LR), c.clone())).collect();
    for (a, c) in &aliases {
        let comp = tram::Composition::parse(a, &registry)?;
        if comp.region.as_ref().is_some_and(|r| r.name == "noise") && comp.neighborhood.as_ref().is_some_and(|n| n.name == "ball") {
            plan.push((
                format!("{a} σ={NOISE_VARIANT_SIGMA:e}"),
                OptimizerConfig::new(a.as_str(), LR).with("noise", "sigma", NOISE_VARIANT_SIGMA),
                c.clone(),
            ));
        }
    }
    let mut runs = Vec::new();
    for (label, config, comp) in plan {
        eprintln!("  warm-up {label}");
        runs.push(Run::new(&registry, &label, config, &comp, &s, &batches)?);
    }
    eprintln!("  bookkeeping operations ({:.0} s)", started.elapsed().as_secs_f64());
    let micro = micro_costs(&registry, &s, batch)?;
    let mut pass_samples = PassSamples::default();
    for round in 0..s.rounds {
        eprintln!("  round {}/{} ({:.0} s)", round + 1, s.rounds, started.elapsed().as_secs_f64());
        pass_samples.record(&ref_model, batch, s.pass_reps)?;
        for r in runs.iter_mut() {
            for _ in 0..s.steps {
                r.timed_step(&batches)?;
            }
        }
    }
    let passes = pass_samples.times();
    let elapsed = started.elapsed().as_secs_f64();
    let others_mean = others_cores(cpu_start, cpu_sample());
    let disturbed_steps: usize = runs.iter().map(|r| r.disturbed()).sum();
    let total_steps: usize = runs.iter().map(|r| r.times.len()).sum();

    // ----- report -----
    let find = |name: &str| runs.iter().find(|r| r.alias == name);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut md = String::new();
    let mut csv = String::from(
        "alias,composition,base,step_ms_mean,step_ms_median,step_ms_sd,step_wall_ms_mean,timed_steps,disturbed_steps,time_ratio,fwd,bwd,units,unit_ratio,deviation_pct,\
         through_target,pass_ms,bookkeeping_ms,bookkeeping_pct,bookkeeping_beyond_base_ms,bookkeeping_beyond_base_pct,\
         resident_mib,transient_mib,peak_mib,peak_ratio,ascents,mean_delta,meets_targets\n",
    );
    let _ = writeln!(
        md,
        "## Optimizer step cost ({} CPU cores; candle threads {}; clock: {})\n\nModel: `EmbeddingClassifier` vocab {} · embed {} · hidden {}×{} layers · {} classes ({:.2}M params); \
         batch {}×{} tokens; {} warm-up + {} timed steps per alias (round-robin, {} rounds); lr {LR}. \
         Reference passes (mean of {}): forward+loss with graph {:.1} ms, no-grad forward {:.1} ms, forward+backward {:.1} ms \
         (backward ≈ {:.2} forwards). Bench time {:.0} s; other processes used {:.2} cores on average \
         ({:.2} before the start); {}\n",
        cores,
        threads_note,
        clock_note,
        sh.vocab,
        sh.embed,
        sh.hidden,
        sh.layers,
        sh.classes,
        n_params as f64 / 1e6,
        s.batch,
        s.seq,
        s.warmup,
        s.rounds * s.steps,
        s.rounds,
        pass_samples.count(),
        passes.fwd * 1e3,
        passes.fwd_nograd * 1e3,
        passes.fwd_bwd * 1e3,
        (passes.fwd_bwd - passes.fwd) / passes.fwd,
        elapsed,
        others_mean,
        quiet,
        if cpu_clock {
            "no disturbance filtering (CPU clock).".to_string()
        } else {
            format!(
                "{} disturbed measurements were repeated; {disturbed_steps}/{total_steps} timed steps and {}/{} reference passes \
                 remained disturbed (others > {:.1} cores) and are left out of the means.",
                RETRIES.load(Ordering::Relaxed),
                pass_samples.disturbed(),
                3 * pass_samples.count(),
                allowed_others()
            )
        },
    );
    let _ = writeln!(
        md,
        "| alias | base | step ms | time ×base | fwd | bwd | units | units ×base | time vs units | peak MiB | peak ×base | bookkeeping | beyond base | ascents | targets |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for r in &runs {
        let base = find(r.base).unwrap_or(r);
        let t = r.mean_time();
        let (fwd, bwd) = r.passes();
        let (bf, bb) = base.passes();
        let time_ratio = t / base.mean_time();
        let u = units(fwd, bwd);
        let unit_ratio = u / units(bf, bb);
        let dev = time_ratio / unit_ratio - 1.0;
        let pass_t = r.pass_time(&passes);
        let bk = t - pass_t;
        let bk_share = bk / t;
        let bk_base = base.mean_time() - base.pass_time(&passes);
        let beyond = bk - bk_base;
        let peak_ratio = r.peak() as f64 / base.peak() as f64;
        let ok = bk_share <= MAX_BOOKKEEPING && dev.abs() <= MAX_DEVIATION;
        let through = if r.through_target > 0 { "†" } else { "" };
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {:.1} | {:.1}{} | {:.1} | {:.2} | {:+.1}% | {:.1} | {:.2} | {:.1}% ({:.0} ms) | {:.1}% ({:.0} ms) | {}/{} | {} |",
            r.alias,
            r.base,
            t * 1e3,
            time_ratio,
            fwd,
            bwd,
            through,
            u,
            unit_ratio,
            dev * 100.0,
            mib(r.peak()),
            peak_ratio,
            bk_share * 100.0,
            bk * 1e3,
            beyond / t * 100.0,
            beyond * 1e3,
            r.ascents(),
            r.reports.len(),
            if ok { "✓" } else { "✗" },
        );
        let _ = writeln!(
            csv,
            "{},\"{}\",{},{:.3},{:.3},{:.3},{:.3},{},{},{:.4},{},{},{},{:.4},{:.2},{},{:.3},{:.3},{:.2},{:.3},{:.2},{:.2},{:.2},{:.2},{:.4},{},{},{}",
            r.alias,
            r.composition.replace('"', "\"\""),
            r.base,
            t * 1e3,
            r.median_time() * 1e3,
            r.sd_time() * 1e3,
            r.mean_wall() * 1e3,
            r.times.len(),
            r.disturbed(),
            time_ratio,
            fwd,
            bwd,
            u,
            unit_ratio,
            dev * 100.0,
            r.through_target,
            pass_t * 1e3,
            bk * 1e3,
            bk_share * 100.0,
            beyond * 1e3,
            beyond / t * 100.0,
            mib(r.resident),
            mib(r.transient_peak),
            mib(r.peak()),
            peak_ratio,
            r.ascents(),
            r.mean_delta().map(|d| format!("{d:e}")).unwrap_or_default(),
            ok,
        );
    }
    let _ = writeln!(
        md,
        "\nunits = fwd + 2·bwd; time vs units = (time ×base)/(units ×base) − 1 (target within ±{:.0}%); \
         bookkeeping = step time − model-pass time, the pass time rebuilt from the reference passes (target ≤ {:.0}% of the step); \
         beyond base = bookkeeping − the base optimizer's own bookkeeping (its update), i.e. what the composition adds; \
         peak = model + optimizer state + the step's transient peak (counting allocator); \
         ascents = timed steps that took the two-pass ascent. \
         † the backward also runs through a graph-carrying target forward (R3F `through_target`), which the engine \
         counts as a backward pass of its own. \
         Rows `… σ=…` repeat the noise-sized TRAM-x aliases with a larger noise scale: at the default σ = 1e-5 their δ \
         is at f32 rounding level on this model (it can come out ≤ 0, and then no ascent is taken); mean δ is in the CSV.\n",
        MAX_DEVIATION * 100.0,
        MAX_BOOKKEEPING * 100.0,
    );
    let step_ref = find("adam").map(|r| r.mean_time()).unwrap_or(1.0);
    let _ = writeln!(md, "### Bookkeeping operations (mean of {} calls)\n", s.micro_reps);
    let _ = writeln!(md, "| operation | ms | % of adam step | what |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    let mut csv_micro = String::from("operation,ms,pct_of_adam_step,what\n");
    for m in &micro {
        let _ = writeln!(md, "| {} | {:.2} | {:.1}% | {} |", m.name, m.secs * 1e3, m.secs / step_ref * 100.0, m.what);
        let _ = writeln!(csv_micro, "{},{:.4},{:.2},\"{}\"", m.name, m.secs * 1e3, m.secs / step_ref * 100.0, m.what);
    }

    println!("{md}");
    let dir = std::env::var_os("TRAM_BENCH_OUT").map(PathBuf::from).unwrap_or_else(|| {
        let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        tests.parent().unwrap_or(&tests).join("target").join("bench")
    });
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("optimizers.md"), &md)?;
    std::fs::write(dir.join("optimizers.csv"), &csv)?;
    std::fs::write(dir.join("optimizers-operations.csv"), &csv_micro)?;
    eprintln!("wrote {}", dir.join("optimizers.md").display());
    Ok(())
}
