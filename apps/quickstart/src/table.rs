//! The quickstart's table, shaped like the paper's Table 4: one row per method (the untouched
//! checkpoint first), one column per domain (the training domain first), the zero-shot
//! average over the unseen domains; the lowest perplexity of each column among the fine-tuned
//! rows is marked. Written as Markdown, CSV and JSON.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tram_trainer::results::RunResult;

/// One row: a method, aggregated over its seeds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuickRow {
    /// Run name (`zero-shot`, `adam`, `tram-noise`, …).
    pub method: String,
    /// Row label (`Adam`, `TRAM-x`, …).
    pub label: String,
    /// The optimizer composition (empty for the zero-shot row).
    pub composition: String,
    /// The seeds behind the row, ascending.
    pub seeds: Vec<u64>,
    /// Mean perplexity over the seeds per column, in [`QuickTable::columns`] order (`"inf"` /
    /// `"nan"` in JSON for a diverged run).
    #[serde(with = "tram_trainer::results::float::vec")]
    pub perplexity: Vec<f64>,
    /// Half-width of the 95% confidence interval of each column's mean (Student t over the
    /// seeds; 0 for one seed, which has no interval).
    #[serde(with = "tram_trainer::results::float::vec")]
    pub ci95: Vec<f64>,
    /// Mean over the seeds of each seed's mean perplexity over the unseen domains.
    #[serde(with = "tram_trainer::results::float")]
    pub zero_shot_average: f64,
    /// Half-width of the 95% confidence interval of [`QuickRow::zero_shot_average`].
    #[serde(with = "tram_trainer::results::float")]
    pub zero_shot_ci95: f64,
    /// Per seed (in [`QuickRow::seeds`] order): the perplexity of every column.
    pub seed_perplexity: Vec<SeedValues>,
    /// The learning rate (`NaN`/absent for the zero-shot row; the first seed's).
    #[serde(default = "nan", with = "tram_trainer::results::float")]
    pub lr: f64,
    /// Optimizer steps of each seed.
    pub steps: u64,
    /// Per seed: the step of the evaluated parameters (model selection on the training
    /// domain's validation loss).
    pub selected_steps: Vec<u64>,
    /// Mean seconds of training per seed.
    pub train_seconds: f64,
    /// Steps skipped over every seed (non-finite loss or gradient; parameters unchanged).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Steps without ascent over every seed (a plain descent step).
    #[serde(default)]
    pub no_ascent_steps: u64,
    /// A non-finite metric in some seed's final evaluation: the run diverged (never ranked best).
    #[serde(default)]
    pub diverged: bool,
    /// Every step of some seed was skipped: that run failed, its numbers are the starting
    /// model's (never ranked best).
    #[serde(default)]
    pub failed: bool,
}

/// One seed's perplexities, in [`QuickTable::columns`] order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SeedValues {
    /// The seed.
    pub seed: u64,
    /// Perplexity per column.
    #[serde(with = "tram_trainer::results::float::vec")]
    pub perplexity: Vec<f64>,
    /// Mean perplexity over the unseen domains.
    #[serde(with = "tram_trainer::results::float")]
    pub zero_shot_average: f64,
}

impl QuickRow {
    /// Whether the row competes for the best cell of a column: a fine-tuned row that neither
    /// diverged nor failed.
    pub fn ranked(&self) -> bool {
        self.method != crate::ZERO_SHOT && !self.diverged && !self.failed
    }

    /// Markers: `†` diverged, `‡` skipped steps, `§` steps without ascent.
    pub fn markers(&self) -> String {
        tram_trainer::results::markers(self.diverged, self.skipped_steps > 0, self.no_ascent_steps > 0)
    }

    /// The label with its markers.
    pub fn marked_label(&self) -> String {
        tram_trainer::results::marked_label(&self.label, &self.markers())
    }

    /// Steps over every seed.
    fn total_steps(&self) -> u64 {
        self.steps * self.seeds.len().max(1) as u64
    }

    /// The footnotes of its markers.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let over = if self.seeds.len() > 1 { format!(" (over {} seeds)", self.seeds.len()) } else { String::new() };
        if self.diverged {
            out.push(format!(
                "† {}: diverged (a non-finite loss in the final evaluation; shown as `∞` / `diverged`, never ranked best)",
                self.label
            ));
        }
        if self.skipped_steps > 0 {
            let failed =
                if self.failed { ": every step of a seed, so that run FAILED and its numbers are the starting model's" } else { "" };
            out.push(format!(
                "‡ {}: {} of {} steps skipped{over} (non-finite loss or gradient, parameters unchanged){failed}",
                self.label,
                self.skipped_steps,
                self.total_steps()
            ));
        }
        if self.no_ascent_steps > 0 {
            out.push(format!(
                "§ {}: {} of {} steps without ascent{over} (zero or non-finite radius or gradient norm: a plain descent step)",
                self.label,
                self.no_ascent_steps,
                self.total_steps()
            ));
        }
        out
    }

    /// For CSV: `diverged`, `failed`, `3/40 skipped`, `2/40 no ascent`, joined by `; `
    /// (step counts over every seed).
    pub fn status(&self) -> String {
        tram_trainer::results::status(self.diverged, self.failed, self.skipped_steps, self.no_ascent_steps, self.total_steps())
    }

    /// Mean and CI half-width of column `c` (the last, `columns.len()`, is the zero-shot average).
    pub fn value(&self, c: usize) -> (f64, f64) {
        if c < self.perplexity.len() {
            (self.perplexity[c], self.ci95[c])
        } else {
            (self.zero_shot_average, self.zero_shot_ci95)
        }
    }
}

/// The best row of a column.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Best {
    /// No ranked row has a finite value.
    None,
    /// The row with the lowest mean, whose 95% interval does not overlap the runner-up's.
    Row {
        /// Row index.
        row: usize,
    },
    /// The lowest mean's interval overlaps the runner-up's (or a row has one seed, so no
    /// interval): no row is marked. `rows`: the lowest mean first, then every row whose
    /// interval overlaps it.
    Tied {
        /// Row indices.
        rows: Vec<usize>,
    },
}

impl Best {
    /// The separated best row, if any.
    pub fn row(&self) -> Option<usize> {
        match self {
            Best::Row { row } => Some(*row),
            _ => None,
        }
    }
}

/// A candidate for the best cell of a column: its mean, the half-width of its 95% interval
/// and the number of seeds behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Row index.
    pub row: usize,
    /// Mean over the seeds (lower is better).
    pub mean: f64,
    /// Half-width of the 95% confidence interval.
    pub ci95: f64,
    /// Seeds.
    pub n: usize,
}

impl Candidate {
    /// Whether the intervals `mean ± ci95` of `self` and `other` overlap (touching counts). A
    /// row with fewer than two seeds has no interval and overlaps every row.
    pub fn overlaps(&self, other: &Candidate) -> bool {
        if self.n < 2 || other.n < 2 || !self.ci95.is_finite() || !other.ci95.is_finite() {
            return true;
        }
        (self.mean - other.mean).abs() <= self.ci95 + other.ci95
    }
}

/// The rule for marking the best of a column: the lowest mean is marked only when its 95%
/// interval does not overlap the runner-up's (the second lowest mean); otherwise the column
/// is tied between the lowest mean and every row whose interval overlaps it. Non-finite means
/// (diverged runs) never compete; a lone candidate is the best.
pub fn best_of(candidates: &[Candidate]) -> Best {
    let mut c: Vec<&Candidate> = candidates.iter().filter(|c| c.mean.is_finite()).collect();
    c.sort_by(|a, b| a.mean.total_cmp(&b.mean).then(a.row.cmp(&b.row)));
    match c.as_slice() {
        [] => Best::None,
        [only] => Best::Row { row: only.row },
        [best, runner_up, ..] if !best.overlaps(runner_up) => Best::Row { row: best.row },
        [best, rest @ ..] => {
            Best::Tied { rows: std::iter::once(best.row).chain(rest.iter().filter(|r| r.overlaps(best)).map(|r| r.row)).collect() }
        }
    }
}

/// A mean with its interval for the tables: `123.45 ± 0.67` (the mean alone for one seed).
pub fn fmt_interval(mean: f64, ci95: f64, n: usize) -> String {
    if n > 1 && mean.is_finite() && ci95.is_finite() {
        format!("{mean:.2} ± {ci95:.2}")
    } else {
        fmt_perplexity(mean)
    }
}

/// A perplexity for the tables: two decimals, `∞` when it overflowed, `diverged` when NaN.
pub fn fmt_perplexity(p: f64) -> String {
    if p.is_finite() {
        format!("{p:.2}")
    } else {
        tram_trainer::results::non_finite(p).to_string()
    }
}

/// The table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuickTable {
    /// The domain the methods were fine-tuned on.
    pub train_domain: String,
    /// Column labels: the training domain first, then the unseen domains.
    pub columns: Vec<String>,
    /// Rows: the untouched checkpoint (`zero-shot`) first, then the methods in config order.
    pub rows: Vec<QuickRow>,
    /// Per column (and last, the zero-shot average): the best fine-tuned row, or a tie
    /// ([`best_of`]).
    pub best: Vec<Best>,
}

/// The `results.json` of a run directory.
pub fn read_result(dir: &Path) -> Result<RunResult> {
    let path = dir.join(tram_trainer::trainer::RESULTS_FILE);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn nan() -> f64 {
    f64::NAN
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Mean and 95% CI half-width (Student t; 0 for one value) of `xs`.
fn interval(xs: &[f64]) -> (f64, f64) {
    let c = tram_trainer::results::cell(xs);
    (c.mean, if c.ci95.is_finite() { c.ci95 } else { 0.0 })
}

impl QuickTable {
    /// The table of the quickstart's results: one row per run (every seed of it aggregated:
    /// the mean and the 95% interval of each column).
    pub fn from_results(train_domain: &str, results: &[RunResult]) -> Result<Self> {
        let mut results: Vec<&RunResult> = results.iter().collect();
        results.sort_by_key(|r| (r.run != crate::ZERO_SHOT, r.row, r.run.clone(), r.seed));
        let Some(first) = results.first() else { bail!("no quickstart results") };
        let columns: Vec<String> = first.columns.iter().map(|c| c.label.clone()).collect();
        let mut rows: Vec<QuickRow> = Vec::new();
        let mut k = 0;
        while k < results.len() {
            let run = &results[k].run;
            let group: Vec<&RunResult> = results[k..].iter().take_while(|r| &r.run == run).copied().collect();
            k += group.len();
            let mut seeds = Vec::new();
            for r in &group {
                let labels: Vec<&str> = r.columns.iter().map(|c| c.label.as_str()).collect();
                if labels != columns.iter().map(String::as_str).collect::<Vec<_>>() {
                    bail!("run `{}` (seed {}) was evaluated on {labels:?}, the others on {columns:?}", r.run, r.seed);
                }
                if r.steps != group[0].steps {
                    bail!(
                        "run `{}`: seed {} trained {} steps, seed {} {}: rerun the row with --force",
                        r.run,
                        r.seed,
                        r.steps,
                        group[0].seed,
                        group[0].steps
                    );
                }
                let unseen: Vec<f64> = r.columns.iter().filter(|c| !c.in_domain).map(|c| c.metrics.perplexity).collect();
                seeds.push(SeedValues {
                    seed: r.seed,
                    perplexity: r.columns.iter().map(|c| c.metrics.perplexity).collect(),
                    zero_shot_average: mean(&unseen),
                });
            }
            let r0 = group[0];
            let composition = if r0.steps == 0 {
                String::new()
            } else {
                r0.optimizer.get("composition").and_then(|c| c.as_str()).unwrap_or_default().to_string()
            };
            let per_column: Vec<(f64, f64)> =
                (0..columns.len()).map(|c| interval(&seeds.iter().map(|s| s.perplexity[c]).collect::<Vec<_>>())).collect();
            let (zs, zs_ci) = interval(&seeds.iter().map(|s| s.zero_shot_average).collect::<Vec<_>>());
            rows.push(QuickRow {
                method: r0.run.clone(),
                label: r0.label.clone(),
                composition,
                seeds: seeds.iter().map(|s| s.seed).collect(),
                perplexity: per_column.iter().map(|p| p.0).collect(),
                ci95: per_column.iter().map(|p| p.1).collect(),
                zero_shot_average: zs,
                zero_shot_ci95: zs_ci,
                seed_perplexity: seeds,
                lr: if r0.steps == 0 { 0.0 } else { r0.optimizer.get("lr").and_then(|v| v.as_f64()).unwrap_or(0.0) },
                steps: r0.steps,
                selected_steps: group.iter().map(|r| r.selected_step).collect(),
                train_seconds: mean(&group.iter().map(|r| r.train_seconds).collect::<Vec<_>>()),
                skipped_steps: group.iter().map(|r| r.skipped_steps).sum(),
                no_ascent_steps: group.iter().map(|r| r.no_ascent_steps).sum(),
                diverged: group.iter().any(|r| r.is_diverged()),
                failed: group.iter().any(|r| r.failed.is_some()),
            });
        }
        // Diverged and failed rows are shown but never ranked best.
        let best = (0..=columns.len())
            .map(|c| {
                let candidates: Vec<Candidate> = (0..rows.len())
                    .filter(|i| rows[*i].ranked())
                    .map(|i| {
                        let (mean, ci95) = rows[i].value(c);
                        Candidate { row: i, mean, ci95, n: rows[i].seeds.len() }
                    })
                    .collect();
                best_of(&candidates)
            })
            .collect();
        Ok(Self { train_domain: train_domain.to_string(), columns, rows, best })
    }

    /// The seeds per fine-tuned row (the untouched checkpoint is evaluated once): `3`, or
    /// `1–3` when rows differ.
    pub fn seed_count(&self) -> String {
        let trained: Vec<&QuickRow> = self.rows.iter().filter(|r| r.method != crate::ZERO_SHOT).collect();
        let rows = if trained.is_empty() { self.rows.iter().collect() } else { trained };
        let (lo, hi) = rows.iter().fold((usize::MAX, 0), |(lo, hi), r| (lo.min(r.seeds.len()), hi.max(r.seeds.len())));
        if lo == hi || rows.is_empty() {
            hi.to_string()
        } else {
            format!("{lo}–{hi}")
        }
    }

    fn column_names(&self) -> Vec<String> {
        self.columns.iter().cloned().chain(std::iter::once("ZS Avg.".to_string())).collect()
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["method".to_string()];
        for (i, c) in self.columns.iter().enumerate() {
            h.push(if i == 0 { format!("{c} (in-domain)") } else { c.clone() });
        }
        h.push("ZS Avg.".into());
        h
    }

    fn cells(&self, row: usize, mark: impl Fn(String) -> String) -> Vec<String> {
        let r = &self.rows[row];
        let mut cells = vec![r.marked_label()];
        for c in 0..=self.columns.len() {
            let (m, ci) = r.value(c);
            let s = fmt_interval(m, ci, r.seeds.len());
            cells.push(if self.best[c].row() == Some(row) { mark(s) } else { s });
        }
        cells
    }

    /// The last line of the table: per column the best row's label, `tied` or `-`.
    fn best_cells(&self) -> Vec<String> {
        let mut cells = vec!["best".to_string()];
        for b in &self.best {
            cells.push(match b {
                Best::None => "-".into(),
                Best::Row { row } => self.rows[*row].label.clone(),
                Best::Tied { .. } => "tied".into(),
            });
        }
        cells
    }

    /// The rows tied in each tied column, one line each (`ZS Avg.: Adam, SAM, TRAM-x`); with
    /// one seed per row (no intervals) a single line saying so.
    pub fn ties(&self) -> Vec<String> {
        let names = self.column_names();
        if self.rows.iter().filter(|r| r.ranked()).all(|r| r.seeds.len() < 2) && self.best.iter().any(|b| matches!(b, Best::Tied { .. })) {
            return vec!["every column (one seed: no intervals, so no method is marked best)".into()];
        }
        self.best
            .iter()
            .enumerate()
            .filter_map(|(c, b)| match b {
                Best::Tied { rows } => {
                    Some(format!("{}: {}", names[c], rows.iter().map(|i| self.rows[*i].label.as_str()).collect::<Vec<_>>().join(", ")))
                }
                _ => None,
            })
            .collect()
    }

    fn title(&self) -> String {
        let n = self.seed_count();
        format!(
            "Test perplexity (lower is better) after fine-tuning on `{}`: mean ± 95% CI (Student t) over {n} seed{} (the untouched checkpoint once); ZS Avg. = mean over the {} unseen domains",
            self.train_domain,
            if n == "1" { "" } else { "s" },
            self.columns.len().saturating_sub(1)
        )
    }

    fn rule(&self) -> &'static str {
        "the best fine-tuned method of a column is marked only when its interval does not overlap the runner-up's; otherwise the column is `tied`"
    }

    /// The table for a terminal: aligned columns, the best fine-tuned value of each column
    /// marked with `*` (when it is separated from the runner-up), a last line naming it or
    /// `tied`, then the notes and [`QuickTable::summary`].
    pub fn text(&self) -> String {
        let mut lines = vec![self.header()];
        for i in 0..self.rows.len() {
            lines.push(self.cells(i, |s| format!("{s}*")));
        }
        lines.push(self.best_cells());
        let widths: Vec<usize> = (0..lines[0].len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = format!("{}; * = {}\n\n", self.title(), self.rule());
        let rule_line = widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n";
        for (k, l) in lines.iter().enumerate() {
            if k + 1 == lines.len() {
                out.push_str(&rule_line);
            }
            let row: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    let pad = widths[c] - s.chars().count();
                    if c == 0 {
                        format!("{s}{}", " ".repeat(pad))
                    } else {
                        format!("{}{s}", " ".repeat(pad))
                    }
                })
                .collect();
            out.push_str(row.join("  ").trim_end());
            out.push('\n');
            if k == 0 {
                out.push_str(&rule_line);
            }
        }
        let mut notes: Vec<String> = self.ties().into_iter().map(|t| format!("tied: {t}")).collect();
        notes.extend(self.notes());
        if !notes.is_empty() {
            out.push('\n');
            for n in notes {
                out.push_str(&format!("{n}\n"));
            }
        }
        out.push('\n');
        for l in self.summary() {
            out.push_str(&format!("{l}\n"));
        }
        out
    }

    /// The footnotes of every row's markers.
    pub fn notes(&self) -> Vec<String> {
        self.rows.iter().flat_map(QuickRow::notes).collect()
    }

    /// The table in Markdown: the best fine-tuned value of each column in bold (when separated
    /// from the runner-up), a last row naming it or `tied`, then the notes and
    /// [`QuickTable::summary`].
    pub fn markdown(&self) -> String {
        let mut s = format!("{}; **bold** = {}.\n\n", self.title(), self.rule());
        let h = self.header();
        s.push_str(&format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len())));
        for i in 0..self.rows.len() {
            s.push_str(&format!("| {} |\n", self.cells(i, |x| format!("**{x}**")).join(" | ")));
        }
        let mut best = self.best_cells();
        best[0] = "*best*".into();
        s.push_str(&format!("| {} |\n", best.join(" | ")));
        let mut notes: Vec<String> = self.ties().into_iter().map(|t| format!("tied: {t}")).collect();
        notes.extend(self.notes());
        if !notes.is_empty() {
            s.push('\n');
            for n in notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s.push('\n');
        s.push_str(&self.summary().join("\n"));
        s.push('\n');
        s
    }

    /// The table as CSV (full precision): per column the mean and the CI half-width
    /// (`<column>_ci95`); `best` names the columns where the row is the separated best, `tied`
    /// those where it is among the tied rows; `seeds` lists the seeds (space separated).
    pub fn csv(&self) -> String {
        let field = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
        let mut h = vec!["method".to_string(), "label".into(), "composition".into(), "seeds".into()];
        for c in &self.columns {
            h.extend([c.clone(), format!("{c}_ci95")]);
        }
        h.extend(["zero_shot_average".into(), "zero_shot_average_ci95".into()]);
        h.extend(["steps".into(), "selected_steps".into(), "train_seconds".into(), "best".into(), "tied".into()]);
        h.extend(["skipped_steps".into(), "no_ascent_steps".into(), "status".into()]);
        let mut out = h.iter().map(|x| field(x)).collect::<Vec<_>>().join(",") + "\n";
        let names = self.column_names();
        let num = |p: f64| if p.is_nan() { "nan".to_string() } else { p.to_string() };
        let join = |xs: Vec<String>| xs.join(" ");
        for (i, r) in self.rows.iter().enumerate() {
            let mut f = vec![r.method.clone(), r.label.clone(), r.composition.clone(), join(r.seeds.iter().map(u64::to_string).collect())];
            for c in 0..=self.columns.len() {
                let (m, ci) = r.value(c);
                f.extend([num(m), num(ci)]);
            }
            f.extend([r.steps.to_string(), join(r.selected_steps.iter().map(u64::to_string).collect()), format!("{:.3}", r.train_seconds)]);
            let best = self.best.iter().enumerate().filter(|(_, b)| b.row() == Some(i)).map(|(c, _)| names[c].clone()).collect();
            let tied = self
                .best
                .iter()
                .enumerate()
                .filter(|(_, b)| matches!(b, Best::Tied { rows } if rows.contains(&i)))
                .map(|(c, _)| names[c].clone())
                .collect();
            f.extend([join(best), join(tied)]);
            f.extend([r.skipped_steps.to_string(), r.no_ascent_steps.to_string(), r.status()]);
            out.push_str(&(f.iter().map(|x| field(x)).collect::<Vec<_>>().join(",") + "\n"));
        }
        out
    }

    /// A row by run name.
    pub fn row(&self, method: &str) -> Option<&QuickRow> {
        self.rows.iter().find(|r| r.method == method)
    }

    /// What the table shows, in sentences computed from it: the effect of fine-tuning (Adam's
    /// in-domain gain and forgetting against the untouched checkpoint) and whether TRAM's
    /// zero-shot average beats Adam's and SAM's beyond the 95% intervals.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(z), Some(a)) = (self.row(crate::ZERO_SHOT), self.row("adam").filter(|r| r.ranked())) {
            out.push(format!(
                "Fine-tuning on `{}` (Adam, {} seed{}): in-domain perplexity {} → {} ({:+.2}); zero-shot average over the unseen domains {} → {} ({:+.2}: forgetting).",
                self.train_domain,
                a.seeds.len(),
                if a.seeds.len() == 1 { "" } else { "s" },
                fmt_perplexity(z.perplexity[0]),
                fmt_interval(a.perplexity[0], a.ci95[0], a.seeds.len()),
                a.perplexity[0] - z.perplexity[0],
                fmt_perplexity(z.zero_shot_average),
                fmt_interval(a.zero_shot_average, a.zero_shot_ci95, a.seeds.len()),
                a.zero_shot_average - z.zero_shot_average,
            ));
        }
        out.push(self.finding());
        out
    }

    /// One or two sentences: does the best TRAM variant's zero-shot average beat Adam's and
    /// SAM's beyond the 95% intervals (the paper's claim, Table 4), at this scale?
    pub fn finding(&self) -> String {
        let cand = |r: &QuickRow| Candidate { row: 0, mean: r.zero_shot_average, ci95: r.zero_shot_ci95, n: r.seeds.len() };
        let tram: Vec<&QuickRow> = self.rows.iter().filter(|r| r.method.starts_with("tram") && r.ranked()).collect();
        let baselines: Vec<&QuickRow> = ["adam", "sam"].iter().filter_map(|m| self.row(m)).filter(|r| r.ranked()).collect();
        if tram.is_empty() || baselines.is_empty() {
            return "Finding: the table needs a TRAM row and Adam's or SAM's (finished, not diverged) to compare zero-shot averages."
                .into();
        }
        let n = self.rows.iter().filter(|r| r.ranked()).map(|r| r.seeds.len()).min().unwrap_or(0);
        let best = tram.iter().min_by(|a, b| a.zero_shot_average.total_cmp(&b.zero_shot_average)).expect("non-empty");
        let shown = |r: &QuickRow| format!("{} {}", r.label, fmt_interval(r.zero_shot_average, r.zero_shot_ci95, r.seeds.len()));
        if n < 2 {
            return format!(
                "Finding: with one seed there are no intervals, so this run cannot say whether TRAM's zero-shot average beats Adam's and SAM's (best TRAM: {}; {}); run the default {} seeds.",
                shown(best),
                baselines.iter().map(|b| shown(b)).collect::<Vec<_>>().join(", "),
                crate::DEFAULT_SEEDS
            );
        }
        let beats = |t: &QuickRow, b: &QuickRow| t.zero_shot_average < b.zero_shot_average && !cand(t).overlaps(&cand(b));
        let worse = |t: &QuickRow, b: &QuickRow| t.zero_shot_average > b.zero_shot_average && !cand(t).overlaps(&cand(b));
        let winners: Vec<&str> = tram.iter().filter(|t| baselines.iter().all(|b| beats(t, b))).map(|t| t.label.as_str()).collect();
        let base_names = baselines.iter().map(|b| format!("{}'s", b.label)).collect::<Vec<_>>().join(" and ");
        let vs = baselines.iter().map(|b| shown(b)).collect::<Vec<_>>().join(", ");
        let scale = format!("at this scale ({n} seeds, 95% intervals)");
        if !winners.is_empty() {
            // A learning rate other than the baselines' is a confound the table cannot separate.
            let lrs: Vec<String> = tram
                .iter()
                .filter(|t| winners.contains(&t.label.as_str()))
                .chain(baselines.iter())
                .map(|r| format!("{} {}", r.label, r.lr))
                .collect();
            let differ = tram
                .iter()
                .filter(|t| winners.contains(&t.label.as_str()))
                .any(|t| baselines.iter().any(|b| t.lr > 0.0 && b.lr > 0.0 && (t.lr - b.lr).abs() > 1e-12 * b.lr));
            let confound = if differ {
                format!(
                    " But the learning rates differ (lr: {}): the gap may come from the learning rate the sweep chose rather than from the method.",
                    lrs.join(", ")
                )
            } else {
                String::new()
            };
            format!(
                "Finding: {scale}, TRAM's zero-shot average beats {base_names} beyond the intervals: {} of {} TRAM variants do ({}); best {} vs {vs}.{confound}",
                winners.len(),
                tram.len(),
                winners.join(", "),
                shown(best)
            )
        } else {
            let beaten_by_all = baselines.iter().all(|b| worse(best, b));
            let how = if beaten_by_all {
                format!("it is worse: even the best TRAM variant's interval lies above {base_names}")
            } else {
                "the intervals overlap".to_string()
            };
            format!(
                "Finding: {scale}, TRAM's zero-shot average does not beat {base_names} beyond the intervals — {how} (best TRAM: {}; {vs}).",
                shown(best)
            )
        }
    }

    /// Write `quickstart.md`, `quickstart.csv` and `quickstart.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            (dir.join("quickstart.md"), self.markdown()),
            (dir.join("quickstart.csv"), self.csv()),
            (dir.join("quickstart.json"), serde_json::to_string_pretty(&Json { table: self, summary: self.summary() })? + "\n"),
        ];
        for (p, text) in &files {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(files.into_iter().map(|(p, _)| p).collect())
    }

    /// Read `quickstart.json` (the table; its summary sentences are recomputed).
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// `quickstart.json`: the table and the sentences below it.
#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    table: &'a QuickTable,
    summary: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(row: usize, mean: f64, ci95: f64, n: usize) -> Candidate {
        Candidate { row, mean, ci95, n }
    }

    #[test]
    fn the_best_is_marked_only_when_its_interval_clears_the_runner_up() {
        // 10 ± 1 vs 13 ± 1: [9, 11] and [12, 14] do not overlap.
        assert_eq!(best_of(&[c(1, 13.0, 1.0, 3), c(2, 10.0, 1.0, 3), c(3, 20.0, 1.0, 3)]), Best::Row { row: 2 });
        // 10 ± 1 vs 11.5 ± 1: [9, 11] and [10.5, 12.5] overlap: tied, the lowest mean first.
        assert_eq!(best_of(&[c(1, 11.5, 1.0, 3), c(2, 10.0, 1.0, 3), c(3, 20.0, 1.0, 3)]), Best::Tied { rows: vec![2, 1] });
        // Touching intervals count as overlapping: 10 ± 1 and 12 ± 1 meet at 11.
        assert_eq!(best_of(&[c(1, 12.0, 1.0, 3), c(2, 10.0, 1.0, 3)]), Best::Tied { rows: vec![2, 1] });
        // Only the runner-up decides; the tie lists every row overlapping the best (a third row
        // with a wide interval as well).
        assert_eq!(best_of(&[c(1, 10.0, 0.5, 3), c(2, 10.8, 0.5, 3), c(3, 14.0, 5.0, 3)]), Best::Tied { rows: vec![1, 2, 3] });
        // A clear best is not undone by a third row's wide interval: the rule compares with the runner-up.
        assert_eq!(best_of(&[c(1, 10.0, 0.1, 3), c(2, 11.0, 0.1, 3), c(3, 12.0, 5.0, 3)]), Best::Row { row: 1 });
    }

    #[test]
    fn one_seed_has_no_interval_so_the_best_is_tied() {
        assert_eq!(best_of(&[c(1, 10.0, 0.0, 1), c(2, 50.0, 0.0, 1)]), Best::Tied { rows: vec![1, 2] });
        // The best with intervals, the runner-up without: still no claim.
        assert_eq!(best_of(&[c(1, 10.0, 0.1, 3), c(2, 50.0, 0.0, 1)]), Best::Tied { rows: vec![1, 2] });
    }

    #[test]
    fn diverged_values_never_compete_and_a_lone_row_is_best() {
        assert_eq!(best_of(&[c(1, f64::NAN, 0.0, 3), c(2, 12.0, 1.0, 3), c(3, f64::INFINITY, 0.0, 3)]), Best::Row { row: 2 });
        assert_eq!(best_of(&[c(1, f64::NAN, 0.0, 3)]), Best::None);
        assert_eq!(best_of(&[]), Best::None);
    }

    #[test]
    fn intervals_print_with_the_mean_and_only_for_several_seeds() {
        assert_eq!(fmt_interval(123.456, 0.789, 3), "123.46 ± 0.79");
        assert_eq!(fmt_interval(123.456, 0.0, 1), "123.46");
        assert_eq!(fmt_interval(f64::INFINITY, 0.0, 3), tram_trainer::results::non_finite(f64::INFINITY));
    }
}
