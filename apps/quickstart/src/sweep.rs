//! `tram quickstart sweep`: hyperparameter selection as in the paper, on the training domain's
//! validation split only. Each method of the quickstart config is fine-tuned at every point of
//! a small grid (`configs/quickstart/sweep.toml`: the learning rates, and the method's own
//! parameter: ρ for the SAM family, λ for the penalties, σ for the noise target), one seed per
//! point; the point with the lowest in-domain validation perplexity (of the model selected on
//! it) is chosen. The grid and every score are recorded (`sweep.csv`, `sweep.md`) and the chosen
//! values are written into the rows of the quickstart config, which the default run then uses.

use crate::{repo_path, Options, ZERO_SHOT};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tram_trainer::apps::App;
use tram_trainer::config::Sources;
use tram_trainer::Control;

/// The bundled grid.
pub const SWEEP_CONFIG: &str = "configs/quickstart/sweep.toml";
/// Where the bundled sweep's scores are recorded (`sweep.csv`, `sweep.md`).
pub const RECORD_DIR: &str = "configs/quickstart";
/// Default output directory of the sweep's runs.
pub const DEFAULT_OUT: &str = "runs/quickstart-sweep";

/// The grid: `sweep.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// The one seed of every grid point.
    pub seed: u64,
    /// Learning rates tried for every method.
    pub lr: Vec<f64>,
    /// Per method (a `[[runs]]` name of the quickstart config): its own parameter's values.
    pub methods: Vec<MethodGrid>,
}

/// One method's part of the grid.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MethodGrid {
    /// The `[[runs]]` name.
    pub name: String,
    /// The parameter's key under `optimizer` (`ball.rho`, `reg:noise.lambda`, `noise.sigma`);
    /// none: only the learning rate is tuned.
    #[serde(default)]
    pub key: Option<String>,
    /// The parameter's values.
    #[serde(default)]
    pub values: Vec<f64>,
}

impl Grid {
    /// Read and check a grid file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the sweep grid {}", path.display()))?;
        let grid: Grid = toml::from_str(&text).with_context(|| format!("parsing the sweep grid {}", path.display()))?;
        grid.check().with_context(|| format!("the sweep grid {}", path.display()))?;
        Ok(grid)
    }

    fn check(&self) -> Result<()> {
        if self.lr.is_empty() || self.lr.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            bail!("key `lr`: give at least one positive learning rate, got {:?}", self.lr);
        }
        if self.methods.is_empty() {
            bail!("no [[methods]]: name at least one row of the quickstart config");
        }
        for m in &self.methods {
            match (&m.key, m.values.is_empty()) {
                (Some(k), true) => bail!("method `{}`: key `{k}` has no `values`", m.name),
                (None, false) => bail!("method `{}`: `values` without a `key` (the parameter they are for)", m.name),
                _ => {}
            }
            if m.values.iter().any(|x| !x.is_finite()) {
                bail!("method `{}`: non-finite value in {:?}", m.name, m.values);
            }
            if let Some(k) = &m.key {
                if k.split('.').any(str::is_empty) {
                    bail!("method `{}`: `{k}` is not a key path under `optimizer` such as `ball.rho`", m.name);
                }
            }
            if self.methods.iter().filter(|o| o.name == m.name).count() > 1 {
                bail!("method `{}` is listed twice", m.name);
            }
        }
        Ok(())
    }

    /// Every grid point of every method, in grid order.
    pub fn points(&self) -> Vec<Point> {
        let mut out = Vec::new();
        for m in &self.methods {
            for &lr in &self.lr {
                if m.values.is_empty() {
                    out.push(Point { method: m.name.clone(), lr, key: None, value: None });
                }
                for &v in &m.values {
                    out.push(Point { method: m.name.clone(), lr, key: m.key.clone(), value: Some(v) });
                }
            }
        }
        out
    }
}

/// One grid point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The `[[runs]]` name.
    pub method: String,
    /// Learning rate.
    pub lr: f64,
    /// The method's parameter (key under `optimizer`), if any.
    pub key: Option<String>,
    /// Its value.
    pub value: Option<f64>,
}

impl Point {
    /// The directory name of the point: `lr-0.001` or `lr-0.001_ball.rho-0.05`.
    pub fn dir_name(&self) -> String {
        let mut s = format!("lr-{}", self.lr);
        if let (Some(k), Some(v)) = (&self.key, self.value) {
            s.push_str(&format!("_{}-{v}", k.replace(':', "-")));
        }
        s
    }

    /// The `--set` overrides of the point.
    pub fn sets(&self) -> Vec<String> {
        let mut s = vec![format!("optimizer.lr={:e}", self.lr)];
        if let (Some(k), Some(v)) = (&self.key, self.value) {
            s.push(format!("optimizer.{k}={v:e}"));
        }
        s
    }
}

/// A scored grid point.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// The point.
    pub point: Point,
    /// In-domain validation perplexity of the selected model (`∞` when the run diverged or failed).
    pub valid_perplexity: f64,
    /// The selected step.
    pub selected_step: u64,
}

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The grid (`None`: the bundled `configs/quickstart/sweep.toml`).
    pub grid: Option<PathBuf>,
    /// The quickstart options (config, model, data, steps, sets); `out` is the sweep's run directory.
    pub quick: Options,
    /// Where to record `sweep.{csv,md}` (`None`: don't).
    pub record: Option<PathBuf>,
    /// Write the chosen values into the config's rows.
    pub write_config: bool,
}

/// What [`run`] found.
#[derive(Debug)]
pub struct SweepReport {
    /// The grid.
    pub grid: Grid,
    /// Every point's score, in grid order.
    pub scores: Vec<Score>,
    /// The chosen point per method (grid order of the methods).
    pub chosen: Vec<Score>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The chosen point of each method: the lowest validation perplexity (the first in grid order
/// on a tie; a method whose every point diverged has none).
pub fn choose(scores: &[Score]) -> Vec<Score> {
    let mut out: Vec<Score> = Vec::new();
    for s in scores {
        if !s.valid_perplexity.is_finite() {
            continue;
        }
        match out.iter_mut().find(|c| c.point.method == s.point.method) {
            Some(c) if s.valid_perplexity < c.valid_perplexity => *c = s.clone(),
            Some(_) => {}
            None => out.push(s.clone()),
        }
    }
    out
}

/// Run the sweep: every grid point of every method (one seed, no test evaluation: the score
/// is the in-domain validation perplexity), then the records and the config.
pub fn run(opts: &SweepOptions, control: &Control, registry: &tram::Registry) -> Result<SweepReport> {
    let started = Instant::now();
    let grid_path = opts.grid.clone().unwrap_or_else(|| repo_path(SWEEP_CONFIG));
    let grid = Grid::read(&grid_path)?;
    let config = opts.quick.config.clone().unwrap_or_else(|| repo_path(crate::FINETUNE_CONFIG));
    let (base, _) = crate::sources(&Options { config: Some(config.clone()), seeds: None, ..opts.quick.clone() })?;
    let names = base.run_names()?;
    for m in &grid.methods {
        if m.name == ZERO_SHOT || !names.contains(&m.name) {
            bail!(
                "the sweep grid names `{}`, which is not a trained row of {} ({})",
                m.name,
                config.display(),
                names.iter().filter(|n| *n != ZERO_SHOT).cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let points = grid.points();
    let mut scores = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let t = Instant::now();
        let mut sets = base.sets.clone();
        // Validation only: no test split is read; one seed.
        sets.retain(|s| !s.starts_with("lm.test_domains=") && !s.starts_with("out="));
        sets.push(format!("out={}", serde_json::to_string(&opts.quick.out.join(p.dir_name()).display().to_string())?));
        sets.push("lm.test_domains=[]".into());
        sets.push(format!("seeds=[{}]", grid.seed));
        sets.extend(p.sets());
        let sources = Sources { file: base.file.clone(), sets, env: base.env.clone() };
        let summary = tram_trainer::cli::run_sources(App::Lm, &sources, std::slice::from_ref(&p.method), false, control, registry)
            .with_context(|| format!("sweep point {} of `{}`", p.dir_name(), p.method))?;
        if summary.interrupted {
            bail!("interrupted: run the same command with --resume to continue");
        }
        let run = sources.resolve(std::slice::from_ref(&p.method), registry)?.remove(0);
        let r = crate::table::read_result(&run.dir(grid.seed))?;
        let valid = r.valid.as_ref().map(|v| v.perplexity).filter(|_| !r.is_diverged() && r.failed.is_none()).unwrap_or(f64::INFINITY);
        let check = r.optimizer.get("lr").and_then(|v| v.as_f64());
        if check.is_some_and(|lr| (lr - p.lr).abs() > 1e-12 * p.lr) {
            bail!("sweep point {}: the run used lr {check:?}, not {}", p.dir_name(), p.lr);
        }
        if opts.quick.progress {
            eprintln!(
                "[{}/{}] {} {}: validation perplexity {} ({:.1} s)",
                i + 1,
                points.len(),
                p.method,
                p.dir_name(),
                crate::table::fmt_perplexity(valid),
                t.elapsed().as_secs_f64()
            );
        }
        scores.push(Score { point: p.clone(), valid_perplexity: valid, selected_step: r.selected_step });
    }
    let chosen = choose(&scores);
    let mut files = Vec::new();
    if let Some(dir) = &opts.record {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let steps = base.resolve(std::slice::from_ref(&grid.methods[0].name), registry)?[0].config.train.steps.unwrap_or(0);
        for (name, text) in [("sweep.csv", csv(&scores, &chosen)), ("sweep.md", markdown(&grid, &scores, &chosen, steps, &grid_path))] {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            files.push(p);
        }
    }
    if opts.write_config {
        write_chosen(&config, &chosen)?;
        files.push(config);
    }
    Ok(SweepReport { grid, scores, chosen, files, seconds: started.elapsed().as_secs_f64() })
}

fn is_chosen(s: &Score, chosen: &[Score]) -> bool {
    chosen.iter().any(|c| c.point == s.point)
}

/// The scores as CSV: `method,lr,key,value,valid_perplexity,selected_step,chosen`.
pub fn csv(scores: &[Score], chosen: &[Score]) -> String {
    let mut out = "method,lr,key,value,valid_perplexity,selected_step,chosen\n".to_string();
    for s in scores {
        let p = &s.point;
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            p.method,
            p.lr,
            p.key.clone().unwrap_or_default(),
            p.value.map(|v| v.to_string()).unwrap_or_default(),
            if s.valid_perplexity.is_finite() { s.valid_perplexity.to_string() } else { "inf".into() },
            s.selected_step,
            is_chosen(s, chosen)
        ));
    }
    out
}

/// A chosen point as recorded: `(method, lr, key, value)`.
pub type Chosen = (String, f64, Option<String>, Option<f64>);

/// The chosen values read back from a `sweep.csv`: per method, `(method, lr, key, value)`.
pub fn read_chosen_csv(text: &str) -> Result<Vec<Chosen>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    if lines.next() != Some("method,lr,key,value,valid_perplexity,selected_step,chosen") {
        bail!("not a sweep.csv (unexpected header)");
    }
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() != 7 {
            bail!("sweep.csv: `{l}` has {} fields, expected 7", f.len());
        }
        if f[6] == "true" {
            let key = (!f[2].is_empty()).then(|| f[2].to_string());
            let value =
                if f[3].is_empty() { None } else { Some(f[3].parse::<f64>().with_context(|| format!("sweep.csv: value `{}`", f[3]))?) };
            out.push((f[0].to_string(), f[1].parse::<f64>().with_context(|| format!("sweep.csv: lr `{}`", f[1]))?, key, value));
        }
    }
    Ok(out)
}

fn markdown(grid: &Grid, scores: &[Score], chosen: &[Score], steps: u64, grid_path: &Path) -> String {
    let fmt = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "diverged".into() };
    let mut s = format!(
        "# The quickstart's hyperparameter sweep\n\n\
         Written by `tram quickstart sweep` (grid: `{}`). Each method was fine-tuned at every grid point for {steps} steps \
         with one seed ({}); the score is the perplexity on the training domain's **validation** split of the model selected on it \
         (no other domain and no test split is read, as in the paper). The lowest score is chosen (**bold**) and written into the \
         method's row of `configs/quickstart/finetune.toml`. One seed per point: differences smaller than the seed-to-seed spread \
         of the quickstart's table are not meaningful; the chosen value is then one of several equally good ones.\n\n",
        grid_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        grid.seed
    );
    for m in &grid.methods {
        let own: Vec<&Score> = scores.iter().filter(|x| x.point.method == m.name).collect();
        s.push_str(&format!("## {}\n\n", m.name));
        match &m.key {
            None => {
                s.push_str("| lr | validation perplexity |\n|---|---|\n");
                for x in own {
                    let v = fmt(x.valid_perplexity);
                    let v = if is_chosen(x, chosen) { format!("**{v}**") } else { v };
                    s.push_str(&format!("| {} | {v} |\n", x.point.lr));
                }
            }
            Some(k) => {
                s.push_str(&format!(
                    "| lr \\ `{k}` | {} |\n|---|{}\n",
                    m.values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" | "),
                    "---|".repeat(m.values.len())
                ));
                for &lr in &grid.lr {
                    let cells: Vec<String> = m
                        .values
                        .iter()
                        .map(|v| {
                            own.iter()
                                .find(|x| x.point.lr == lr && x.point.value == Some(*v))
                                .map(|x| {
                                    if is_chosen(x, chosen) {
                                        format!("**{}**", fmt(x.valid_perplexity))
                                    } else {
                                        fmt(x.valid_perplexity)
                                    }
                                })
                                .unwrap_or_else(|| "-".into())
                        })
                        .collect();
                    s.push_str(&format!("| {lr} | {} |\n", cells.join(" | ")));
                }
            }
        }
        s.push('\n');
    }
    s.push_str("## Chosen\n\n| method | lr | parameter | validation perplexity |\n|---|---|---|---|\n");
    for c in chosen {
        let p = &c.point;
        let param = match (&p.key, p.value) {
            (Some(k), Some(v)) => format!("`{k}` = {v}"),
            _ => "-".into(),
        };
        s.push_str(&format!("| {} | {} | {param} | {} |\n", p.method, p.lr, fmt(c.valid_perplexity)));
    }
    s
}

/// Write the chosen values into the rows of `config` (the `optimizer` table of each method's
/// `[[runs]]` entry: `lr` and the method's parameter), keeping everything else of the file
/// (comments, order, the other rows) as it is.
pub fn write_chosen(config: &Path, chosen: &[Score]) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", config.display()))?;
    let runs = doc
        .get_mut("runs")
        .and_then(|r| r.as_array_of_tables_mut())
        .with_context(|| format!("{} has no [[runs]] to write the chosen values into", config.display()))?;
    for c in chosen {
        let p = &c.point;
        let Some(row) = runs.iter_mut().find(|t| t.get("name").and_then(|n| n.as_str()) == Some(p.method.as_str())) else {
            bail!("{} has no [[runs]] entry named `{}`", config.display(), p.method);
        };
        let opt = row.entry("optimizer").or_insert_with(|| toml_edit::value(toml_edit::InlineTable::new()));
        let Some(opt) = opt.as_inline_table_mut() else {
            bail!("{}: the `optimizer` of row `{}` is not an inline table (`optimizer = {{ name = ... }}`)", config.display(), p.method);
        };
        opt.insert("lr", p.lr.into());
        if let (Some(k), Some(v)) = (&p.key, p.value) {
            let parts: Vec<&str> = k.split('.').collect();
            let mut node: &mut toml_edit::InlineTable = opt;
            for part in &parts[..parts.len() - 1] {
                let entry = node.entry(*part).or_insert(toml_edit::Value::InlineTable(toml_edit::InlineTable::new()));
                node = entry.as_inline_table_mut().with_context(|| {
                    format!("{}: row `{}`: `optimizer.{k}` crosses a value that is not a table", config.display(), p.method)
                })?;
            }
            node.insert(parts[parts.len() - 1], v.into());
        }
        opt.fmt();
    }
    std::fs::write(config, doc.to_string()).with_context(|| format!("writing {}", config.display()))
}
