//! Results: one `results.json` per run and seed, and the paper-shaped table aggregated from
//! every result under a directory (`results.json`, `results.csv`, `results.md`).

use crate::error::{Error, Result};
use crate::eval::EvalMetrics;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Serde for numbers that may be non-finite (a diverged run's loss, an overflowed
/// perplexity): finite values are JSON numbers, the others the strings `"inf"`, `"-inf"` and
/// `"nan"` (JSON has no such numbers, and serde_json would write `null` and then refuse to
/// read it back). Reading accepts numbers, those strings and `null` (what files written
/// before this change hold for a non-finite value), which reads as NaN.
pub mod float {
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    /// The JSON form of `x`.
    pub fn to_json(x: f64) -> serde_json::Value {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::Value::String(name(x).into())
        }
    }

    fn name(x: f64) -> &'static str {
        if x.is_nan() {
            "nan"
        } else if x > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
        Null(()),
    }

    fn from_repr<E: de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Num(x) => Ok(x),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "inf" | "+inf" | "infinity" | "+infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(E::custom(format!("expected a number, \"inf\", \"-inf\" or \"nan\", found \"{other}\""))),
            },
        }
    }

    /// Serialize an `f64`.
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(name(*x))
        }
    }

    /// Deserialize an `f64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_repr(Repr::deserialize(d)?)
    }

    /// The same for `Option<f64>` (`null` is `None`).
    pub mod option {
        use super::*;

        /// Serialize an `Option<f64>`.
        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(x) => super::serialize(x, s),
                None => s.serialize_none(),
            }
        }

        /// Deserialize an `Option<f64>`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Option::<Repr>::deserialize(d)? {
                None | Some(Repr::Null(())) => Ok(None),
                Some(r) => from_repr(r).map(Some),
            }
        }
    }

    /// The same for `Vec<f64>`.
    pub mod vec {
        use super::*;

        /// Serialize a `Vec<f64>`.
        pub fn serialize<S: Serializer>(xs: &[f64], s: S) -> Result<S::Ok, S::Error> {
            xs.iter().map(|x| super::to_json(*x)).collect::<Vec<_>>().serialize(s)
        }

        /// Deserialize a `Vec<f64>`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<Repr>::deserialize(d)?.into_iter().map(from_repr).collect()
        }
    }
}

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
    #[serde(with = "float::option", default)]
    pub best_valid_loss: Option<f64>,
    /// Validation metrics of the selected parameters.
    pub valid: Option<EvalMetrics>,
    /// Test metrics, in table order.
    pub columns: Vec<ColumnResult>,
    /// `Optimizer::describe()`: the composition and every resolved parameter.
    pub optimizer: Value,
    /// Steps skipped (non-finite loss or gradient): the parameters were left unchanged.
    pub skipped_steps: u64,
    /// Data rows left out, per split read.
    #[serde(default)]
    pub skipped_rows: crate::task::Skipped,
    /// Steps without ascent (zero / non-finite radius or norm): a plain descent step was taken.
    pub no_ascent_steps: u64,
    /// The final evaluation gave a non-finite metric (validation or a test set): the run
    /// diverged (or its perplexity overflowed). A result like any other, shown as `diverged` /
    /// `∞` in the tables and never ranked best.
    #[serde(default)]
    pub diverged: bool,
    /// Why the run failed although it finished (every step was skipped, so the parameters
    /// are the starting ones); `None` for a run that trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Wall-clock seconds of the final evaluation.
    pub eval_seconds: f64,
    /// Which settings of the run come from the paper and which are ours, with their values
    /// (`{paper, ours, changed}`, see [`crate::config::Provenance::record`]); `null` when the
    /// config marks none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub provenance: Value,
    /// The run's configuration.
    pub config: Value,
}

impl RunResult {
    /// Whether the run diverged: its `diverged` flag, or a non-finite final metric (what a
    /// `results.json` written before the flag existed shows, with `null` metrics).
    pub fn is_diverged(&self) -> bool {
        self.diverged || self.valid.as_ref().is_some_and(EvalMetrics::diverged) || self.columns.iter().any(|c| c.metrics.diverged())
    }
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
    #[serde(with = "float")]
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    #[serde(with = "float")]
    pub std: f64,
    /// Half-width of the 95% confidence interval of the mean (Student t; 0 for one seed).
    #[serde(with = "float")]
    pub ci95: f64,
    /// Seeds.
    pub n: usize,
    /// Seeds whose value is that of a diverged model (a non-finite loss or metric); the cell
    /// then shows `diverged` (or `∞` for an overflowed perplexity).
    #[serde(default)]
    pub diverged: usize,
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
        return Cell { mean: f64::NAN, std: f64::NAN, ci95: f64::NAN, n, diverged: 0 };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Cell { mean, std: 0.0, ci95: 0.0, n, diverged: usize::from(!mean.is_finite()) };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    let diverged = xs.iter().filter(|x| !x.is_finite()).count();
    Cell { mean, std, ci95: t975(n - 1) * std / (n as f64).sqrt(), n, diverged }
}

/// Every `results.json` under `dir` (recursively, a few levels deep; none when `dir` does not
/// exist). An unreadable directory or results file is an error.
pub fn collect(dir: &Path) -> Result<Vec<(PathBuf, RunResult)>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        // An unreadable directory would silently drop its results from the table.
        let io = |e| Error::io(format!("reading the directory {}", dir.display()), e);
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>().map_err(io)?;
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if p.is_dir() && depth > 0 && !matches!(name.as_str(), "checkpoints" | "model") && !name.starts_with('.') {
                walk(&p, depth - 1, out)?;
            } else if name == crate::trainer::RESULTS_FILE
                && p.parent().and_then(|d| d.file_name()).is_some_and(|d| d.to_string_lossy().starts_with("seed-"))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    if !dir.exists() {
        // Nothing has been written there yet.
        return Ok(Vec::new());
    }
    walk(dir, 5, &mut paths)?;
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
    /// Optimizer steps, summed over seeds.
    #[serde(default)]
    pub steps: u64,
    /// Skipped steps (non-finite loss or gradient), summed over seeds.
    #[serde(default)]
    pub skipped_steps: u64,
    /// Steps without ascent, summed over seeds.
    #[serde(default)]
    pub no_ascent_steps: u64,
    /// Seeds whose run diverged (a non-finite final metric).
    #[serde(default)]
    pub diverged: usize,
    /// Seeds whose run failed (every step skipped).
    #[serde(default)]
    pub failed: usize,
}

/// A row's markers, in table order: `†` diverged, `‡` skipped steps, `§` steps without ascent
/// (the trainer's and the quickstart's tables use the same ones).
pub fn markers(diverged: bool, skipped: bool, no_ascent: bool) -> String {
    [(diverged, '†'), (skipped, '‡'), (no_ascent, '§')].into_iter().filter(|&(on, _)| on).map(|(_, c)| c).collect()
}

/// A row's status for CSV: `diverged`, `failed`, `3/40 skipped`, `2/40 no ascent`, joined by
/// `; ` (empty for a clean row; the trainer's and the quickstart's tables use the same one).
pub fn status(diverged: bool, failed: bool, skipped: u64, no_ascent: u64, steps: u64) -> String {
    let mut s = Vec::new();
    if diverged {
        s.push("diverged".to_string());
    }
    if failed {
        s.push("failed".to_string());
    }
    if skipped > 0 {
        s.push(format!("{skipped}/{steps} skipped"));
    }
    if no_ascent > 0 {
        s.push(format!("{no_ascent}/{steps} no ascent"));
    }
    s.join("; ")
}

/// `label` followed by its `markers`, if any (`SAM ‡`).
pub fn marked_label(label: &str, markers: &str) -> String {
    if markers.is_empty() {
        label.to_string()
    } else {
        format!("{label} {markers}")
    }
}

impl Row {
    /// The row's markers, in table order: `†` diverged, `‡` skipped steps (every step of a
    /// seed skipped: the run failed), `§` steps without ascent; empty for a clean row.
    pub fn markers(&self) -> String {
        markers(self.diverged > 0, self.skipped_steps > 0, self.no_ascent_steps > 0)
    }

    /// The label with its markers (`SAM ‡`).
    pub fn marked_label(&self) -> String {
        marked_label(&self.label, &self.markers())
    }

    /// The footnotes of the row's markers, one per marker (`‡ SAM: 3 of 3 steps skipped …`).
    pub fn notes(&self) -> Vec<String> {
        let seeds = |n: usize| if self.seeds.len() > 1 { format!(" ({n} of {} seeds)", self.seeds.len()) } else { String::new() };
        let mut out = Vec::new();
        if self.diverged > 0 {
            out.push(format!(
                "† {}: diverged{}: a non-finite loss or metric in the final evaluation (shown as `diverged`, an overflowed perplexity as `∞`)",
                self.label,
                seeds(self.diverged)
            ));
        }
        if self.skipped_steps > 0 {
            let failed = if self.failed > 0 {
                format!("; every step was skipped{}, so the run FAILED and its numbers are those of the starting model", seeds(self.failed))
            } else {
                String::new()
            };
            out.push(format!(
                "‡ {}: {} of {} steps skipped (non-finite loss or gradient: parameters left unchanged){failed}",
                self.label, self.skipped_steps, self.steps
            ));
        }
        if self.no_ascent_steps > 0 {
            out.push(format!(
                "§ {}: {} of {} steps without ascent (zero or non-finite radius or gradient norm: a plain descent step)",
                self.label, self.no_ascent_steps, self.steps
            ));
        }
        out
    }

    /// The notes of the row for CSV: `diverged`, `failed`, `3/6 skipped`, `2/6 no ascent`, joined by `; `.
    pub fn status(&self) -> String {
        status(self.diverged > 0, self.failed > 0, self.skipped_steps, self.no_ascent_steps, self.steps)
    }
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
                let found: Vec<&ColumnResult> = rs.iter().filter_map(|r| r.columns.iter().find(|c| &c.label == col)).collect();
                let xs: Vec<f64> = found.iter().map(|c| spec.metric.of(&c.metrics)).collect();
                if !xs.is_empty() {
                    let mut c = cell(&xs);
                    c.diverged = found.iter().filter(|c| c.metrics.diverged()).count();
                    cells.insert(col.clone(), c);
                }
            }
            // Per seed: (mean over the unseen columns, whether one of them diverged).
            let zs: Vec<(f64, bool)> = rs
                .iter()
                .filter_map(|r| {
                    let ood: Vec<&ColumnResult> = r.columns.iter().filter(|c| !c.in_domain).collect();
                    let v: Vec<f64> = ood.iter().map(|c| spec.metric.of(&c.metrics)).collect();
                    (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, ood.iter().any(|c| c.metrics.diverged())))
                })
                .collect();
            let zero_shot = (spec.zero_shot_average && !zs.is_empty()).then(|| {
                let mut c = cell(&zs.iter().map(|z| z.0).collect::<Vec<_>>());
                c.diverged = zs.iter().filter(|z| z.1).count();
                c
            });
            let mut runs: Vec<String> = rs.iter().map(|r| r.run.clone()).collect();
            runs.dedup();
            let mut seeds: Vec<u64> = rs.iter().map(|r| r.seed).collect();
            seeds.sort();
            Row {
                label,
                runs,
                seeds,
                cells,
                zero_shot,
                optimizer: rs.first().map(|r| r.optimizer.clone()).unwrap_or(Value::Null),
                steps: rs.iter().map(|r| r.steps).sum(),
                skipped_steps: rs.iter().map(|r| r.skipped_steps).sum(),
                no_ascent_steps: rs.iter().map(|r| r.no_ascent_steps).sum(),
                diverged: rs.iter().filter(|r| r.is_diverged()).count(),
                failed: rs.iter().filter(|r| r.failed.is_some()).count(),
            }
        })
        .collect();
    Table { title: spec.title.clone(), metric: spec.metric, columns, in_domain, rows }
}

/// A non-finite value for a table: `∞` for an overflowed value, `diverged` otherwise.
pub fn non_finite(x: f64) -> &'static str {
    if x == f64::INFINITY {
        "∞"
    } else if x == f64::NEG_INFINITY {
        "-∞"
    } else {
        "diverged"
    }
}

fn fmt_cell(c: Option<&Cell>, confidence: bool, metric: Metric) -> String {
    match c {
        None => "—".into(),
        Some(c) if !c.mean.is_finite() => non_finite(c.mean).into(),
        Some(c) if c.diverged > 0 => "diverged".into(),
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
        let mut cells = vec![r.marked_label()];
        for c in &t.columns {
            cells.push(fmt_cell(r.cells.get(c), spec.confidence, t.metric));
        }
        if spec.zero_shot_average {
            cells.push(fmt_cell(r.zero_shot.as_ref(), spec.confidence, t.metric));
        }
        cells.push(r.seeds.len().to_string());
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let notes: Vec<String> = t.rows.iter().flat_map(Row::notes).collect();
    if !notes.is_empty() {
        s.push_str("\nNotes:\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s.push_str("\nOptimizers (resolved):\n\n");
    for r in &t.rows {
        let comp = r.optimizer.get("composition").and_then(Value::as_str).unwrap_or("?");
        let lr = r.optimizer.get("lr").map(|v| v.to_string()).unwrap_or_else(|| "?".into());
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

/// A number for CSV: non-finite values as `inf`, `-inf` and `nan` (what most CSV readers parse).
fn csv_num(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        (if x > 0.0 { "inf" } else { "-inf" }).into()
    } else {
        format!("{x}")
    }
}

/// The table as CSV: one row per table row; per column the mean and the CI half-width (`inf`
/// / `nan` for a diverged cell); then the composition, the steps, skipped steps and steps
/// without ascent summed over seeds, and `status` (`diverged`, `failed`, `3/6 skipped`, …).
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
    header.extend(["composition".into(), "steps".into(), "skipped_steps".into(), "no_ascent_steps".into(), "status".into()]);
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    for r in &t.rows {
        let mut f = vec![r.label.clone(), r.runs.join(" "), r.seeds.len().to_string()];
        let mut push = |c: Option<&Cell>| match c {
            Some(c) => {
                f.push(csv_num(c.mean));
                f.push(csv_num(c.ci95));
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
        f.extend([r.steps.to_string(), r.skipped_steps.to_string(), r.no_ascent_steps.to_string(), r.status()]);
        out.push_str(&(f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}

/// Aggregate every result under `dir` and write `results.json`, `results.csv` and
/// `results.md` there; returns the Markdown.
/// `dir` must exist and hold at least one result: an empty table is an error, not a file.
pub fn write_table(spec: &TableSpec, dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a directory: give the `out` directory of finished runs (it holds <run>/seed-<s>/results.json)",
            dir.display()
        )));
    }
    let found = collect(dir)?;
    if found.is_empty() {
        return Err(Error::Config(format!(
            "no results under {}: no <run>/seed-<s>/results.json there (give the `out` directory of finished runs)",
            dir.display()
        )));
    }
    let results: Vec<RunResult> = found.into_iter().map(|(_, r)| r).collect();
    let t = table(spec, &results);
    let md = markdown(spec, &t);
    #[derive(Serialize)]
    struct File<'a> {
        table: &'a Table,
        runs: &'a [RunResult],
    }
    let json = serde_json::to_vec_pretty(&File { table: &t, runs: &results })
        .map_err(|e| Error::Data(format!("serialising the results table of {}: {e}", dir.display())))?;
    tram::state::write_atomic(&dir.join("results.json"), &json)?;
    tram::state::write_atomic(&dir.join("results.csv"), csv(spec, &t).as_bytes())?;
    tram::state::write_atomic(&dir.join("results.md"), md.as_bytes())?;
    Ok(md)
}
