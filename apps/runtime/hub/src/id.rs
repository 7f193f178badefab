//! Hub ids: a source string parsed as `org/name[@revision]` or a local directory, with the
//! rules shared by model sources ([`crate::ModelSource`]) and dataset sources
//! (`tram_data::DataSource`).

use crate::source::DEFAULT_REVISION;
use std::path::{Path, PathBuf};

/// What a source string names on the hub: a model or a dataset repository. The two differ in
/// the words of their messages and in revisions: a dataset's may be a ref with `/` in it
/// (`refs/convert/parquet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepoKind {
    /// A model repository ([`crate::ModelSource`]).
    Model,
    /// A dataset repository (`tram_data::DataSource`).
    Dataset,
}

/// A source string parsed by [`parse_source`]: a hub repository at a revision, or an
/// existing local directory. [`crate::ModelSource`] and `tram_data::DataSource` are built from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParsedSource {
    /// A hub repository.
    Hub {
        /// `org/name` (or a legacy single-segment name).
        repo_id: String,
        /// A branch, tag or commit hash (for a dataset also a ref such as `refs/convert/parquet`).
        revision: String,
    },
    /// An existing local directory.
    Local(PathBuf),
}

/// Parse the source of a model or dataset (`kind`): a path to an existing directory is
/// [`ParsedSource::Local`]; otherwise `input` must be a hub id `org/name` or
/// `org/name@revision` (revision defaults to `main`). The error is the reason `input` is
/// neither, with what to write instead.
///
/// ```
/// use tram_hub::{parse_source, ParsedSource, RepoKind};
/// let s = parse_source("openai-community/gpt2@main", RepoKind::Model).unwrap();
/// assert_eq!(s, ParsedSource::Hub { repo_id: "openai-community/gpt2".into(), revision: "main".into() });
/// assert!(parse_source("org/data@refs/convert/parquet", RepoKind::Dataset).is_ok());
/// assert!(parse_source("org/data@refs/../main", RepoKind::Dataset).is_err()); // no `..` in a dataset ref
/// let why = parse_source("org/a/b", RepoKind::Model).unwrap_err();
/// assert!(why.contains("is not a hub model id (more than one `/`)"), "{why}");
/// ```
pub fn parse_source(input: &str, kind: RepoKind) -> std::result::Result<ParsedSource, String> {
    let (id_word, holds) = match kind {
        RepoKind::Model => ("hub id", "contains config.json and the weights"),
        RepoKind::Dataset => ("hub dataset id", "holds the data files"),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(format!("empty; give a {id_word} `org/name[@revision]` or a local directory"));
    }
    let path = Path::new(s);
    if path.is_dir() {
        return Ok(ParsedSource::Local(path.to_path_buf()));
    }
    if path.exists() {
        return Err(format!("{} is a file, not a directory; pass the directory that {holds}", path.display()));
    }
    let path_like = s.starts_with(['/', '.', '~']) || s.ends_with('/') || s.contains('\\') || s.contains("//");
    if path_like {
        return Err(format!("no such directory {} (and it is not a {id_word} `org/name[@revision]`)", path.display()));
    }
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (s, DEFAULT_REVISION),
    };
    let bad_ref = match kind {
        RepoKind::Model => false,
        RepoKind::Dataset => revision.split('/').any(|c| c.is_empty() || c == ".."),
    };
    if revision.is_empty() || revision.contains(char::is_whitespace) || revision.contains('@') || bad_ref {
        return Err(format!("bad revision `{revision}`; expected `org/name@<branch, tag or commit>`"));
    }
    if let Err(why) = check_repo_id(id) {
        let noun = match kind {
            RepoKind::Model => "hub model id",
            RepoKind::Dataset => "hub dataset id",
        };
        return Err(format!(
            "not an existing directory, and `{id}` is not a {noun} ({why}); expected `org/name` or \
             `org/name@revision`, or a path to a local directory"
        ));
    }
    Ok(ParsedSource::Hub { repo_id: id.to_string(), revision: revision.to_string() })
}

/// Check a hub repository id (`org/name` or `name`): the reason it is invalid, if it is.
/// Shared by model and dataset sources.
pub fn check_repo_id(id: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err("more than one `/`".into());
    }
    for p in &parts {
        if p.is_empty() {
            return Err("empty name part".into());
        }
        if p.len() > 96 {
            return Err("name part longer than 96 characters".into());
        }
        if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(format!("character `{c}` is not allowed; use letters, digits, `-`, `_`, `.`"));
        }
        if p.contains("--") || p.contains("..") || p.starts_with(['-', '.']) || p.ends_with(['-', '.']) {
            return Err("`--` and `..` are not allowed, nor `-` / `.` at either end".into());
        }
    }
    Ok(())
}
