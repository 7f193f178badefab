//! The two tables of the paper's Table 6 from per-run measurements:
//!
//! (a) ε-sharpness per method: in-domain, zero-shot average and the Pearson correlation
//!     between in-domain and out-of-domain sharpness across the method's runs;
//! (b) CKA per method and domain / language, with the zero-shot average.
//!
//! Aggregation (a method is a row label; its runs are its seeds):
//!
//! - in-domain: per run the mean over in-domain sets, then mean ± sample std over runs;
//! - per domain: mean over runs;
//! - ZS Avg.: the mean of the out-of-domain per-domain means, ± their std across domains;
//! - Pearson: per out-of-domain set ℓ, the correlation over runs of (in-domain φ, φ_ℓ); mean ±
//!   std over ℓ (needs at least two runs of the method). The report also gives one pooled
//!   correlation over every run of every method (in-domain φ vs the run's ZS-average φ).

use crate::error::{Error, Result};
use crate::runs::{AnalyzeOptions, RunAnalysis};
use crate::stats::{mean, pearson, std};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A value aggregated over runs or domains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// How many values.
    pub n: usize,
}

impl Stat {
    /// Of some values; `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Stat> {
        let xs: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        (!xs.is_empty()).then(|| Stat { mean: mean(&xs), std: std(&xs), n: xs.len() })
    }
}

/// One method's row of table (a).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharpnessRow {
    /// Method (row label).
    pub label: String,
    /// Runs (seeds) behind the row.
    pub runs: usize,
    /// In-domain φ over runs.
    pub in_domain: Option<Stat>,
    /// Zero-shot average φ (± std across out-of-domain sets).
    pub zero_shot: Option<Stat>,
    /// Pearson correlation (mean ± std across out-of-domain sets).
    pub pearson: Option<Stat>,
    /// φ per domain label, over runs.
    pub domains: BTreeMap<String, Stat>,
    /// Runs of the row that diverged (not measured).
    #[serde(default)]
    pub diverged: usize,
}

/// One method's row of table (b).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CkaRow {
    /// Method (row label).
    pub label: String,
    /// Runs (seeds) behind the row.
    pub runs: usize,
    /// CKA per domain label, over runs.
    pub domains: BTreeMap<String, Stat>,
    /// Zero-shot average (± std across out-of-domain sets).
    pub zero_shot: Option<Stat>,
    /// Runs of the row that diverged (not measured).
    #[serde(default)]
    pub diverged: usize,
}

/// Everything an analysis produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The options used.
    pub options: AnalyzeOptions,
    /// Domain labels in column order, and whether each is in-domain.
    pub columns: Vec<(String, bool)>,
    /// Table (a).
    pub sharpness: Vec<SharpnessRow>,
    /// Correlation over every run of every method: in-domain φ vs the run's ZS-average φ.
    pub pooled_pearson: Option<f64>,
    /// Table (b).
    pub cka: Vec<CkaRow>,
    /// Per-run measurements.
    pub runs: Vec<RunAnalysis>,
    /// Both tables in Markdown.
    pub markdown: String,
}

fn run_mean(r: &RunAnalysis, in_domain: bool, f: fn(&crate::runs::DomainResult) -> f64) -> Option<f64> {
    let xs: Vec<f64> = r.domains.iter().filter(|d| d.in_domain == in_domain).map(f).collect();
    (!xs.is_empty()).then(|| mean(&xs))
}

/// Aggregate per-run measurements into the two tables.
pub fn report(options: &AnalyzeOptions, runs: Vec<RunAnalysis>) -> Report {
    let mut columns: Vec<(String, bool)> = Vec::new();
    for r in &runs {
        for d in &r.domains {
            if !columns.iter().any(|(l, _)| l == &d.label) {
                columns.push((d.label.clone(), d.in_domain));
            }
        }
    }
    let mut order: Vec<(usize, String)> = Vec::new();
    for r in &runs {
        if !order.iter().any(|(_, l)| l == &r.label) {
            order.push((r.row, r.label.clone()));
        }
    }
    order.sort_by_key(|(row, _)| *row);
    let ood: Vec<&String> = columns.iter().filter(|(_, i)| !i).map(|(l, _)| l).collect();
    let value = |r: &RunAnalysis, label: &str, f: fn(&crate::runs::DomainResult) -> f64| -> Option<f64> {
        r.domains.iter().find(|d| d.label == label).map(f)
    };
    let phi = |d: &crate::runs::DomainResult| d.sharpness;
    let cka = |d: &crate::runs::DomainResult| d.cka;
    let per_domain = |rs: &[&RunAnalysis], f: fn(&crate::runs::DomainResult) -> f64| -> BTreeMap<String, Stat> {
        columns
            .iter()
            .filter_map(|(l, _)| {
                let xs: Vec<f64> = rs.iter().filter_map(|r| value(r, l, f)).collect();
                Stat::of(&xs).map(|s| (l.clone(), s))
            })
            .collect()
    };
    let zero_shot = |domains: &BTreeMap<String, Stat>| -> Option<Stat> {
        let ms: Vec<f64> = ood.iter().filter_map(|l| domains.get(*l)).map(|s| s.mean).collect();
        Stat::of(&ms)
    };
    let mut sharp_rows = Vec::new();
    let mut cka_rows = Vec::new();
    for (_, label) in &order {
        let rs: Vec<&RunAnalysis> = runs.iter().filter(|r| &r.label == label).collect();
        let diverged = rs.iter().filter(|r| r.diverged).count();
        let in_dom: Vec<f64> = rs.iter().filter_map(|r| run_mean(r, true, phi)).collect();
        let domains = per_domain(&rs, phi);
        let correlations: Vec<f64> = ood
            .iter()
            .filter_map(|l| {
                let pairs: Vec<(f64, f64)> = rs
                    .iter()
                    .filter_map(|r| Some((run_mean(r, true, phi)?, value(r, l, phi)?)))
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .collect();
                let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
                pearson(&a, &b)
            })
            .collect();
        sharp_rows.push(SharpnessRow {
            label: label.clone(),
            runs: rs.len(),
            in_domain: Stat::of(&in_dom),
            zero_shot: zero_shot(&domains),
            pearson: Stat::of(&correlations),
            domains,
            diverged,
        });
        let domains = per_domain(&rs, cka);
        cka_rows.push(CkaRow { label: label.clone(), runs: rs.len(), zero_shot: zero_shot(&domains), domains, diverged });
    }
    let pooled: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| Some((run_mean(r, true, phi)?, run_mean(r, false, phi)?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    let (a, b): (Vec<f64>, Vec<f64>) = pooled.into_iter().unzip();
    let mut rep = Report {
        options: options.clone(),
        columns,
        sharpness: sharp_rows,
        pooled_pearson: pearson(&a, &b),
        cka: cka_rows,
        runs,
        markdown: String::new(),
    };
    rep.markdown = markdown(&rep);
    rep
}

/// A number for a table: 2 decimals, or 3 significant digits when small.
pub fn num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x != 0.0 && x.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        format!("{x:.2e}")
    } else {
        format!("{x:.decimals$}")
    }
}

/// A row label with its markers: `†` some run diverged, `‡` skipped steps, `§` steps without
/// ascent (footnotes from [`notes`]).
fn marked(r: &Report, label: &str) -> String {
    let runs: Vec<&RunAnalysis> = r.runs.iter().filter(|x| x.label == label).collect();
    let mut m = String::new();
    if runs.iter().any(|x| x.diverged) {
        m.push('†');
    }
    if runs.iter().any(|x| x.skipped_steps > 0) {
        m.push('‡');
    }
    if runs.iter().any(|x| x.no_ascent_steps > 0) {
        m.push('§');
    }
    if m.is_empty() {
        label.to_string()
    } else {
        format!("{label} {m}")
    }
}

/// A cell of a row: its statistic, or `diverged` when every run of the row diverged (there
/// is nothing measured), `—` when nothing was measured for another reason.
fn cell(s: Option<&Stat>, pm: bool, decimals: usize, diverged: bool) -> String {
    match s {
        None if diverged => "diverged".into(),
        s => stat(s, pm, decimals),
    }
}

/// The footnotes of the markers of every row.
fn notes(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for row in &r.sharpness {
        let runs: Vec<&RunAnalysis> = r.runs.iter().filter(|x| x.label == row.label).collect();
        let (steps, skipped, no_ascent) =
            runs.iter().fold((0, 0, 0), |a, x| (a.0 + x.steps, a.1 + x.skipped_steps, a.2 + x.no_ascent_steps));
        if row.diverged > 0 {
            out.push(format!(
                "† {}: {} of {} runs diverged (a non-finite metric in the final evaluation): not measured, left out of the statistics",
                row.label, row.diverged, row.runs
            ));
        }
        if skipped > 0 {
            out.push(format!("‡ {}: {skipped} of {steps} training steps skipped (non-finite loss or gradient)", row.label));
        }
        if no_ascent > 0 {
            out.push(format!("§ {}: {no_ascent} of {steps} training steps without ascent", row.label));
        }
    }
    out
}

fn stat(s: Option<&Stat>, pm: bool, decimals: usize) -> String {
    match s {
        None => "—".into(),
        Some(s) if pm && s.n > 1 => format!("{} ± {}", num(s.mean, decimals), num(s.std, decimals)),
        Some(s) => num(s.mean, decimals),
    }
}

/// Both tables in Markdown, shaped like the paper's Table 6.
pub fn markdown(r: &Report) -> String {
    let o = &r.options;
    let sc = &o.sharpness;
    let in_labels: Vec<&str> = r.columns.iter().filter(|(_, i)| *i).map(|(l, _)| l.as_str()).collect();
    let in_header = match in_labels.as_slice() {
        [one] => one.to_string(),
        _ => "In-domain".to_string(),
    };
    let has_ood = r.columns.iter().any(|(_, i)| !i);
    let split = o.split.clone().unwrap_or_else(|| "each run's test split".into());
    let examples = o.max_examples.map(|n| format!(", at most {n} examples per set")).unwrap_or_default();
    let mut s = String::new();
    if o.measure_sharpness {
        s.push_str("## (a) ε-sharpness (paper Table 6a)\n\n");
        s.push_str(&format!(
            "φ = 100·(max L(θ+y) − L(θ))/(1 + L(θ)) over |y_i| ≤ ε(|θ_i|+1); ε = {}, {} SGD ascent steps, lr {}, batch {} × {} accumulated; {split}{examples}. \
             Lower is flatter. In-domain: mean ± std over runs; ZS Avg.: mean ± std across unseen domains; Pearson: in-domain vs each unseen domain across runs, mean ± std across domains.\n\n",
            sc.epsilon, sc.steps, sc.lr, sc.batch_size, sc.accumulation
        ));
        let mut header = vec!["method".to_string(), in_header.clone()];
        if has_ood {
            header.push("ZS Avg.".into());
            header.push("Pearson".into());
        }
        header.push("runs".into());
        s.push_str(&format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len())));
        for row in &r.sharpness {
            let all = row.diverged == row.runs;
            let mut cells = vec![marked(r, &row.label), cell(row.in_domain.as_ref(), true, 2, all)];
            if has_ood {
                cells.push(cell(row.zero_shot.as_ref(), true, 2, all));
                cells.push(cell(row.pearson.as_ref(), true, 2, all));
            }
            cells.push(row.runs.to_string());
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        if has_ood {
            let n = r.runs.iter().filter(|x| x.domains.iter().any(|d| d.in_domain) && x.domains.iter().any(|d| !d.in_domain)).count();
            match r.pooled_pearson {
                Some(p) => s.push_str(&format!("\nPearson over all {n} runs (in-domain φ vs ZS-average φ): {p:.2}\n")),
                None => s.push_str(&format!(
                    "\nPearson over all {n} runs (in-domain φ vs ZS-average φ): — (needs two runs with different values)\n"
                )),
            }
        }
        s.push('\n');
    }
    if o.measure_cka {
        s.push_str("## (b) CKA, pretrained vs fine-tuned representations (paper Table 6b)\n\n");
        s.push_str(&format!(
            "Linear CKA of the base model's output before the task head, per domain / language; {split}{examples}. Higher is closer to the pretrained model. \
             Cells: mean over runs; ZS Avg.: mean ± std across unseen domains.\n\n"
        ));
        let mut header = vec!["method".to_string()];
        header.extend(r.columns.iter().map(|(l, _)| l.clone()));
        if has_ood {
            header.push("ZS Avg.".into());
        }
        header.push("runs".into());
        s.push_str(&format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len())));
        for row in &r.cka {
            let all = row.diverged == row.runs;
            let mut cells = vec![marked(r, &row.label)];
            for (l, _) in &r.columns {
                cells.push(cell(row.domains.get(l), false, 3, all));
            }
            if has_ood {
                cells.push(cell(row.zero_shot.as_ref(), true, 3, all));
            }
            cells.push(row.runs.to_string());
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    let notes = notes(r);
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

/// A compact plain-text table for a terminal: per method the in-domain and zero-shot-average
/// ε-sharpness and CKA, then the pooled correlation.
pub fn summary(r: &Report) -> String {
    let o = &r.options;
    let in_labels: Vec<&str> = r.columns.iter().filter(|(_, i)| *i).map(|(l, _)| l.as_str()).collect();
    let in_name = match in_labels.as_slice() {
        [one] => one.to_string(),
        _ => "in-domain".to_string(),
    };
    let has_ood = r.columns.iter().any(|(_, i)| !i);
    let mut header = vec!["method".to_string()];
    if o.measure_sharpness {
        header.push(format!("φ {in_name}"));
        if has_ood {
            header.push("φ ZS Avg.".into());
        }
    }
    if o.measure_cka {
        header.push(format!("CKA {in_name}"));
        if has_ood {
            header.push("CKA ZS Avg.".into());
        }
    }
    let mut rows = vec![header];
    for (s, c) in r.sharpness.iter().zip(&r.cka) {
        let all = s.diverged == s.runs;
        let mut row = vec![marked(r, &s.label)];
        if o.measure_sharpness {
            row.push(cell(s.in_domain.as_ref(), false, 2, all));
            if has_ood {
                row.push(cell(s.zero_shot.as_ref(), false, 2, all));
            }
        }
        if o.measure_cka {
            let ins: Vec<f64> = in_labels.iter().filter_map(|l| c.domains.get(*l)).map(|s| s.mean).collect();
            row.push(cell(Stat::of(&ins).as_ref(), false, 3, all));
            if has_ood {
                row.push(cell(c.zero_shot.as_ref(), false, 3, all));
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let sc = &o.sharpness;
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let per_set =
        |batches: Option<usize>| batches.map(|b| format!(" on {} per domain", plural(b * sc.batch_size, "example"))).unwrap_or_default();
    let sharp_batches = match (o.sharpness_batches, o.max_batches) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut out = format!(
        "ε-sharpness φ (lower = flatter; ε = {}, {} of {} each{}) and CKA to the pretrained model (higher = closer{}):\n",
        sc.epsilon,
        plural(sc.steps, "SGD ascent step"),
        plural(sc.accumulation * sc.batch_size, "example"),
        per_set(sharp_batches),
        per_set(o.max_batches)
    );
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).enumerate().map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") }).collect();
        out.push_str(&format!("  {}\n", cells.join("  ")));
    }
    if o.measure_sharpness && has_ood {
        match r.pooled_pearson {
            Some(p) => out.push_str(&format!("  Pearson r (in-domain vs ZS-average φ, all runs): {p:.2}\n")),
            None => out.push_str("  Pearson r (in-domain vs ZS-average φ, all runs): —\n"),
        }
    }
    for n in notes(r) {
        out.push_str(&format!("  {n}\n"));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(fields: &[String]) -> String {
    fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",") + "\n"
}

fn opt_num(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// Table (a) as CSV: per method the in-domain, ZS-average and Pearson mean and std, then φ
/// per domain.
pub fn sharpness_csv(r: &Report) -> String {
    let mut h: Vec<String> = ["method", "runs", "in_domain", "in_domain_std", "zs_avg", "zs_avg_std", "pearson", "pearson_std"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.extend(r.columns.iter().map(|(l, _)| l.clone()));
    h.push("diverged".into());
    let mut out = csv_line(&h);
    for row in &r.sharpness {
        let mut f = vec![row.label.clone(), row.runs.to_string()];
        for s in [&row.in_domain, &row.zero_shot, &row.pearson] {
            f.push(opt_num(s.as_ref().map(|s| s.mean)));
            f.push(opt_num(s.as_ref().map(|s| s.std)));
        }
        f.extend(r.columns.iter().map(|(l, _)| opt_num(row.domains.get(l).map(|s| s.mean))));
        f.push(row.diverged.to_string());
        out.push_str(&csv_line(&f));
    }
    out
}

/// Table (b) as CSV: per method the CKA per domain, then the ZS average and its std.
pub fn cka_csv(r: &Report) -> String {
    let mut h = vec!["method".to_string(), "runs".into()];
    h.extend(r.columns.iter().map(|(l, _)| l.clone()));
    h.push("zs_avg".into());
    h.push("zs_avg_std".into());
    h.push("diverged".into());
    let mut out = csv_line(&h);
    for row in &r.cka {
        let mut f = vec![row.label.clone(), row.runs.to_string()];
        f.extend(r.columns.iter().map(|(l, _)| opt_num(row.domains.get(l).map(|s| s.mean))));
        f.push(opt_num(row.zero_shot.as_ref().map(|s| s.mean)));
        f.push(opt_num(row.zero_shot.as_ref().map(|s| s.std)));
        f.push(row.diverged.to_string());
        out.push_str(&csv_line(&f));
    }
    out
}

/// Every measurement, one line per run and domain.
pub fn runs_csv(r: &Report) -> String {
    let h: Vec<String> = [
        "method",
        "run",
        "seed",
        "domain",
        "label",
        "in_domain",
        "examples",
        "rows",
        "loss",
        "max_loss",
        "sharpness",
        "cka",
        "dir",
        "diverged",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut out = csv_line(&h);
    for run in &r.runs {
        for d in &run.domains {
            out.push_str(&csv_line(&[
                run.label.clone(),
                run.run.clone(),
                run.seed.to_string(),
                d.name.clone(),
                d.label.clone(),
                d.in_domain.to_string(),
                d.examples.to_string(),
                d.rows.to_string(),
                d.loss.to_string(),
                d.max_loss.to_string(),
                d.sharpness.to_string(),
                d.cka.to_string(),
                run.dir.display().to_string(),
                run.diverged.to_string(),
            ]));
        }
    }
    out
}

/// The files [`write()`] creates.
pub const FILES: &[&str] = &["analysis.md", "analysis.json", "sharpness.csv", "cka.csv", "runs.csv"];

/// Write `analysis.md`, `analysis.json`, `sharpness.csv`, `cka.csv` and `runs.csv` into `out`.
pub fn write(r: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    // Non-finite numbers (a measure that was not taken) are written as null.
    let json = serde_json::to_vec_pretty(r).map_err(|e| Error::Input(format!("serialising the report: {e}")))?;
    let files: [(&str, Vec<u8>); 5] = [
        ("analysis.md", r.markdown.clone().into_bytes()),
        ("analysis.json", json),
        ("sharpness.csv", sharpness_csv(r).into_bytes()),
        ("cka.csv", cka_csv(r).into_bytes()),
        ("runs.csv", runs_csv(r).into_bytes()),
    ];
    for (name, bytes) in files {
        tram::state::write_atomic(&out.join(name), &bytes)?;
    }
    Ok(())
}
