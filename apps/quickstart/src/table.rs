//! The quickstart's table, shaped like the paper's Table 4: one row per method (the untouched
//! checkpoint first), one column per domain (the training domain first), the zero-shot
//! average over the unseen domains; the lowest perplexity of each column among the fine-tuned
//! rows is marked. Written as Markdown, CSV and JSON.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tram_trainer::results::RunResult;

/// One row: a method.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuickRow {
    /// Run name (`zero-shot`, `adam`, `tram-noise`, …).
    pub method: String,
    /// Row label (`Adam`, `TRAM-x`, …).
    pub label: String,
    /// The optimizer composition (empty for the zero-shot row).
    pub composition: String,
    /// Perplexity per column, in [`QuickTable::columns`] order (`"inf"` / `"nan"` in JSON
    /// for a diverged run).
    #[serde(with = "tram_trainer::results::float::vec")]
    pub perplexity: Vec<f64>,
    /// Mean perplexity over the unseen domains.
    #[serde(with = "tram_trainer::results::float")]
    pub zero_shot_average: f64,
    /// Optimizer steps.
    pub steps: u64,
    /// The step of the evaluated parameters (model selection on the training domain's validation loss).
    pub selected_step: u64,
    /// Seconds of training.
    pub train_seconds: f64,
    /// Steps skipped (non-finite loss or gradient; parameters unchanged).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Steps without ascent (a plain descent step).
    #[serde(default)]
    pub no_ascent_steps: u64,
    /// A non-finite metric in the final evaluation: the run diverged (never ranked best).
    #[serde(default)]
    pub diverged: bool,
    /// Every step was skipped: the run failed, its numbers are the starting model's (never
    /// ranked best).
    #[serde(default)]
    pub failed: bool,
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

    /// The footnotes of its markers.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.diverged {
            out.push(format!(
                "† {}: diverged (a non-finite loss in the final evaluation; shown as `∞` / `diverged`, never ranked best)",
                self.label
            ));
        }
        if self.skipped_steps > 0 {
            let failed = if self.failed { ": every step, so the run FAILED and its numbers are the starting model's" } else { "" };
            out.push(format!(
                "‡ {}: {} of {} steps skipped (non-finite loss or gradient, parameters unchanged){failed}",
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

    /// For CSV: `diverged`, `failed`, `3/40 skipped`, `2/40 no ascent`, joined by `; `.
    pub fn status(&self) -> String {
        tram_trainer::results::status(self.diverged, self.failed, self.skipped_steps, self.no_ascent_steps, self.steps)
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
    /// Per column (and last, the zero-shot average): the index of the best fine-tuned row.
    pub best: Vec<Option<usize>>,
}

/// The `results.json` of a run directory.
pub fn read_result(dir: &Path) -> Result<RunResult> {
    let path = dir.join(tram_trainer::trainer::RESULTS_FILE);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn argmin(xs: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
    xs.filter(|(_, x)| x.is_finite())
        .fold(None, |best: Option<(usize, f64)>, (i, x)| match best {
            Some((_, b)) if b <= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

impl QuickTable {
    /// The table of the quickstart's results (one seed per run).
    pub fn from_results(train_domain: &str, results: &[RunResult]) -> Result<Self> {
        let mut results: Vec<&RunResult> = results.iter().collect();
        results.sort_by_key(|r| (r.run != crate::ZERO_SHOT, r.row));
        let Some(first) = results.first() else { bail!("no quickstart results") };
        let columns: Vec<String> = first.columns.iter().map(|c| c.label.clone()).collect();
        let mut rows = Vec::new();
        for r in &results {
            let labels: Vec<&str> = r.columns.iter().map(|c| c.label.as_str()).collect();
            if labels != columns.iter().map(String::as_str).collect::<Vec<_>>() {
                bail!("run `{}` was evaluated on {labels:?}, the others on {columns:?}", r.run);
            }
            let unseen: Vec<f64> = r.columns.iter().filter(|c| !c.in_domain).map(|c| c.metrics.perplexity).collect();
            let composition = if r.steps == 0 {
                String::new()
            } else {
                r.optimizer.get("composition").and_then(|c| c.as_str()).unwrap_or_default().to_string()
            };
            rows.push(QuickRow {
                method: r.run.clone(),
                label: r.label.clone(),
                composition,
                perplexity: r.columns.iter().map(|c| c.metrics.perplexity).collect(),
                zero_shot_average: if unseen.is_empty() { f64::NAN } else { unseen.iter().sum::<f64>() / unseen.len() as f64 },
                steps: r.steps,
                selected_step: r.selected_step,
                train_seconds: r.train_seconds,
                skipped_steps: r.skipped_steps,
                no_ascent_steps: r.no_ascent_steps,
                diverged: r.is_diverged(),
                failed: r.failed.is_some(),
            });
        }
        // Diverged and failed rows are shown but never ranked best.
        let tuned = |i: &usize| rows[*i].ranked();
        let mut best: Vec<Option<usize>> =
            (0..columns.len()).map(|c| argmin((0..rows.len()).filter(tuned).map(|i| (i, rows[i].perplexity[c])))).collect();
        best.push(argmin((0..rows.len()).filter(tuned).map(|i| (i, rows[i].zero_shot_average))));
        Ok(Self { train_domain: train_domain.to_string(), columns, rows, best })
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
        for (c, p) in r.perplexity.iter().chain(std::iter::once(&r.zero_shot_average)).enumerate() {
            let s = fmt_perplexity(*p);
            cells.push(if self.best[c] == Some(row) { mark(s) } else { s });
        }
        cells
    }

    /// The table for a terminal: aligned columns, the best fine-tuned value of each column
    /// marked with `*`.
    pub fn text(&self) -> String {
        let mut lines = vec![self.header()];
        for i in 0..self.rows.len() {
            lines.push(self.cells(i, |s| format!("{s}*")));
        }
        let widths: Vec<usize> = (0..lines[0].len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = format!(
            "Test perplexity (lower is better) after fine-tuning on `{}`; ZS Avg. = mean over the {} unseen domains; * = best fine-tuned method in the column\n\n",
            self.train_domain,
            self.columns.len().saturating_sub(1)
        );
        for (k, l) in lines.iter().enumerate() {
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
                out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
                out.push('\n');
            }
        }
        let notes = self.notes();
        if !notes.is_empty() {
            out.push('\n');
            for n in notes {
                out.push_str(&format!("{n}\n"));
            }
        }
        out
    }

    /// The footnotes of every row's markers.
    pub fn notes(&self) -> Vec<String> {
        self.rows.iter().flat_map(QuickRow::notes).collect()
    }

    /// The table in Markdown, the best fine-tuned value of each column in bold.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Test perplexity (lower is better) after fine-tuning on `{}`; ZS Avg. = mean over the {} unseen domains; **bold** = best fine-tuned method in the column.\n\n",
            self.train_domain,
            self.columns.len().saturating_sub(1)
        );
        let h = self.header();
        s.push_str(&format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len())));
        for i in 0..self.rows.len() {
            s.push_str(&format!("| {} |\n", self.cells(i, |x| format!("**{x}**")).join(" | ")));
        }
        let notes = self.notes();
        if !notes.is_empty() {
            s.push('\n');
            for n in notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// The table as CSV (full precision; `best` names the columns where the row is best).
    pub fn csv(&self) -> String {
        let field = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
        let mut h = vec!["method".to_string(), "label".into(), "composition".into()];
        h.extend(self.columns.iter().cloned());
        h.extend(["zero_shot_average".into(), "steps".into(), "selected_step".into(), "train_seconds".into(), "best".into()]);
        h.extend(["skipped_steps".into(), "no_ascent_steps".into(), "status".into()]);
        let mut out = h.iter().map(|x| field(x)).collect::<Vec<_>>().join(",") + "\n";
        for (i, r) in self.rows.iter().enumerate() {
            let mut f = vec![r.method.clone(), r.label.clone(), r.composition.clone()];
            let num = |p: f64| if p.is_nan() { "nan".to_string() } else { p.to_string() };
            f.extend(r.perplexity.iter().map(|p| num(*p)));
            f.push(num(r.zero_shot_average));
            f.extend([r.steps.to_string(), r.selected_step.to_string(), format!("{:.3}", r.train_seconds)]);
            let names: Vec<String> = self.columns.iter().cloned().chain(std::iter::once("ZS Avg.".to_string())).collect();
            f.push(
                self.best.iter().enumerate().filter(|(_, b)| **b == Some(i)).map(|(c, _)| names[c].clone()).collect::<Vec<_>>().join(" "),
            );
            f.extend([r.skipped_steps.to_string(), r.no_ascent_steps.to_string(), r.status()]);
            out.push_str(&(f.iter().map(|x| field(x)).collect::<Vec<_>>().join(",") + "\n"));
        }
        out
    }

    /// Write `quickstart.md`, `quickstart.csv` and `quickstart.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            (dir.join("quickstart.md"), self.markdown()),
            (dir.join("quickstart.csv"), self.csv()),
            (dir.join("quickstart.json"), serde_json::to_string_pretty(self)? + "\n"),
        ];
        for (p, text) in &files {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(files.into_iter().map(|(p, _)| p).collect())
    }
}
