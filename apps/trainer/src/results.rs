//! Results: one `results.json` per run and seed, and the paper-shaped table aggregated from
//! every result under a directory (`results.json`, `results.csv`, `results.md`).

use crate::error::{Error, Result};
use crate::eval::EvalMetrics;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One column of a run's final evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ColumnResult {
    /// Domain / language / dataset key.
    pub name: String,
    /// Column header.
    pub label: String,
    /// The training domain / language (not part of the zero-shot average).
    pub in_domain: bool,
    /// Its metrics.
    pub metrics: EvalMetrics,
}

/// The final results of one run and seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// `lm`, `xnli` or `vision`.
    pub app: String,
    /// Run name.
    pub run: String,
    /// Row label.
    pub label: String,
    /// Row order (position in `[[runs]]`).
    pub row: usize,
    /// Seed.
    pub seed: u64,
    /// Optimizer steps trained.
    pub steps: u64,
    /// Step of the evaluated parameters.
    pub selected_step: u64,
    /// `best-validation-loss` or `last`.
    pub selection: String,
    /// Best validation loss seen.
    pub best_valid_loss: Option<f64>,
    /// Validation metrics of the selected parameters.
    pub valid: Option<EvalMetrics>,
    /// Test metrics, in table order.
    pub columns: Vec<ColumnResult>,
    /// `Optimizer::describe()`: the composition and every resolved parameter.
    pub optimizer: Value,
    /// Steps skipped (non-finite loss or gradient).
    pub skipped_steps: u64,
    /// Data rows left out, per split read.
    #[serde(default)]
    pub skipped_rows: crate::task::Skipped,
    /// Steps without ascent (zero / non-finite radius or norm).
    pub no_ascent_steps: u64,
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Wall-clock seconds of the final evaluation.
    pub eval_seconds: f64,
    /// The run's configuration.
    pub config: Value,
}

/// The metric a table reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Perplexity (lower is better).
    Perplexity,
    /// Top-1 accuracy in percent.
    Accuracy,
}

impl Metric {
    fn of(self, m: &EvalMetrics) -> f64 {
        match self {
            Metric::Perplexity => m.perplexity,
            Metric::Accuracy => m.accuracy,
        }
    }
}

/// How an app's table is shaped.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Title above the table.
    pub title: String,
    /// Reported metric.
    pub metric: Metric,
    /// Add a zero-shot average column (mean over the out-of-domain columns).
    pub zero_shot_average: bool,
    /// Show `mean ± 95% CI` over seeds instead of the mean.
    pub confidence: bool,
    /// Header of the row-label column.
    pub corner: String,
}

/// An aggregated cell.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub std: f64,
    /// Half-width of the 95% confidence interval of the mean (Student t; 0 for one seed).
    pub ci95: f64,
    /// Seeds.
    pub n: usize,
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
        2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// Mean, standard deviation and 95% CI half-width of `xs`.
pub fn cell(xs: &[f64]) -> Cell {
    let n = xs.len();
    if n == 0 {
        return Cell { mean: f64::NAN, std: f64::NAN, ci95: f64::NAN, n };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Cell { mean, std: 0.0, ci95: 0.0, n };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    Cell { mean, std, ci95: t975(n - 1) * std / (n as f64).sqrt(), n }
}

/// Every `results.json` under `dir` (recursively, a few levels deep).
pub fn collect(dir: &Path) -> Result<Vec<(PathBuf, RunResult)>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if p.is_dir() && depth > 0 && !matches!(name.as_str(), "checkpoints" | "model") && !name.starts_with('.') {
                walk(&p, depth - 1, out);
            } else if name == crate::trainer::RESULTS_FILE
                && p.parent().and_then(|d| d.file_name()).is_some_and(|d| d.to_string_lossy().starts_with("seed-"))
            {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(dir, 5, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            let r: RunResult =
                serde_json::from_slice(&text).map_err(|e| Error::Data(format!("{}: not a results file ({e})", p.display())))?;
            Ok((p, r))
        })
        .collect()
}

/// One row of the aggregated table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Row label.
    pub label: String,
    /// Run names behind it.
    pub runs: Vec<String>,
    /// Seeds behind it.
    pub seeds: Vec<u64>,
    /// Column label → cell.
    pub cells: BTreeMap<String, Cell>,
    /// Zero-shot average.
    pub zero_shot: Option<Cell>,
    /// The optimizer of the row (its first run).
    pub optimizer: Value,
}

/// The aggregated table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Table {
    /// Title.
    pub title: String,
    /// Metric.
    pub metric: Metric,
    /// Column labels, in order.
    pub columns: Vec<String>,
    /// Which columns are in-domain.
    pub in_domain: Vec<bool>,
    /// Rows, in order.
    pub rows: Vec<Row>,
}

/// Aggregate results into a table: rows by label (in `[[runs]]` order), cells averaged over
/// seeds; the zero-shot average is computed per seed, then aggregated.
pub fn table(spec: &TableSpec, results: &[RunResult]) -> Table {
    let mut columns: Vec<String> = Vec::new();
    let mut in_domain: Vec<bool> = Vec::new();
    for r in results {
        for c in &r.columns {
            if !columns.contains(&c.label) {
                columns.push(c.label.clone());
                in_domain.push(c.in_domain);
            }
        }
    }
    let mut order: Vec<(usize, String)> = Vec::new();
    for r in results {
        if !order.iter().any(|(_, l)| l == &r.label) {
            order.push((r.row, r.label.clone()));
        }
    }
    order.sort_by_key(|(row, _)| *row);
    let rows = order
        .into_iter()
        .map(|(_, label)| {
            let rs: Vec<&RunResult> = results.iter().filter(|r| r.label == label).collect();
            let mut cells = BTreeMap::new();
            for col in &columns {
                let xs: Vec<f64> =
                    rs.iter().filter_map(|r| r.columns.iter().find(|c| &c.label == col)).map(|c| spec.metric.of(&c.metrics)).collect();
                if !xs.is_empty() {
                    cells.insert(col.clone(), cell(&xs));
                }
            }
            let zs: Vec<f64> = rs
                .iter()
                .filter_map(|r| {
                    let v: Vec<f64> = r.columns.iter().filter(|c| !c.in_domain).map(|c| spec.metric.of(&c.metrics)).collect();
                    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect();
            let mut runs: Vec<String> = rs.iter().map(|r| r.run.clone()).collect();
            runs.dedup();
            let mut seeds: Vec<u64> = rs.iter().map(|r| r.seed).collect();
            seeds.sort();
            Row {
                label,
                runs,
                seeds,
                cells,
                zero_shot: (spec.zero_shot_average && !zs.is_empty()).then(|| cell(&zs)),
                optimizer: rs.first().map(|r| r.optimizer.clone()).unwrap_or(Value::Null),
            }
        })
        .collect();
    Table { title: spec.title.clone(), metric: spec.metric, columns, in_domain, rows }
}

fn fmt_cell(c: Option<&Cell>, confidence: bool, metric: Metric) -> String {
    match c {
        None => "—".into(),
        Some(c) if !c.mean.is_finite() => "nan".into(),
        Some(c) => {
            let d = if metric == Metric::Perplexity { 1 } else { 2 };
            if confidence && c.n > 1 {
                format!("{:.d$} ± {:.d$}", c.mean, c.ci95)
            } else {
                format!("{:.d$}", c.mean)
            }
        }
    }
}

/// The table in Markdown, shaped like the paper's.
pub fn markdown(spec: &TableSpec, t: &Table) -> String {
    let mut s = format!("## {}\n\n", t.title);
    let metric = match t.metric {
        Metric::Perplexity => "perplexity (lower is better)",
        Metric::Accuracy => "top-1 accuracy, % (higher is better)",
    };
    let agg = if spec.confidence { "mean ± 95% CI over seeds" } else { "mean over seeds" };
    s.push_str(&format!("Metric: {metric}; {agg}.\n\n"));
    let mut header = vec![spec.corner.clone()];
    header.extend(t.columns.iter().cloned());
    if spec.zero_shot_average {
        header.push("ZS Avg.".into());
    }
    header.push("seeds".into());
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in &t.rows {
        let mut cells = vec![r.label.clone()];
        for c in &t.columns {
            cells.push(fmt_cell(r.cells.get(c), spec.confidence, t.metric));
        }
        if spec.zero_shot_average {
            cells.push(fmt_cell(r.zero_shot.as_ref(), spec.confidence, t.metric));
        }
        cells.push(r.seeds.len().to_string());
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s.push_str("\nOptimizers (resolved):\n\n");
    for r in &t.rows {
        let comp = r.optimizer.get("composition").and_then(Value::as_str).unwrap_or("?");
        let lr = r.optimizer.get("lr").map(|v| v.to_string()).unwrap_or_default();
        s.push_str(&format!("- {}: `{comp}`, lr {lr}\n", r.label));
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The table as CSV: one row per table row; per column the mean and the CI half-width.
pub fn csv(spec: &TableSpec, t: &Table) -> String {
    let mut header = vec!["row".to_string(), "runs".into(), "seeds".into()];
    for c in &t.columns {
        header.push(c.clone());
        header.push(format!("{c} ci95"));
    }
    if spec.zero_shot_average {
        header.push("ZS Avg.".into());
        header.push("ZS Avg. ci95".into());
    }
    header.push("composition".into());
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    for r in &t.rows {
        let mut f = vec![r.label.clone(), r.runs.join(" "), r.seeds.len().to_string()];
        let mut push = |c: Option<&Cell>| match c {
            Some(c) => {
                f.push(format!("{}", c.mean));
                f.push(format!("{}", c.ci95));
            }
            None => {
                f.push(String::new());
                f.push(String::new());
            }
        };
        for c in &t.columns {
            push(r.cells.get(c));
        }
        if spec.zero_shot_average {
            push(r.zero_shot.as_ref());
        }
        f.push(r.optimizer.get("composition").and_then(Value::as_str).unwrap_or("").to_string());
        out.push_str(&(f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}

/// Aggregate every result under `dir` and write `results.json`, `results.csv` and
/// `results.md` there; returns the Markdown.
pub fn write_table(spec: &TableSpec, dir: &Path) -> Result<String> {
    let found = collect(dir)?;
    let results: Vec<RunResult> = found.into_iter().map(|(_, r)| r).collect();
    let t = table(spec, &results);
    let md = markdown(spec, &t);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let json = json!({"table": t, "runs": results});
    tram::state::write_atomic(&dir.join("results.json"), &serde_json::to_vec_pretty(&json).expect("serialises"))?;
    tram::state::write_atomic(&dir.join("results.csv"), csv(spec, &t).as_bytes())?;
    tram::state::write_atomic(&dir.join("results.md"), md.as_bytes())?;
    Ok(md)
}
