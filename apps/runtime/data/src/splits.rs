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
//! When the config asked for is `default` and there is no such folder, the repository's only
//! config is used, whatever its folder is named (`uoft-cs/cifar100` keeps its files under
//! `cifar100/`).
//!
//! A split whose shards (`…-NNNNN-of-MMMMM…`) are incomplete, duplicated (two files for one
//! index) or from two shardings is refused, naming the files.
//!
//! Archives `…/<config>.tar.gz` (`.tgz`, `.tar`) hold a config each (M2D2's
//! `<domain>.tar.gz` of `<domain>/{train,valid,test}.txt`): asked for that config, the
//! archive is fetched and exactly its member `<config>/<split>.txt` (or an alias of the split,
//! see [`archive_member`]) is read, streamed out of the archive without unpacking; deeper
//! members (per-subdomain folders) are never read, and an archive of another shape is an
//! error listing its members. A config that does not exist gets the nearest existing names
//! suggested ([`nearest_names`]: other case, the `_l1` form, close spellings).

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
        if let (Some(c), Match::Not(detail)) = (config, &m) {
            let known = config_names(listing);
            if !known.is_empty() && !known.contains(c) {
                let near = nearest_names(c, known.iter().map(String::as_str));
                let hint = if near.is_empty() {
                    format!("; there is no config `{c}`")
                } else {
                    format!(
                        "; there is no config `{c}`: did you mean {}?",
                        near.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or ")
                    )
                };
                return Match::Not(format!("{detail}{hint}"));
            }
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
        // `default` names the only config of a repository that has one, whatever its folder
        // is called (`uoft-cs/cifar100` keeps its files under `cifar100/`).
        let all: BTreeSet<Option<&str>> = files.iter().map(|f| f.config.as_deref()).collect();
        if let (true, [Some(only)]) = (found.is_empty(), all.iter().copied().collect::<Vec<_>>().as_slice()) {
            tracing::info!(split, config = only, "config `default`: using the repository's only config");
            found = files.iter().filter(|f| wanted(f, Some(only))).collect();
        }
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
        return Match::Not(describe_splits(listing));
    }
    // One format: parquet before JSON lines.
    let format = found.iter().map(|f| f.format).min().unwrap();
    let chosen: Vec<DataFile> = found.into_iter().filter(|f| f.format == format).cloned().collect();
    if let Some(bad) = bad_shards(&chosen) {
        let what = if bad.contains("missing") { "is incomplete" } else { "has duplicate shards" };
        return Match::Not(format!("{} {what}: {bad}", listing.origin));
    }
    Match::Found(chosen)
}

/// Shards named `…-NNNNN-of-MMMMM…` must all be present, each once, and a split's files in one
/// folder must come from one sharding (`train-00000-of-00002` beside `train-00000-of-00003`
/// are two uploads of the same split): a missing shard would silently drop rows, a duplicate
/// one (two files for one index, which has happened in hub repositories' histories) would
/// silently read rows twice.
fn bad_shards(files: &[DataFile]) -> Option<String> {
    // (folder/prefix) → shard count → index → files
    let mut groups: BTreeMap<String, BTreeMap<usize, BTreeMap<usize, Vec<&str>>>> = BTreeMap::new();
    for f in files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        let parts: Vec<&str> = name.split(['-', '.']).collect();
        if let Some((i, n)) = parts.windows(3).find_map(|w| match (w[1] == "of", w[0].parse::<usize>(), w[2].parse::<usize>()) {
            (true, Ok(i), Ok(n)) => Some((i, n)),
            _ => None,
        }) {
            let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let prefix = name.split('-').next().unwrap_or("");
            groups.entry(format!("{dir}/{prefix}")).or_default().entry(n).or_default().entry(i).or_default().push(&f.path);
        }
    }
    let mut out = Vec::new();
    for (prefix, by_count) in groups {
        if by_count.len() > 1 {
            let counts: Vec<String> = by_count.keys().map(|n| format!("of {n}")).collect();
            out.push(format!(
                "{prefix}: files of {} shardings ({}), two copies of the split; keep one sharding and remove the other",
                by_count.len(),
                counts.join(", ")
            ));
            continue;
        }
        for (n, have) in by_count {
            let missing: Vec<String> = (0..n).filter(|i| !have.contains_key(i)).map(|i| format!("{i:05}")).collect();
            if !missing.is_empty() {
                out.push(format!("{prefix}: shards {} of {n} missing", missing.join(", ")));
            }
            for (i, paths) in have.iter().filter(|(_, p)| p.len() > 1) {
                out.push(format!(
                    "{prefix}: shard {i:05} of {n} is there {} times ({}); remove the stale copies",
                    paths.len(),
                    paths.join(", ")
                ));
            }
            if let Some(i) = have.keys().find(|i| **i >= n) {
                out.push(format!("{prefix}: shard {i:05} is beyond its count of {n}"));
            }
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("; "))
    }
}

/// Extensions a split file inside an archive may have, in order of preference.
const ARCHIVE_EXTENSIONS: &[&str] = &["txt", "jsonl", "json", "parquet"];

/// The member of an archive of config `config` that holds `split`: exactly
/// `<config>/<split>.txt` (or `.jsonl`, `.json`, `.parquet`), `<split>` or one of its aliases
/// ([`split_aliases`]). Files deeper in the archive (an M2D2 level-1 archive may also hold
/// per-level-2 folders `<config>/<sub>/train.txt`, the same text again) are never read. `Err`
/// lists the archive's members.
pub fn archive_member(members: &[String], config: &str, split: &str) -> std::result::Result<String, String> {
    let names: Vec<&str> = std::iter::once(split).chain(split_aliases(split).iter().copied().filter(|a| *a != split)).collect();
    for name in &names {
        for ext in ARCHIVE_EXTENSIONS {
            let want = format!("{config}/{name}.{ext}");
            if members.contains(&want) {
                return Ok(want);
            }
        }
    }
    let mut shown: Vec<&str> = members.iter().map(String::as_str).take(40).collect();
    if members.len() > shown.len() {
        shown.push("…");
    }
    Err(format!(
        "no member `{config}/{split}.txt`{}: the archive is expected to hold `<config>/<split>.txt`; its {} members are: {}",
        if names.len() > 1 {
            format!(" (nor {})", names[1..].iter().map(|n| format!("`{config}/{n}.txt`")).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        },
        members.len(),
        if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
    ))
}

/// The names among `known` nearest to `asked`, for "did you mean" hints: the same name in
/// another case, its `_l1` form (M2D2's S2ORC level-1 domains: `math` → `math_l1`), names
/// that start with it, and names within two edits (case-insensitive).
pub fn nearest_names<'a>(asked: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let a = asked.to_lowercase();
    let mut scored: Vec<(usize, String)> = Vec::new();
    for k in known {
        let l = k.to_lowercase();
        let score = if l == a {
            0
        } else if l == format!("{a}_l1") || l.strip_suffix("_l1") == Some(a.as_str()) {
            1
        } else if l.starts_with(&a) || (a.starts_with(&l) && l.len() >= 3) {
            3
        } else {
            match edit_distance(&a, &l) {
                d @ 1..=2 => 1 + d,
                _ => continue,
            }
        };
        if !scored.iter().any(|(_, n)| n == k) {
            scored.push((score, k.to_string()));
        }
    }
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + (ca != *cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Every config a listing names: config folders of its data files and its archives.
fn config_names(listing: &Listing) -> BTreeSet<String> {
    data_files(listing).into_iter().filter_map(|f| f.config).chain(archives(listing).into_iter().map(|(c, _)| c)).collect()
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
        let archive_config = classify_archive(&rel).unwrap_or_default();
        match archive_member(&members, &archive_config, split) {
            Ok(member) => {
                let format = classify(&member).map(|f| f.format).unwrap_or(Format::Text);
                Ok(SplitFiles { split: split.to_string(), config: Some(archive_config), format, paths: vec![path], members: vec![member] })
            }
            Err(detail) => Err(missing(format!("archive {rel}: {detail}"))),
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
