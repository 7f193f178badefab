//! Where a model comes from ([`ModelSource`]), how the hub is configured ([`HubOptions`]) and how
//! a file of a model is found ([`ModelFiles`]): in a local directory, in the Hugging Face cache,
//! or downloaded from the hub through `hf-hub`.

use crate::error::{Error, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use crate::id::{parse_source, ParsedSource, RepoKind};

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";
/// The hub used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A model: a repository on the Hugging Face hub at a revision, or a local directory holding
/// the files in hub layout (`config.json`, `model.safetensors` or
/// `model.safetensors.index.json` + shards, `tokenizer.json`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A hub repository.
    Hub {
        /// `org/name` (or a legacy single-segment name such as `gpt2`).
        repo_id: String,
        /// A branch, tag or commit hash.
        revision: String,
    },
    /// A local directory.
    Local(PathBuf),
}

impl ModelSource {
    /// The hub repository `repo_id` at revision `main`.
    pub fn hub(repo_id: impl Into<String>) -> Self {
        Self::Hub { repo_id: repo_id.into(), revision: DEFAULT_REVISION.into() }
    }

    /// The hub repository `repo_id` at `revision` (a branch, tag or commit hash).
    pub fn hub_at(repo_id: impl Into<String>, revision: impl Into<String>) -> Self {
        Self::Hub { repo_id: repo_id.into(), revision: revision.into() }
    }

    /// A local directory in hub layout.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self::Local(dir.into())
    }

    /// Parse a source: a path to an existing directory is [`ModelSource::Local`]; otherwise the
    /// string must be a hub id `org/name` or `org/name@revision` (revision defaults to `main`).
    /// The rules are [`parse_source`]'s, shared with dataset sources.
    pub fn parse(input: &str) -> Result<Self> {
        match parse_source(input, RepoKind::Model) {
            Ok(ParsedSource::Hub { repo_id, revision }) => Ok(Self::Hub { repo_id, revision }),
            Ok(ParsedSource::Local(dir)) => Ok(Self::Local(dir)),
            Err(reason) => Err(Error::InvalidSource { input: input.to_string(), reason }),
        }
    }

    /// The files of this model, found through `hub`.
    pub fn files(&self, hub: &HubOptions) -> ModelFiles {
        ModelFiles::new(self.clone(), hub.clone())
    }

    /// The files of this model, with the hub configured from the environment
    /// ([`HubOptions::from_env`]).
    pub fn files_from_env(&self) -> ModelFiles {
        ModelFiles::new(self.clone(), HubOptions::from_env())
    }
}

impl FromStr for ModelSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hub { repo_id, revision } => write!(f, "{repo_id}@{revision}"),
            Self::Local(dir) => write!(f, "local directory {}", dir.display()),
        }
    }
}

/// How the hub is reached: the cache directory, offline mode, endpoint and token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache (`…/hub`, holding `models--org--name/`).
    pub cache_dir: PathBuf,
    /// Resolve only from the cache, never touch the network.
    pub offline: bool,
    /// The hub URL (downloads only).
    pub endpoint: String,
    /// Access token for private or gated repositories (downloads only).
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// From the standard environment variables, as `huggingface_hub` reads them:
    /// cache `HF_HUB_CACHE` (or legacy `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`; endpoint `HF_ENDPOINT`; token `HF_TOKEN`
    /// (or `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".cache"));
            cache.join("huggingface")
        });
        let cache_dir =
            var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint = var("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Self { cache_dir, offline, endpoint, token, progress: false }
    }

    /// Offline resolution from the cache at `cache_dir` only.
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        Self { cache_dir: cache_dir.into(), offline: true, endpoint: DEFAULT_ENDPOINT.into(), token: None, progress: false }
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// The outcome of looking for one file.
enum Lookup {
    Found(PathBuf),
    /// Definitely absent (not in the directory / the cache in offline mode / 404 on the hub).
    Absent {
        detail: String,
        fix: String,
    },
}

/// The files of one model source: each is looked up in the local directory, or in the cache
/// and then (unless offline) downloaded from the hub into the cache.
pub struct ModelFiles {
    source: ModelSource,
    hub: HubOptions,
    api: OnceLock<std::result::Result<Api, String>>,
}

impl fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFiles").field("source", &self.source).field("hub", &self.hub).finish()
    }
}

impl ModelFiles {
    /// The files of `source`, resolved through `hub`.
    pub fn new(source: ModelSource, hub: HubOptions) -> Self {
        Self { source, hub, api: OnceLock::new() }
    }

    /// The model source.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The hub options.
    pub fn hub(&self) -> &HubOptions {
        &self.hub
    }

    /// The local path of `file` (a name relative to the repository root, such as
    /// `config.json`); downloads it into the cache when needed and allowed. A missing file is
    /// an error naming the file, the source and the fix.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match self.lookup(file)? {
            Lookup::Found(p) => Ok(p),
            Lookup::Absent { detail, fix } => {
                Err(Error::MissingFile { file: file.to_string(), source_desc: self.source.to_string(), detail, fix })
            }
        }
    }

    /// The local path of `file`, or `None` when the source does not have it. Errors only when
    /// the answer cannot be known (hub unreachable with nothing cached, download refused).
    pub fn find(&self, file: &str) -> Result<Option<PathBuf>> {
        Ok(match self.lookup(file)? {
            Lookup::Found(p) => Some(p),
            Lookup::Absent { .. } => None,
        })
    }

    /// Like [`ModelFiles::find`], returning the reason for an absence.
    pub(crate) fn find_or_why(&self, file: &str) -> Result<std::result::Result<PathBuf, String>> {
        Ok(match self.lookup(file)? {
            Lookup::Found(p) => Ok(p),
            Lookup::Absent { detail, .. } => Err(detail),
        })
    }

    fn lookup(&self, file: &str) -> Result<Lookup> {
        if file.is_empty() || file.starts_with('/') || file.split(['/', '\\']).any(|c| c == ".." || c.is_empty()) {
            return Err(Error::InvalidSource {
                input: file.to_string(),
                reason: format!("file name for {} must be a relative path inside the repository", self.source),
            });
        }
        match &self.source {
            ModelSource::Local(dir) => Ok(local_lookup(dir, file)),
            ModelSource::Hub { repo_id, revision } => {
                let cached = cache_lookup(&self.hub.cache_dir, repo_id, revision, file);
                let detail = match cached {
                    Ok(p) => return Ok(Lookup::Found(p)),
                    Err(detail) => detail,
                };
                if self.hub.offline {
                    return Ok(Lookup::Absent {
                        detail,
                        fix: "HF_HUB_OFFLINE is set, so nothing is downloaded: set HF_HOME (or HF_HUB_CACHE) to a cache containing it, \
                              unset HF_HUB_OFFLINE to download it, or pass a local directory"
                            .into(),
                    });
                }
                self.download(repo_id, revision, file, detail)
            }
        }
    }

    fn download(&self, repo_id: &str, revision: &str, file: &str, cache_detail: String) -> Result<Lookup> {
        let source_desc = self.source.to_string();
        let endpoint = self.hub.endpoint.clone();
        let api = self
            .api
            .get_or_init(|| {
                ApiBuilder::from_cache(Cache::new(self.hub.cache_dir.clone()))
                    .with_endpoint(self.hub.endpoint.clone())
                    .with_token(self.hub.token.clone())
                    .with_progress(self.hub.progress)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Download {
                file: file.to_string(),
                source_desc: source_desc.clone(),
                endpoint: endpoint.clone(),
                reason: format!("cannot set up the hub client: {e}"),
            })?;
        let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()));
        tracing::info!(file, source = %source_desc, "downloading from the Hugging Face hub");
        match repo.download(file) {
            Ok(p) => Ok(Lookup::Found(p)),
            Err(e) => {
                let download = |reason: String| Error::Download {
                    file: file.to_string(),
                    source_desc: source_desc.clone(),
                    endpoint: endpoint.clone(),
                    reason,
                };
                match classify(&e) {
                    Failure::NotFound => Ok(Lookup::Absent {
                        detail: format!("the hub has no `{file}` in {repo_id} at revision `{revision}` (HTTP 404); {cache_detail}"),
                        fix: "check the model id, the revision and the file name, or pass a local directory".into(),
                    }),
                    Failure::Unauthorized(code) => Err(download(format!(
                        "HTTP {code}: the repository does not exist, or is private or gated; check the id, and set HF_TOKEN to a \
                         token with access (or log in with `huggingface-cli login`)"
                    ))),
                    Failure::Transport(reason) => Err(Error::HubUnreachable {
                        file: file.to_string(),
                        source_desc,
                        endpoint,
                        cache: self.hub.cache_dir.clone(),
                        reason,
                    }),
                    Failure::Other(reason) => Err(download(reason)),
                }
            }
        }
    }
}

enum Failure {
    NotFound,
    Unauthorized(u16),
    Transport(String),
    Other(String),
}

fn classify(e: &ApiError) -> Failure {
    match e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(404, _) => Failure::NotFound,
            ureq::Error::Status(code @ (401 | 403), _) => Failure::Unauthorized(*code),
            ureq::Error::Status(code, resp) => Failure::Other(format!("HTTP {code} {}", resp.status_text())),
            ureq::Error::Transport(t) => Failure::Transport(t.to_string()),
        },
        ApiError::TooManyRetries(inner) => match classify(inner) {
            Failure::Other(r) => Failure::Other(format!("too many retries: {r}")),
            f => f,
        },
        other => Failure::Other(other.to_string()),
    }
}

fn local_lookup(dir: &Path, file: &str) -> Lookup {
    let path = dir.join(file);
    if path.is_file() {
        return Lookup::Found(path);
    }
    let detail = if !dir.is_dir() {
        format!("the directory {} does not exist", dir.display())
    } else if path.symlink_metadata().is_ok() {
        format!("{} is a dangling link or not a regular file", path.display())
    } else {
        format!("{} does not exist", path.display())
    };
    Lookup::Absent { detail, fix: "copy the file into the directory, or pass a hub id `org/name[@revision]` instead".into() }
}

/// Find `file` of `repo_id@revision` in the hub cache at `cache_dir`: first through
/// `hf_hub::CacheRepo::get` (refs/<revision> → snapshots/<hash>/<file>), then tolerating a
/// trailing newline in the ref and a revision that is itself a commit hash. `Err` says what
/// the cache holds instead.
fn cache_lookup(cache_dir: &Path, repo_id: &str, revision: &str, file: &str) -> std::result::Result<PathBuf, String> {
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let folder = repo.folder_name();
    if let Some(p) = Cache::new(cache_dir.to_path_buf()).repo(repo).get(file) {
        return Ok(p);
    }
    let repo_dir = cache_dir.join(&folder);
    if !repo_dir.is_dir() {
        return Err(format!("the cache at {} has no `{folder}`", cache_dir.display()));
    }
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) if repo_dir.join("snapshots").join(revision).is_dir() => revision.to_string(),
        Err(_) => {
            let refs = list_dir(&repo_dir.join("refs"));
            return Err(format!(
                "revision `{revision}` is not in the cache at {} (cached refs: {})",
                repo_dir.display(),
                if refs.is_empty() { "none".to_string() } else { refs.join(", ") }
            ));
        }
    };
    let path = repo_dir.join("snapshots").join(&commit).join(file);
    if path.is_file() {
        return Ok(path);
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    Err(if !snapshot.is_dir() {
        format!("revision `{revision}` points to commit {commit}, whose snapshot {} is missing", snapshot.display())
    } else if path.symlink_metadata().is_ok() {
        format!("{} is a dangling link (its blob is missing from the cache)", path.display())
    } else {
        format!("the cached snapshot {} (revision `{revision}`) has no `{file}`", snapshot.display())
    })
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    out.sort();
    out
}
