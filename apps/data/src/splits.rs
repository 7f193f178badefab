//! Split discovery in the layouts hub datasets and local directories use.
//!
//! A data file is a `.parquet`, `.jsonl` or `.json` (JSON lines, or one JSON array of
//! objects), or `.txt` (one `text` row per line, stripped, as M2D2's loading script yields)
//! file. Its split and config come from its path (`/`-separated, relative to the repository
//! root or the directory):
//!
//! | path | config | split |
//! |---|---|---|
//! | `train.jsonl`, `train.parquet`, `train-00000-of-00002.parquet` | none | `train` |
//! | `data/train-00000-of-00001-<hash>.parquet` | none | `train` |
//! | `train/0000.parquet`, `data/train/0000.parquet` | none | `train` |
//! | `en/train-00000-of-00001.parquet` (XNLI's per-language configs) | `en` | `train` |
//! | `en/train/0000.parquet` (the `refs/convert/parquet` layout) | `en` | `train` |
//!
//! The split is the file name up to its first `-` (so `validation` never matches
//! `validation_matched-….parquet`); a file named by digits only (`0000.parquet`) takes the split
//! from its folder. When no config is given and the split exists only under one config, that
//! config is used; a split found under several configs asks for one. `validation` also finds
//! files named `valid`, `dev` or `val` (and each of those the others) when no file has the
//! name asked for.
//!
//! Archives `…/<config>.tar.gz` (`.tgz`, `.tar`) hold a config each (M2D2's
//! `data/<domain>.tar.gz` of `<domain>/{train,valid,test}.txt`): asked for that config, the
//! archive is fetched and its members are classified as above; rows are streamed out of it
//! without unpacking.

use crate::error::{Error, Result};
use crate::source::{DataFiles, DataSource, Listing};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// The format of a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// JSON lines (`.jsonl`, or `.json` holding JSON lines or one array of objects).
    JsonLines,
    /// Plain text (`.txt`): one row `{text}` per line, the line stripped of surrounding
    /// whitespace (empty lines give empty texts).
    Text,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Parquet => "parquet",
            Format::JsonLines => "JSON lines",
            Format::Text => "text lines",
        })
    }
}

/// What a data file's path says about it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataFile {
    /// The config (subset) it belongs to, if the layout has one.
    pub config: Option<String>,
    /// The split.
    pub split: String,
    /// Its format.
    pub format: Format,
    /// The path relative to the repository root or the directory.
    pub path: String,
}

/// JSON files that describe a dataset rather than hold its rows.
const METADATA_JSON: &[&str] = &[
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Classify one relative path; `None` for files that are not data files or do not name a
/// split.
pub fn classify(path: &str) -> Option<DataFile> {
    let comps: Vec<&str> = path.split('/').collect();
    let name = *comps.last()?;
    let (stem, format) = if let Some(s) = name.strip_suffix(".parquet") {
        (s, Format::Parquet)
    } else if let Some(s) = name.strip_suffix(".jsonl") {
        (s, Format::JsonLines)
    } else if let Some(s) = name.strip_suffix(".json") {
        if METADATA_JSON.contains(&name) {
            return None;
        }
        (s, Format::JsonLines)
    } else if let Some(s) = name.strip_suffix(".txt") {
        if matches!(s.to_ascii_lowercase().as_str(), "license" | "readme" | "requirements" | "split_names" | "notice" | "citation") {
            return None;
        }
        (s, Format::Text)
    } else {
        return None;
    };
    let mut dirs: &[&str] = &comps[..comps.len() - 1];
    if dirs.first() == Some(&"data") {
        dirs = &dirs[1..];
    }
    let join = |d: &[&str]| if d.is_empty() { None } else { Some(d.join("/")) };
    let (config, split) = match split_of(stem) {
        Some(split) => (join(dirs), split.to_string()),
        None => {
            let (last, rest) = dirs.split_last()?;
            (join(rest), last.to_string())
        }
    };
    Some(DataFile { config, split, format, path: path.to_string() })
}

/// The split a file stem names: up to the first `-`; `None` for shard numbers (`0000`,
/// `00000-of-00001`).
fn split_of(stem: &str) -> Option<&str> {
    let head = stem.split('-').next().unwrap_or(stem);
    if head.is_empty() || head.chars().all(|c| c.is_ascii_digit()) {
        None
    } else {
        Some(head)
    }
}

/// The config an archive path holds (`data/cs.CL.tar.gz` → `cs.CL`); `None` for other files.
pub fn classify_archive(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let stem = name.strip_suffix(".tar.gz").or_else(|| name.strip_suffix(".tgz")).or_else(|| name.strip_suffix(".tar"))?;
    (!stem.is_empty()).then(|| stem.to_string())
}

/// The archives of a listing: `(config, path)`.
pub fn archives(listing: &Listing) -> Vec<(String, String)> {
    listing.files.iter().filter_map(|p| classify_archive(p).map(|c| (c, p.clone()))).collect()
}

/// Other names a split goes by: `validation` ↔ `valid`, `dev`, `val`.
pub fn split_aliases(split: &str) -> &'static [&'static str] {
    const VALIDATION: &[&str] = &["validation", "valid", "dev", "val"];
    if VALIDATION.contains(&split) {
        VALIDATION
    } else {
        &[]
    }
}

/// Every data file of a listing, classified.
pub fn data_files(listing: &Listing) -> Vec<DataFile> {
    listing.files.iter().filter_map(|p| classify(p)).collect()
}

/// The splits of a listing by config (`None`: no config).
pub fn list_splits(listing: &Listing) -> BTreeMap<Option<String>, BTreeSet<String>> {
    let mut out: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
    for f in data_files(listing) {
        out.entry(f.config).or_default().insert(f.split);
    }
    out
}

/// A human summary of the splits of a listing.
pub fn describe_splits(listing: &Listing) -> String {
    let splits = list_splits(listing);
    if splits.is_empty() {
        let mut shown: Vec<&str> = listing.files.iter().map(String::as_str).take(12).collect();
        if listing.files.len() > shown.len() {
            shown.push("…");
        }
        if !archives(listing).is_empty() {
            return format!(
                "{} has no data files outside archives; archives (one config each): {}",
                listing.origin,
                archives(listing).iter().map(|(c, _)| c.as_str()).take(24).collect::<Vec<_>>().join(", ")
            );
        }
        return format!(
            "{} has no data files (.parquet, .jsonl, .json, .txt); files present: {}",
            listing.origin,
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
        );
    }
    let join = |s: &BTreeSet<String>| s.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
    let first = splits.values().next().cloned().unwrap_or_default();
    let arch = archives(listing);
    let arch_note = if arch.is_empty() {
        String::new()
    } else {
        let mut names: Vec<&str> = arch.iter().map(|(c, _)| c.as_str()).take(24).collect();
        if arch.len() > names.len() {
            names.push("…");
        }
        format!("; archives (one config each, {} in all): {}", arch.len(), names.join(", "))
    };
    if splits.is_empty() && !arch.is_empty() {
        return format!("{} has no data files outside archives{arch_note}", listing.origin);
    }
    let body = if splits.len() > 1 && splits.keys().all(Option::is_some) && splits.values().all(|s| *s == first) {
        let configs: Vec<&str> = splits.keys().flatten().map(String::as_str).collect();
        format!("splits {} in each of the configs {}", join(&first), configs.join(", "))
    } else {
        splits
            .iter()
            .map(|(c, s)| match c {
                Some(c) => format!("config `{c}`: {}", join(s)),
                None => format!("splits {}", join(s)),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("{} has {body}{arch_note}", listing.origin)
}

/// The data files of one split, resolved to local paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitFiles {
    /// The split.
    pub split: String,
    /// The config they belong to.
    pub config: Option<String>,
    /// Their format.
    pub format: Format,
    /// Local paths, in shard order.
    pub paths: Vec<PathBuf>,
    /// When the split lives in an archive: `paths` is that one archive, and these are the
    /// members to read, in order. Empty otherwise.
    pub members: Vec<String>,
}

enum Match {
    Found(Vec<DataFile>),
    /// The config is an archive at this path, to be opened.
    Archive(String),
    /// Nothing, or something wrong, with the reason.
    Not(String),
}

fn match_split(listing: &Listing, split: &str, config: Option<&str>) -> Match {
    let files = data_files(listing);
    let m = match_files(&files, split, config, listing);
    if let Match::Not(_) = m {
        // An archive holding the config (or the only archive, when no config is given).
        let arch = archives(listing);
        let pick = match config {
            Some(c) => arch.iter().find(|(ac, _)| ac == c),
            None if arch.len() == 1 && files.is_empty() => arch.first(),
            None => None,
        };
        if let Some((_, path)) = pick {
            return Match::Archive(path.clone());
        }
    }
    m
}

fn match_files(files: &[DataFile], split: &str, config: Option<&str>, listing: &Listing) -> Match {
    if !files.iter().any(|f| f.split == split) {
        if let Some(alias) = split_aliases(split).iter().find(|a| **a != split && files.iter().any(|f| f.split == **a)) {
            tracing::info!(split, found = alias, "no files named after the split: using its alias");
            return match_files(files, alias, config, listing);
        }
    }
    let wanted = |f: &&DataFile, c: Option<&str>| f.split == split && f.config.as_deref() == c;
    let mut found: Vec<&DataFile> = files.iter().filter(|f| wanted(f, config)).collect();
    if found.is_empty() && config == Some("default") {
        found = files.iter().filter(|f| wanted(f, None)).collect();
    }
    if found.is_empty() && config.is_none() {
        let configs: BTreeSet<&str> = files.iter().filter(|f| f.split == split).filter_map(|f| f.config.as_deref()).collect();
        match configs.len() {
            0 => {}
            1 => {
                let only = *configs.iter().next().unwrap();
                tracing::info!(split, config = only, "no config given: using the only config that has this split");
                found = files.iter().filter(|f| wanted(f, Some(only))).collect();
            }
            _ => {
                return Match::Not(format!(
                    "the split exists in several configs ({}): pass one of them",
                    configs.into_iter().collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }
    if found.is_empty() {
        return Match::Not(if listing.files.is_empty() && !files.is_empty() {
            // Members of an archive: `listing` only names it.
            let mut names: Vec<String> = files.iter().map(|f| f.split.clone()).collect();
            names.sort();
            names.dedup();
            format!("{} has splits {}", listing.origin, names.join(", "))
        } else {
            describe_splits(listing)
        });
    }
    // One format: parquet before JSON lines.
    let format = found.iter().map(|f| f.format).min().unwrap();
    let chosen: Vec<DataFile> = found.into_iter().filter(|f| f.format == format).cloned().collect();
    if let Some(missing) = missing_shards(&chosen) {
        return Match::Not(format!("{} is incomplete: {missing}", listing.origin));
    }
    Match::Found(chosen)
}

/// Shards named `…-NNNNN-of-MMMMM…` must all be present.
fn missing_shards(files: &[DataFile]) -> Option<String> {
    let mut groups: BTreeMap<(String, usize), BTreeSet<usize>> = BTreeMap::new();
    for f in files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        let parts: Vec<&str> = name.split(['-', '.']).collect();
        for w in parts.windows(3) {
            if w[1] == "of" {
                if let (Ok(i), Ok(n)) = (w[0].parse::<usize>(), w[2].parse::<usize>()) {
                    let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let prefix = name.split('-').next().unwrap_or("");
                    groups.entry((format!("{dir}/{prefix}"), n)).or_default().insert(i);
                }
            }
        }
    }
    let mut out = Vec::new();
    for ((prefix, n), have) in groups {
        let missing: Vec<String> = (0..n).filter(|i| !have.contains(i)).map(|i| format!("{i:05}")).collect();
        if !missing.is_empty() {
            out.push(format!("{prefix}: shards {} of {n} missing", missing.join(", ")));
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("; "))
    }
}

/// Find the data files of `split` (and `config`) of `source`, with the hub configured from the
/// environment ([`crate::HubOptions::from_env`]).
pub fn find_split(source: &DataSource, split: &str, config: Option<&str>) -> Result<SplitFiles> {
    find_split_in(&source.files_from_env(), split, config)
}

/// Find the data files of `split` (and `config`): in the local directory; for a hub dataset in
/// the cached snapshot first and then, unless offline (or when the cache has the split
/// incompletely), in the hub's listing, downloading the files into the cache.
pub fn find_split_in(files: &DataFiles, split: &str, config: Option<&str>) -> Result<SplitFiles> {
    let source = files.source();
    let missing = |detail: String| Error::MissingSplit {
        split: split.to_string(),
        config: config.map(|c| format!(" (config `{c}`)")).unwrap_or_default(),
        source_desc: source.to_string(),
        detail,
    };
    let resolve = |found: Vec<DataFile>| -> Result<SplitFiles> {
        let first = found[0].clone();
        let paths = found.iter().map(|f| files.get(&f.path)).collect::<Result<Vec<_>>>()?;
        Ok(SplitFiles { split: first.split, config: first.config, format: first.format, paths, members: Vec::new() })
    };
    let open_archive = |rel: String| -> Result<SplitFiles> {
        let path = files.get(&rel)?;
        let members = crate::record::archive_members(&path)?;
        let inner = Listing { files: Vec::new(), origin: format!("archive {rel}") };
        let classified: Vec<DataFile> = members.iter().filter_map(|m| classify(m)).collect();
        let archive_config = classify_archive(&rel);
        // Members may sit under `<config>/`: their own config is ignored inside the archive.
        let flat: Vec<DataFile> = classified.into_iter().map(|f| DataFile { config: None, ..f }).collect();
        match match_files(&flat, split, None, &inner) {
            Match::Found(found) => Ok(SplitFiles {
                split: found[0].split.clone(),
                config: archive_config,
                format: found[0].format,
                paths: vec![path],
                members: found.into_iter().map(|f| f.path).collect(),
            }),
            Match::Not(detail) | Match::Archive(detail) => Err(missing(if flat.is_empty() {
                format!("archive {rel} holds no data files ({} members)", members.len())
            } else {
                detail
            })),
        }
    };
    let local_detail = match files.list_local() {
        Ok(listing) => match match_split(&listing, split, config) {
            Match::Found(found) => return resolve(found),
            Match::Archive(rel) => return open_archive(rel),
            Match::Not(detail) => detail,
        },
        Err(detail) => detail,
    };
    match source {
        DataSource::Local(_) => Err(missing(local_detail)),
        DataSource::Hub { .. } if files.hub().offline => Err(missing(format!(
            "{local_detail}; HF_HUB_OFFLINE is set, so the hub is not asked: set HF_HOME (or HF_HUB_CACHE) to a cache that \
             has the split, unset HF_HUB_OFFLINE to download it, or pass a local directory"
        ))),
        DataSource::Hub { .. } => {
            let listing = files.list_remote()?;
            match match_split(&listing, split, config) {
                Match::Found(found) => resolve(found),
                Match::Archive(rel) => open_archive(rel),
                Match::Not(detail) => Err(missing(detail)),
            }
        }
    }
}
