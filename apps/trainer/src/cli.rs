//! The command-line side of the apps (`tram lm`, `tram xnli`, `tram vision`): arguments and
//! the driver that runs every selected row and seed, then writes the table.

use crate::apps::App;
use crate::config::Sources;
use crate::error::{Error, Result};
use crate::results;
use crate::rundir;
use crate::trainer::{self, Control, Outcome, RunSpec};
use std::path::PathBuf;

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
}

/// What the driver did.
#[derive(Debug)]
pub struct Summary {
    /// The Markdown table(s) written.
    pub tables: Vec<String>,
    /// Whether a run was interrupted (Ctrl-C).
    pub interrupted: bool,
}

/// Run an app as its subcommand does.
pub fn run_app(app: App, args: &AppArgs, control: &Control, registry: &tram::Registry) -> Result<Summary> {
    if let Some(dir) = &args.table {
        let md = results::write_table(&app.table_spec(None), dir)?;
        return Ok(Summary { tables: vec![md], interrupted: false });
    }
    let sources = Sources { file: args.config.clone(), sets: args.sets.clone(), env: None };
    // The flags join the control's (which shares its stop flag with the Ctrl-C handler).
    let control = Control { resume: control.resume || args.resume, force: control.force || args.force, ..control.clone() };
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
    if dry_run {
        for r in &runs {
            println!("# run `{}` ({})\n{}", r.name, r.label, toml::to_string(&r.config.to_json()).unwrap_or_default());
        }
        return Ok(Summary { tables: Vec::new(), interrupted: false });
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
    'runs: for (i, run) in runs.iter().enumerate() {
        let row = all.iter().position(|n| n == &run.name).unwrap_or(i);
        if !outs.iter().any(|(o, _)| o == &run.config.out) {
            outs.push((run.config.out.clone(), i));
        }
        for seed in run.seeds() {
            let prepared = app.prepare(run, seed)?;
            let spec = RunSpec { app: app.name(), run, row, seed, tokenizer: prepared.tokenizer.clone(), registry };
            match trainer::run(&spec, prepared.model, prepared.data, control)? {
                Outcome::Finished(r) => {
                    let cols: Vec<String> =
                        r.columns.iter().map(|c| format!("{} {:.3}/{:.2}%", c.label, c.metrics.perplexity, c.metrics.accuracy)).collect();
                    tracing::info!(run = %run.name, seed, "finished: {}", cols.join(", "));
                }
                Outcome::Interrupted { .. } => {
                    interrupted = true;
                    break 'runs;
                }
            }
        }
    }
    let mut tables = Vec::new();
    for (out, i) in outs {
        // What an earlier command's crash left of the table files.
        rundir::remove_dead_temps(&out)?;
        let md = results::write_table(&app.table_spec(runs.get(i)), &out)?;
        tracing::info!(dir = %out.display(), "results table written (results.json, results.csv, results.md)");
        tables.push(md);
    }
    Ok(Summary { tables, interrupted })
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
