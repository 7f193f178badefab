//! The `tram` command: fine-tune with TRAM and the optimizers of the TRAM paper.

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tram::engine::{PENALTY_SETTINGS, REGION_SETTINGS};
use tram::{Kind, Optimizer, OptimizerConfig, Registry};
use tram_trainer::apps::App;

mod plugins;

#[derive(Parser)]
#[command(name = "tram", version, about = "Trust Region Aware Minimization for candle")]
struct Cli {
    /// Load components from a run-time plugin library, or from every shared library in a
    /// directory (repeatable). The paths join those of `TRAM_PLUGINS` (a path list like `PATH`,
    /// loaded first) for every registry this process builds; the apps' configs may add more
    /// with `plugins = [...]`. See docs/writing-a-plugin.md.
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    plugins: Vec<std::path::PathBuf>,
    /// The subcommands other than the apps (each app's subcommand is built from
    /// [`App::ALL`] by [`command`]: `None` here means an app's).
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands of [`Command`], then one per app of [`App::ALL`] (its name, its help line,
/// the [`tram_trainer::cli::AppArgs`]), shown between `explain` and `analyze`.
fn command() -> clap::Command {
    let mut cmd = Cli::command().subcommand_required(true).arg_required_else_help(true);
    // Derived subcommands are numbered in declaration order; `analyze` moves after the apps.
    let analyze_at = 3 + App::ALL.len();
    cmd = cmd.mut_subcommand("analyze", |c| c.display_order(analyze_at));
    cmd = cmd.mut_subcommand("plugin", |c| c.display_order(analyze_at + 1));
    for (i, app) in App::ALL.iter().enumerate() {
        // The about line after `augment_args`, which sets `AppArgs`' own doc comment.
        let sub = tram_trainer::cli::AppArgs::augment_args(clap::Command::new(app.name()));
        cmd = cmd.subcommand(sub.about(app.about()).long_about(None).display_order(3 + i));
    }
    cmd
}

#[derive(Subcommand)]
enum Command {
    /// The quickstart: a small pretrained GPT-2 fine-tuned on one bundled domain with each
    /// method, perplexity on every domain (paper Table 4 and Figure 2 in miniature, offline, minutes on a CPU).
    Quickstart(tram_quickstart::cli::Args),
    /// Print every registered component (kind, name, summary, parameters with defaults) and every alias.
    List,
    /// Parse a composition or alias and print its canonical form and resolved parameters.
    Explain {
        /// A composition such as `noise+ball+adam` or an alias such as `tram-noise`.
        composition: String,
    },
    /// Loss-surface and representation analysis of finished runs (paper Table 6): ε-sharpness
    /// in and out of domain with their correlation, and CKA to the pretrained model per domain.
    Analyze(tram_analysis::cli::AnalyzeArgs),
    /// Run-time plugins: `check PATH` compares a library's build fingerprint with this
    /// program's; `host` prints this program's (also `tram --version --verbose`).
    Plugin {
        #[command(subcommand)]
        command: plugins::PluginCommand,
    },
}

fn run_app(app: App, args: &tram_trainer::cli::AppArgs, registry: &Registry) -> Result<()> {
    let control = tram_trainer::Control { resume: args.resume, ..Default::default() };
    tram_trainer::cli::install_ctrlc(&control)?;
    let summary = tram_trainer::cli::run_app(app, args, &control, registry)?;
    // The data-parallel job's MPI session ends here (an MPI rank must not exit without it).
    tram_trainer::distributed::finalize();
    for table in &summary.tables {
        println!("{table}");
    }
    if summary.interrupted {
        eprintln!("interrupted: checkpoint written; run the same command with --resume to continue");
        std::process::exit(130);
    }
    if !summary.failures.is_empty() {
        anyhow::bail!(
            "{} run(s) failed (the table above shows them, marked):\n  {}",
            summary.failures.len(),
            summary.failures.join("\n  ")
        );
    }
    Ok(())
}

fn list(registry: &Registry) {
    let mut kind = None;
    for e in registry.entries() {
        if kind != Some(e.kind) {
            kind = Some(e.kind);
            println!("\n{}s:", e.kind);
            if e.kind == Kind::TrustRegion {
                println!("  (every trust region also takes:)");
                for (k, d) in REGION_SETTINGS {
                    println!("      {k:<16} {d}");
                }
                println!("  (and as a penalty `reg:<name>`:)");
                for (k, d) in PENALTY_SETTINGS {
                    println!("      {k:<16} {d}");
                }
            }
        }
        let origin = if e.origin == "built-in" { String::new() } else { format!("  [{}]", e.origin) };
        println!("  {:<12} {}{origin}", e.name, e.summary);
        for p in &e.params {
            println!("      {:<16} = {:<10} {}", p.name, p.default, p.doc);
        }
    }
    println!("\naliases (paper rows; `<alias>+sgd` swaps the base optimizer):");
    for a in registry.aliases() {
        let origin = match registry.alias_origin(&a.name) {
            "built-in" => String::new(),
            path => format!("  [{path}]"),
        };
        println!("  {:<16} = {:<60} {}{origin}", a.name, a.composition, a.summary);
    }
    print!("{}", plugins::refused_section(registry));
}

/// The log filter: `TRAM_LOG` when set, else `RUST_LOG`, else `warn` (warnings such as skipped
/// steps, dropped ascents, diverged runs and skipped data rows show by default).
fn log_filter() -> Result<tracing_subscriber::EnvFilter> {
    for var in ["TRAM_LOG", "RUST_LOG"] {
        if let Some(v) = std::env::var_os(var) {
            let v = v.to_string_lossy().into_owned();
            if v.trim().is_empty() {
                continue;
            }
            return tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| {
                anyhow::anyhow!(
                    "{var}=`{v}` is not a log filter ({e}); use a level such as `{var}=info`, or e.g. `{var}=warn,tram_trainer=debug`"
                )
            });
        }
    }
    Ok(tracing_subscriber::EnvFilter::new("warn"))
}

fn main() -> Result<()> {
    // Colours only on a terminal: logs redirected to a file or a scheduler's log stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(log_filter()?).with_writer(std::io::stderr).with_ansi(colour).init();
    // Freed step buffers stay in the heap (`TRAM_MALLOC=default` keeps glibc's defaults).
    tram_trainer::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if plugins::wants_verbose_version(&args) {
        print!("{}", plugins::host());
        return Ok(());
    }
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !cli.plugins.is_empty() {
        // Through the environment, so that registries built elsewhere in this process see them too.
        let mut paths: Vec<std::path::PathBuf> =
            std::env::var_os(tram::PLUGINS_ENV).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
        paths.extend(cli.plugins.iter().cloned());
        std::env::set_var(tram::PLUGINS_ENV, std::env::join_paths(paths)?);
    }
    let mut registry = tram_plugins::registry()?;
    // A plugin that does not load is a warning: commands that do not use it still run.
    plugins::load_env(&mut registry);
    let Some(command) = cli.command else {
        let (name, sub) = matches.subcommand().expect("a subcommand is required");
        let app = App::named(name).expect("every subcommand that is not a `Command` is an app's");
        let args = tram_trainer::cli::AppArgs::from_arg_matches(sub).unwrap_or_else(|e| e.exit());
        return run_app(app, &args, &registry);
    };
    match command {
        Command::List => list(&registry),
        Command::Explain { composition } => {
            let opt = Optimizer::new(&registry, OptimizerConfig::new(composition, 1e-3))?;
            println!("{opt}");
            println!("{}", serde_json::to_string_pretty(&opt.describe())?);
        }
        Command::Quickstart(args) => {
            let code = tram_quickstart::cli::main(args, &registry)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Analyze(args) => println!("{}", tram_analysis::cli::run(&args)?),
        Command::Plugin { command: plugins::PluginCommand::Host } => print!("{}", plugins::host()),
        Command::Plugin { command: plugins::PluginCommand::Check { path } } => {
            let (table, matches) = plugins::check(&path)?;
            print!("{table}");
            if !matches {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_is_a_subcommand_with_its_help_line_between_explain_and_analyze() {
        let cmd = command();
        cmd.clone().debug_assert();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        let mut expected = vec!["quickstart", "list", "explain"];
        expected.extend(App::ALL.iter().map(|a| a.name()));
        expected.extend(["analyze", "plugin"]);
        let mut shown = names.clone();
        shown.sort_by_key(|n| cmd.find_subcommand(n).unwrap().get_display_order());
        assert_eq!(shown, expected);
        for app in App::ALL {
            let sub = cmd.find_subcommand(app.name()).unwrap();
            assert_eq!(sub.get_about().map(|a| a.to_string()).as_deref(), Some(app.about()));
            assert!(sub.get_arguments().any(|a| a.get_id() == "resume"), "`tram {}` takes the app arguments", app.name());
        }
    }

    #[test]
    fn an_app_subcommand_parses_to_no_command_and_its_app_args() {
        let m = command().try_get_matches_from(["tram", "xnli", "--dry-run", "--set", "seed=3"]).unwrap();
        assert!(Cli::from_arg_matches(&m).unwrap().command.is_none());
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(App::named(name), Some(App::Xnli));
        let args = tram_trainer::cli::AppArgs::from_arg_matches(sub).unwrap();
        assert!(args.dry_run);
        assert_eq!(args.sets, ["seed=3"]);
    }
}
