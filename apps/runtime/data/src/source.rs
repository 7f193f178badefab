//! Where a dataset comes from ([`DataSource`]) and how its files are listed and fetched
//! ([`DataFiles`]): a local directory, or a hub dataset repository found in the Hugging Face
//! cache (`datasets--org--name/snapshots/<commit>/…`) or, unless offline, on the hub.

use crate::error::{Error, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
pub use tram_hub::{HubOptions, DEFAULT_REVISION};

/// A dataset: a hub dataset repository at a revision, or a local directory holding parquet or
/// JSON lines files (see [`crate::find_split`] for the layouts understood).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DataSource {
    /// A hub dataset repository (repo type `dataset`).
    Hub {
        /// `org/name` (or a legacy single-segment name such as `imdb`).
        repo_id: String,
        /// A branch, tag, commit hash, or a ref such as `refs/convert/parquet`.
        revision: String,
    },
    /// A local directory.
    Local(PathBuf),
}

impl DataSource {
    /// The hub dataset `repo_id` at revision `main`.
    pub fn hub(repo_id: impl Into<String>) -> Self {
        Self::Hub { repo_id: repo_id.into(), revision: DEFAULT_REVISION.into() }
    }

    /// The hub dataset `repo_id` at `revision`.
    pub fn hub_at(repo_id: impl Into<String>, revision: impl Into<String>) -> Self {
        Self::Hub { repo_id: repo_id.into(), revision: revision.into() }
    }

    /// A local directory.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self::Local(dir.into())
    }

    /// Parse a source: a path to an existing directory is [`DataSource::Local`]; otherwise the
    /// string must be a hub dataset id `org/name` or `org/name@revision` (revision defaults to
    /// `main`; it may contain `/`, as in `refs/convert/parquet`).
    /// The rules are [`tram_hub::parse_source`]'s, shared with model sources.
    pub fn parse(input: &str) -> Result<Self> {
        match tram_hub::parse_source(input, tram_hub::RepoKind::Dataset) {
            Ok(tram_hub::ParsedSource::Hub { repo_id, revision }) => Ok(Self::Hub { repo_id, revision }),
            Ok(tram_hub::ParsedSource::Local(dir)) => Ok(Self::Local(dir)),
            Err(reason) => Err(Error::InvalidSource { input: input.to_string(), reason }),
        }
    }

    /// The files of this dataset, found through `hub`.
    pub fn files(&self, hub: &HubOptions) -> DataFiles {
        DataFiles::new(self.clone(), hub.clone())
    }

    /// The files of this dataset, with the hub configured from the environment
    /// ([`HubOptions::from_env`]: `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, ...).
    pub fn files_from_env(&self) -> DataFiles {
        DataFiles::new(self.clone(), HubOptions::from_env())
    }
}

impl FromStr for DataSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hub { repo_id, revision } => write!(f, "dataset {repo_id}@{revision}"),
            Self::Local(dir) => write!(f, "local directory {}", dir.display()),
        }
    }
}

/// A listing of a dataset's files: relative paths (`/`-separated) inside the repository or
/// directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The files, sorted.
    pub files: Vec<String>,
    /// Where the listing came from (a directory, a cached snapshot, the hub), for messages.
    pub origin: String,
}

/// The files of one dataset source: listed and read from a local directory, or from the hub
/// cache and then (unless offline) from the hub itself.
pub struct DataFiles {
    source: DataSource,
    hub: HubOptions,
    api: OnceLock<std::result::Result<Api, String>>,
}

impl fmt::Debug for DataFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataFiles").field("source", &self.source).field("hub", &self.hub).finish()
    }
}

impl DataFiles {
    /// The files of `source`, resolved through `hub`.
    pub fn new(source: DataSource, hub: HubOptions) -> Self {
        Self { source, hub, api: OnceLock::new() }
    }

    /// The data source.
    pub fn source(&self) -> &DataSource {
        &self.source
    }

    /// The hub options.
    pub fn hub(&self) -> &HubOptions {
        &self.hub
    }

    /// The files available without the network: every file under the local directory, or
    /// in the cached snapshot of the hub revision. `Err` says why there is none (no such
    /// directory, repository or revision not in the cache).
    pub fn list_local(&self) -> std::result::Result<Listing, String> {
        match &self.source {
            DataSource::Local(dir) => {
                if !dir.is_dir() {
                    return Err(format!("the directory {} does not exist", dir.display()));
                }
                Ok(Listing { files: walk(dir), origin: format!("directory {}", dir.display()) })
            }
            DataSource::Hub { repo_id, revision } => {
                let snapshot = cached_snapshot(&self.hub.cache_dir, repo_id, revision)?;
                Ok(Listing { files: walk(&snapshot), origin: format!("cached snapshot {}", snapshot.display()) })
            }
        }
    }

    /// The files of the hub revision, as the hub lists them (needs the network). A local
    /// source lists its directory.
    pub fn list_remote(&self) -> Result<Listing> {
        let (repo_id, revision) = match &self.source {
            DataSource::Local(_) => {
                return self.list_local().map_err(|detail| Error::InvalidSource { input: self.source.to_string(), reason: detail })
            }
            DataSource::Hub { repo_id, revision } => (repo_id, revision),
        };
        if self.hub.offline {
            return Err(self.hub_error("HF_HUB_OFFLINE is set, so the hub is not asked for the file list".into()));
        }
        let api = self.api()?;
        let repo = api.repo(Repo::with_revision(repo_id.clone(), RepoType::Dataset, revision.clone()));
        tracing::info!(source = %self.source, "listing the dataset's files on the Hugging Face hub");
        let info = repo.info().map_err(|e| self.hub_error(describe(&e, "listing the files")))?;
        let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        files.sort();
        Ok(Listing { files, origin: format!("the hub ({}, commit {})", self.hub.endpoint, info.sha) })
    }

    /// The local path of `file` (relative to the repository root): in the directory, in the
    /// cache, or downloaded into the cache when allowed.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        if file.is_empty() || file.starts_with('/') || file.split(['/', '\\']).any(|c| c == ".." || c.is_empty()) {
            return Err(Error::InvalidSource {
                input: file.to_string(),
                reason: format!("file name for {} must be a relative path inside the repository", self.source),
            });
        }
        match &self.source {
            DataSource::Local(dir) => {
                let p = dir.join(file);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::Io {
                        context: format!("reading {}", p.display()),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    })
                }
            }
            DataSource::Hub { repo_id, revision } => {
                if let Ok(snapshot) = cached_snapshot(&self.hub.cache_dir, repo_id, revision) {
                    let p = snapshot.join(file);
                    if p.is_file() {
                        return Ok(p);
                    }
                }
                if self.hub.offline {
                    return Err(self.hub_error(format!(
                        "`{file}` is not in the cache at {} and HF_HUB_OFFLINE is set; set HF_HOME (or HF_HUB_CACHE) to a \
                         cache containing it, unset HF_HUB_OFFLINE to download it, or pass a local directory",
                        self.hub.cache_dir.display()
                    )));
                }
                let api = self.api()?;
                let repo = api.repo(Repo::with_revision(repo_id.clone(), RepoType::Dataset, revision.clone()));
                tracing::info!(file, source = %self.source, "downloading from the Hugging Face hub");
                repo.get(file).map_err(|e| self.hub_error(describe(&e, &format!("downloading `{file}`"))))
            }
        }
    }

    fn api(&self) -> Result<&Api> {
        self.api
            .get_or_init(|| {
                ApiBuilder::from_cache(Cache::new(self.hub.cache_dir.clone()))
                    .with_endpoint(self.hub.endpoint.clone())
                    .with_token(self.hub.token.clone())
                    .with_progress(self.hub.progress)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| self.hub_error(format!("cannot set up the hub client: {e}")))
    }

    fn hub_error(&self, reason: String) -> Error {
        Error::Hub { source_desc: self.source.to_string(), endpoint: self.hub.endpoint.clone(), reason }
    }
}

fn describe(e: &ApiError, what: &str) -> String {
    match e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(404, _) => format!("{what}: HTTP 404: no such dataset, revision or file; check the id and the revision"),
            ureq::Error::Status(code @ (401 | 403), _) => format!(
                "{what}: HTTP {code}: the dataset does not exist, or is private or gated; check the id, and set HF_TOKEN to a \
                 token with access"
            ),
            ureq::Error::Status(code, resp) => format!("{what}: HTTP {code} {}", resp.status_text()),
            ureq::Error::Transport(t) => format!(
                "{what}: cannot reach the hub ({t}); check the network / proxy, or set HF_HOME (or HF_HUB_CACHE) to a cache \
                 containing the dataset and HF_HUB_OFFLINE=1, or pass a local directory"
            ),
        },
        ApiError::TooManyRetries(inner) => describe(inner, &format!("{what} (too many retries)")),
        other => format!("{what}: {other}"),
    }
}

/// The snapshot directory of `repo_id@revision` in the hub cache: `refs/<revision>` names the
/// commit (a trailing newline tolerated), or the revision is itself a cached commit hash.
pub(crate) fn cached_snapshot(cache_dir: &Path, repo_id: &str, revision: &str) -> std::result::Result<PathBuf, String> {
    let folder = Repo::with_revision(repo_id.to_string(), RepoType::Dataset, revision.to_string()).folder_name();
    let repo_dir = cache_dir.join(&folder);
    if !repo_dir.is_dir() {
        return Err(format!("the cache at {} has no `{folder}`", cache_dir.display()));
    }
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) if repo_dir.join("snapshots").join(revision).is_dir() => revision.to_string(),
        Err(_) => {
            let refs = walk(&repo_dir.join("refs"));
            return Err(format!(
                "revision `{revision}` is not in the cache at {} (cached refs: {})",
                repo_dir.display(),
                if refs.is_empty() { "none".to_string() } else { refs.join(", ") }
            ));
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(format!("revision `{revision}` points to commit {commit}, whose snapshot {} is missing", snapshot.display()));
    }
    Ok(snapshot)
}

/// Every regular file (links followed) under `dir`, as sorted `/`-separated relative paths;
/// hidden entries (`.git`, `.cache`, ...) are skipped.
pub(crate) fn walk(dir: &Path) -> Vec<String> {
    fn rec(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) {
        if depth > 8 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = e.path();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            if path.is_dir() {
                rec(&path, &rel, depth + 1, out);
            } else if path.is_file() {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    rec(dir, "", 0, &mut out);
    out.sort();
    out
}
