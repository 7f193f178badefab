//! What keeps a table row's label true: `--set` / `TRAM_*` overrides apply to every row, so
//! one that replaces what a labelled row is (its composition, whether it trains, its
//! initialisation, its label) would publish numbers under the wrong name; and two rows with the
//! same label would be averaged into one row as if they were seeds.

use crate::config::{parse_value, Sources, ENV_PREFIX, ENV_RESERVED};
use crate::error::{Error, Result};
use crate::RunConfig;
use serde_json::Value;

/// The keys that say what a row is: changing one of them under a row's label makes the label
/// describe something that did not run.
pub const IDENTITY_KEYS: &[&str] = &["optimizer.name", "train.evaluate_only", "init"];

/// `(where it comes from, key, value)` of every override: `--set`, then `TRAM_*` variables.
fn overrides(sources: &Sources) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for s in &sources.sets {
        if let Some((k, v)) = s.split_once('=') {
            out.push((format!("--set {}", s.trim()), k.trim().to_string(), parse_value(v.trim())));
        }
    }
    let env: Vec<(String, String)> = match &sources.env {
        Some(v) => v.clone(),
        None => std::env::vars().collect(),
    };
    for (k, v) in env {
        if ENV_RESERVED.contains(&k.as_str()) {
            continue;
        }
        if let Some(rest) = k.strip_prefix(ENV_PREFIX).filter(|r| !r.is_empty()) {
            out.push((format!("{k}={v}"), rest.to_ascii_lowercase().replace("__", "."), parse_value(&v)));
        }
    }
    out
}

/// The value at a dotted `path` of `v`.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |node, k| node.get(k))
}

/// Refuse overrides that would make a row's label false, and rows of one output directory
/// that share a label:
///
/// - an override (`--set`, `TRAM_*`) of an [`IDENTITY_KEYS`] key (or of a table holding one,
///   such as `optimizer`) that changes its value for a row whose label the config file gives
///   (in the row or at the top level): the row would keep its label and run something else
///   (`--set optimizer.name=sgd` would run SGD in the rows labelled Adam and TRAM-x); the same
///   for `train.steps = 0`, which turns a training row into one that does not train;
/// - two selected runs with the same `out` and the same label (a `--set label=…` with several
///   rows, or a config that repeats a label): the table would average them as one row.
pub fn check_labels(sources: &Sources, runs: &[RunConfig]) -> Result<()> {
    for (i, a) in runs.iter().enumerate() {
        if let Some(b) = runs[..i].iter().find(|b| b.name != a.name && b.label == a.label && b.config.out == a.config.out) {
            return Err(Error::Config(format!(
                "runs `{}` and `{}` have the same label `{}` (and the same `out`): the results table would average them as one row; \
                 give each [[runs]] entry its own `label` (and do not set `label` with --set or TRAM_LABEL when running several rows)",
                b.name, a.name, a.label
            )));
        }
    }
    let Some(path) = &sources.file else { return Ok(()) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let table = toml::from_str::<toml::Table>(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let file = serde_json::to_value(&table).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let file_rows: Vec<Value> = file.get("runs").and_then(Value::as_array).cloned().unwrap_or_default();
    let overrides = overrides(sources);
    let defaults = crate::Config::default().to_json();
    for run in runs {
        let row = file_rows.iter().find(|r| r.get("name").and_then(Value::as_str) == Some(run.name.as_str()));
        // What the file says for this row: its own entry, else the top level, else the default.
        let in_file = |key: &str| row.and_then(|r| at(r, key)).or_else(|| at(&file, key)).or_else(|| at(&defaults, key));
        if row.and_then(|r| at(r, "label")).or_else(|| at(&file, "label")).is_none() {
            // The label is the run name: no claim to keep true.
            continue;
        }
        let trains = !run.config.train.evaluate_only && run.config.train.steps != Some(0);
        for key in IDENTITY_KEYS {
            if *key == "optimizer.name" && !trains {
                // A row that does not train runs no optimizer.
                continue;
            }
            for (origin, k, v) in &overrides {
                let given = if k == key {
                    Some(v)
                } else if let Some(rest) = key.strip_prefix(&format!("{k}.")) {
                    at(v, rest)
                } else {
                    None
                };
                let Some(given) = given else { continue };
                if Some(given) == in_file(key) {
                    continue;
                }
                let was = in_file(key).map(|v| v.to_string()).unwrap_or_else(|| "unset".into());
                return Err(lie(origin, key, &was, &given.to_string(), run));
            }
        }
        // `train.steps = 0` makes a training row evaluate only.
        let trains_in_file =
            in_file("train.evaluate_only") != Some(&Value::Bool(true)) && in_file("train.steps").and_then(Value::as_u64) != Some(0);
        if trains_in_file && !trains {
            let origin =
                overrides.iter().find(|(_, k, _)| k == "train.steps" || k == "train").map(|(o, _, _)| o.as_str()).unwrap_or("an override");
            return Err(lie(origin, "train.steps", "a training run", "0 steps (no training)", run));
        }
    }
    Ok(())
}

fn lie(origin: &str, key: &str, was: &str, now: &str, run: &RunConfig) -> Error {
    Error::Config(format!(
        "`{origin}` changes `{key}` of row `{}` (labelled `{}`) from {was} to {now}: the table would show that row's numbers \
         under a label that no longer describes them. Overrides apply to every row; to change what a row is, edit (or add) a \
         [[runs]] entry with its own label in the config",
        run.name, run.label
    ))
}
