//! The command-line side of the apps (`tram lm`, `tram xnli`, `tram vision`): arguments and
//! the driver that runs every selected row and seed, then writes the table.

use crate::apps::App;
use crate::config::Sources;
use crate::error::{Error, Result};
use crate::results;
use crate::rundir;
use crate::trainer::{self, Control, Outcome, RunSpec};
use std::path::PathBuf;
use tram::distributed::Collective;

/// Arguments shared by the app subcommands.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AppArgs {
    /// The experiment's TOML file (e.g. configs/lm-m2d2-wiki.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a key, e.g. `--set train.steps=100 --set optimizer.lr=3e-5` (repeatable; wins
    /// over the file and over TRAM_* environment variables such as TRAM_TRAIN__STEPS=100).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run only these `[[runs]]` rows of the config (repeatable or comma separated; default: all).
    #[arg(long = "run", value_name = "NAME", value_delimiter = ',')]
    pub runs: Vec<String>,
    /// Continue every run from the checkpoint in its output directory; a finished run whose
    /// results match the configuration is kept and skipped (results of another configuration
    /// are an error). See apps/trainer/README.md, "Run directories".
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Discard the results, checkpoints, metrics and model an earlier run left in a run's
    /// output directory and train it again (without it they are never overwritten).
    #[arg(long)]
    pub force: bool,
    /// Only rebuild the results table from the results.json files under DIR.
    #[arg(long, value_name = "DIR")]
    pub table: Option<PathBuf>,
    /// Print each selected run's resolved configuration and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop each run as if interrupted once this many steps are done, with a checkpoint
    /// (time-boxed jobs; `--resume` continues it).
    #[arg(long, value_name = "STEPS")]
    pub stop_after: Option<u64>,
    /// Time the phases of every training step (batch, forward / backward per pass, all-reduce,
    /// ascent, update, ...; the device synchronised at each boundary, which costs some speed) and
    /// write profile.json to each run directory, with a summary on the terminal.
    #[arg(long)]
    pub profile: bool,
}

/// What the driver did.
#[derive(Debug)]
pub struct Summary {
    /// The Markdown table(s) written.
    pub tables: Vec<String>,
    /// Whether a run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// Runs that finished but failed (every step skipped), one message each: their results
    /// are in the table (marked), the other rows ran; the command should exit non-zero.
    pub failures: Vec<String>,
}

/// Run an app as its subcommand does.
pub fn run_app(app: App, args: &AppArgs, control: &Control, registry: &tram::Registry) -> Result<Summary> {
    if let Some(dir) = &args.table {
        let md = results::write_table(&app.table_spec(None), dir)?;
        return Ok(Summary { tables: vec![md], interrupted: false, failures: Vec::new() });
    }
    let sources = Sources { file: args.config.clone(), sets: args.sets.clone(), env: None };
    // The flags join the control's (which shares its stop flag with the Ctrl-C handler).
    let control = Control {
        resume: control.resume || args.resume,
        force: control.force || args.force,
        stop_after: args.stop_after.or(control.stop_after),
        profile: control.profile || args.profile,
        ..control.clone()
    };
    run_sources(app, &sources, &args.runs, args.dry_run, &control, registry)
}

/// [`run_app`] from explicit sources (tests pass their own environment).
pub fn run_sources(
    app: App,
    sources: &Sources,
    names: &[String],
    dry_run: bool,
    control: &Control,
    registry: &tram::Registry,
) -> Result<Summary> {
    let all = sources.run_names()?;
    let runs = sources.resolve(names, registry)?;
    crate::rows::check_labels(sources, &runs)?;
    if dry_run {
        print!("{}", dry_run_text(&runs)?);
        return Ok(Summary { tables: Vec::new(), interrupted: false, failures: Vec::new() });
    }
    // Every output checked before the first step: a clash found after hours of training of
    // the first rows would be found too late.
    let mut dirs: Vec<(PathBuf, &str)> = Vec::new();
    for run in &runs {
        for seed in run.seeds() {
            let dir = run.dir(seed);
            if let Some((_, other)) = dirs.iter().find(|(d, _)| d == &dir) {
                return Err(Error::Config(format!(
                    "runs `{other}` and `{}` would both write {}: select each run once (`--run`), list each seed once (`seeds`), \
                     and give runs distinct names",
                    run.name,
                    dir.display()
                )));
            }
            rundir::preflight(app.name(), run, seed, control)?;
            dirs.push((dir, &run.name));
        }
        for table in ["results.json", "results.csv", "results.md"] {
            rundir::check_kind(&run.config.out.join(table), false, "results table")?;
        }
    }
    let mut outs: Vec<(PathBuf, usize)> = Vec::new();
    let mut interrupted = false;
    let mut failures = Vec::new();
    'runs: for (i, run) in runs.iter().enumerate() {
        let row = all.iter().position(|n| n == &run.name).unwrap_or(i);
        if !outs.iter().any(|(o, _)| o == &run.config.out) {
            outs.push((run.config.out.clone(), i));
        }
        for seed in run.seeds() {
            match run_seed(app, run, row, seed, control, registry)? {
                Outcome::Finished(r) => {
                    let cols: Vec<String> =
                        r.columns.iter().map(|c| format!("{} {:.3}/{:.2}%", c.label, c.metrics.perplexity, c.metrics.accuracy)).collect();
                    tracing::info!(run = %run.name, seed, "finished: {}", cols.join(", "));
                    if let Some(why) = &r.failed {
                        let msg = format!("run `{}` seed {seed} failed: {why} ({})", run.name, run.dir(seed).display());
                        tracing::error!("{msg}; continuing with the other runs");
                        failures.push(msg);
                    }
                }
                Outcome::Interrupted { .. } => {
                    interrupted = true;
                    break 'runs;
                }
            }
        }
    }
    let mut tables = Vec::new();
    // Only rank 0 of a data-parallel job writes the tables.
    let outs = if crate::distributed::rank() == 0 { outs } else { Vec::new() };
    for (out, i) in outs {
        // What an earlier command's crash left of the table files.
        rundir::remove_dead_temps(&out)?;
        if results::collect(&out)?.is_empty() {
            // Interrupted before any run of this `out` finished: no table yet.
            continue;
        }
        let md = results::write_table(&app.table_spec(runs.get(i)), &out)?;
        tracing::info!(dir = %out.display(), "results table written (results.json, results.csv, results.md)");
        tables.push(md);
    }
    Ok(Summary { tables, interrupted, failures })
}

/// Prepare and train one seed of `run`: in this thread, or with `distributed.engine =
/// "threads"` as that many ranks, each a thread computing on one candle thread with its own model replica
/// and data, rank 0's outcome returned. The first rank to fail fails the others' collectives and
/// its error is returned.
fn run_seed(
    app: App,
    run: &crate::config::RunConfig,
    row: usize,
    seed: u64,
    control: &Control,
    registry: &tram::Registry,
) -> Result<Outcome> {
    let one = |collective: Option<std::sync::Arc<dyn tram::distributed::Collective>>| -> Result<Outcome> {
        let prepared = app.prepare(run, seed)?;
        let spec = RunSpec { app: app.name(), run, row, seed, tokenizer: prepared.tokenizer.clone(), registry, collective };
        trainer::run(&spec, prepared.model, prepared.data, control)
    };
    let cfg = &run.config.distributed;
    if cfg.engine != crate::config::DistributedEngine::Threads {
        return one(None);
    }
    let batch = run.config.train.batch_size;
    let world = crate::distributed::thread_ranks(cfg, &crate::device(&run.config.device)?, batch, crate::distributed::cores())?;
    let timeout = std::time::Duration::from_secs_f64(cfg.timeout_s);
    tracing::info!(engine = "threads", world, "data-parallel job");
    let _one_thread = OneCandleThread::set();
    let first_error: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let outcomes: Vec<Option<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = tram::distributed::Threads::group(world, timeout)
            .into_iter()
            .map(|rank| {
                let (one, first_error) = (&one, &first_error);
                std::thread::Builder::new()
                    .name(format!("tram-rank-{}", rank.rank()))
                    .spawn_scoped(s, move || {
                        let rank = std::sync::Arc::new(rank);
                        // One thread per rank: what candle runs through rayon runs on this pool.
                        let out = rayon::ThreadPoolBuilder::new()
                            .num_threads(1)
                            .build()
                            .map_err(|e| Error::Config(format!("starting data-parallel rank {}: {e}", rank.rank())))
                            .and_then(|pool| pool.install(|| one(Some(rank.clone()))));
                        match out {
                            Ok(o) => Some(o),
                            Err(e) => {
                                let why = e.to_string();
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                                rank.fail(&why);
                                None
                            }
                        }
                    })
                    .expect("spawning a data-parallel rank's thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    outcomes.into_iter().next().flatten().ok_or_else(|| Error::Config("data-parallel rank 0 returned no outcome".into()))
}

/// candle sizes its parallel CPU ops (the matrix products among them) by `RAYON_NUM_THREADS`,
/// read at every call: while the ranks of `engine = "threads"` run it is 1 (each rank's ops on
/// its own thread; with 2 the ranks' products contended for the cores and the quickstart's Adam
/// steps took 2.4× as long), and the previous value is restored when the last job of the
/// process that set it ends (jobs may overlap, e.g. in a test binary).
struct OneCandleThread;

/// Jobs holding [`OneCandleThread`], and the value `RAYON_NUM_THREADS` had before the first.
static ONE_THREAD_JOBS: std::sync::Mutex<(usize, Option<std::ffi::OsString>)> = std::sync::Mutex::new((0, None));

impl OneCandleThread {
    fn set() -> Self {
        let mut jobs = ONE_THREAD_JOBS.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.0 == 0 {
            jobs.1 = std::env::var_os("RAYON_NUM_THREADS");
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
        jobs.0 += 1;
        Self
    }
}

impl Drop for OneCandleThread {
    fn drop(&mut self) {
        let mut jobs = ONE_THREAD_JOBS.lock().unwrap_or_else(|e| e.into_inner());
        jobs.0 -= 1;
        if jobs.0 == 0 {
            match jobs.1.take() {
                Some(v) => std::env::set_var("RAYON_NUM_THREADS", v),
                None => std::env::remove_var("RAYON_NUM_THREADS"),
            }
        }
    }
}

/// `v` as TOML. TOML has no null: keys whose value is null (unset optional settings) are left
/// out of the tables and listed in a trailing `# unset: …` comment.
pub fn to_toml(v: &serde_json::Value) -> std::result::Result<String, String> {
    fn strip(v: &serde_json::Value, path: &str, unset: &mut Vec<String>) -> std::result::Result<serde_json::Value, String> {
        use serde_json::Value;
        Ok(match v {
            Value::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, x) in m {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    if x.is_null() {
                        unset.push(p);
                    } else {
                        out.insert(k.clone(), strip(x, &p, unset)?);
                    }
                }
                Value::Object(out)
            }
            Value::Array(xs) => {
                if xs.iter().any(Value::is_null) {
                    return Err(format!("`{path}` holds a null in a list, which TOML cannot write"));
                }
                Value::Array(xs.iter().map(|x| strip(x, path, unset)).collect::<std::result::Result<_, _>>()?)
            }
            other => other.clone(),
        })
    }
    let mut unset = Vec::new();
    let stripped = strip(v, "", &mut unset)?;
    let mut text = toml::to_string(&stripped).map_err(|e| e.to_string())?;
    if !unset.is_empty() {
        text.push_str(&format!("# unset: {}\n", unset.join(", ")));
    }
    Ok(text)
}

/// What `--dry-run` prints: per selected run a `# run` header and its resolved configuration
/// as TOML (unset optional keys, which TOML cannot write, as comments).
pub fn dry_run_text(runs: &[crate::RunConfig]) -> Result<String> {
    let mut out = String::new();
    for r in runs {
        let text = to_toml(&r.config.to_json())
            .map_err(|e| crate::error::Error::Config(format!("printing the resolved configuration of run `{}`: {e}", r.name)))?;
        out.push_str(&format!("# run `{}` ({})\n{text}\n", r.name, r.label));
    }
    Ok(out)
}

/// Install a handler for Ctrl-C (SIGINT) and for SIGTERM and SIGHUP (what schedulers and a
/// closed terminal send) that asks running training to stop after the current step with a
/// checkpoint; a second signal exits at once.
pub fn install_ctrlc(control: &Control) -> Result<()> {
    let stop = control.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupted (Ctrl-C or SIGTERM): finishing the current step, writing a checkpoint (interrupt again to exit at once)");
    })
    .map_err(|e| Error::Config(format!("cannot install the Ctrl-C / SIGTERM handler: {e}")))
}
