//! The on-disk token cache of `tram lm`: each split is tokenised once, in a streaming pass on
//! all cores, into a memory-mapped file of `u16` (vocabularies up to 65,536) or `u32` tokens
//! that every row and seed of a run (and later runs) read from.
//!
//! An entry is keyed by a 128-bit XXH3 hash of the protocol, the block size, the text column, the
//! document limit, the tokenizer (its file's hash) and the text (the split's files' bytes and
//! archive members): any change gives a new key, and the entries of the same split under an
//! older key are removed when the new one is built. An entry is written to a temporary file
//! and renamed into place (a crash never leaves a half-written entry under its final name);
//! its header records its key, sizes and a CRC-32 of the tokens, checked on every open: a
//! truncated, corrupt or mislabelled entry is reported and rebuilt, never used.
//!
//! File layout (little-endian): a 128-byte header — magic `TRAMTOK\x01`, token width (2 or 4),
//! the key (16 bytes, then 16 zero bytes), tokens, block length, block stride, blocks, documents, empty
//! documents skipped, bytes of invalid UTF-8 replaced, CRC-32 of the tokens, CRC-32 of the
//! header — then the tokens. Block `k` is `tokens[k·stride .. k·stride + block_len]`.

use crate::error::{Error, Result};
use crate::lm::{eos_id, Protocol};
use crate::record::{read_split_files, Field};
use crate::skips::Skips;
use crate::splits::{Format, SplitFiles};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use twox_hash::XxHash3_128;

const MAGIC: &[u8; 8] = b"TRAMTOK\x01";
const HEADER: usize = 128;
/// Examples per `Dataset.map(batched=True)` call in `run_clm.py` (the `datasets` default):
/// `group_texts` concatenates this many lines and drops the remainder of each group.
pub const RUN_CLM_MAP_BATCH: usize = 1000;
/// File-name extension of the entries.
pub const EXTENSION: &str = "tok";

static BUILDS: OnceLock<Mutex<HashMap<PathBuf, usize>>> = OnceLock::new();
static TOKENIZE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many entries this process built (tokenised) under `dir`: a split read by several rows
/// and seeds is built once.
pub fn builds_under(dir: &Path) -> usize {
    let map = BUILDS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.iter().filter(|(p, _)| p.starts_with(dir)).map(|(_, n)| n).sum()
}

/// Documents this process has passed to a tokenizer for the cache (all entries).
pub fn tokenize_calls() -> usize {
    TOKENIZE_CALLS.load(Ordering::Relaxed)
}

/// What an entry is made from, besides the split's files and the tokenizer.
#[derive(Clone, Debug)]
pub struct CacheSpec {
    /// The cache directory (created when missing).
    pub dir: PathBuf,
    /// Readable part of the file name (e.g. `math_l1-train`); sanitised.
    pub label: String,
    /// How documents become blocks.
    pub protocol: Protocol,
    /// Tokens predicted per block (`lm.block_size`).
    pub block_size: usize,
    /// The text column (for parquet / JSON lines; `.txt` lines are the text).
    pub column: String,
    /// Only the first this many documents (lines of a `.txt`, rows otherwise).
    pub limit: Option<usize>,
    /// Hex hash of the tokenizer (e.g. [`hash_file`] of its `tokenizer.json`).
    pub tokenizer_hash: String,
}

/// A memory-mapped cache entry: the token blocks of one split.
pub struct TokenCache {
    path: PathBuf,
    map: memmap2::Mmap,
    width: usize,
    tokens: usize,
    block_len: usize,
    stride: usize,
    blocks: usize,
    /// Documents read (after the limit).
    pub documents: usize,
    /// Empty documents skipped and invalid UTF-8 bytes replaced.
    pub skips: Skips,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCache({}, {} tokens, {} blocks)", self.path.display(), self.tokens, self.blocks)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Header {
    width: u64,
    key: [u8; 16],
    tokens: u64,
    block_len: u64,
    stride: u64,
    blocks: u64,
    documents: u64,
    empty: u64,
    invalid_utf8: u64,
    crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.width.to_le_bytes());
        h[16..32].copy_from_slice(&self.key);
        for (i, v) in
            [self.tokens, self.block_len, self.stride, self.blocks, self.documents, self.empty, self.invalid_utf8].iter().enumerate()
        {
            h[48 + 8 * i..56 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        h[104..108].copy_from_slice(&self.crc.to_le_bytes());
        let own = crc32fast::hash(&h[..108]);
        h[108..112].copy_from_slice(&own.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> std::result::Result<Header, String> {
        if h.len() < HEADER {
            return Err(format!("{} bytes, shorter than the {HEADER}-byte header", h.len()));
        }
        if &h[..8] != MAGIC {
            return Err("not a tram token cache file of this version (bad magic)".into());
        }
        let u = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let own = u32::from_le_bytes(h[108..112].try_into().unwrap());
        if crc32fast::hash(&h[..108]) != own {
            return Err("header checksum mismatch".into());
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&h[16..32]);
        Ok(Header {
            width: u(8),
            key,
            tokens: u(48),
            block_len: u(56),
            stride: u(64),
            blocks: u(72),
            documents: u(80),
            empty: u(88),
            invalid_utf8: u(96),
            crc: u32::from_le_bytes(h[104..108].try_into().unwrap()),
        })
    }
}

/// Hex 128-bit XXH3 hash of a file's bytes, read in a streaming pass.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::io(format!("opening {} to hash it", path.display())))?;
    let mut h = XxHash3_128::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    Ok(hex(&h.finish_128().to_le_bytes()))
}

/// [`hash_file`], memoised in this process by path, size and modification time (every row of
/// a run looks the same files up).
fn hash_file_memo(path: &Path) -> Result<String> {
    type FileId = (PathBuf, u64, Option<std::time::SystemTime>);
    static MEMO: OnceLock<Mutex<HashMap<FileId, String>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(Error::io(format!("reading the metadata of {}", path.display())))?;
    let id = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(h) = MEMO.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(h.clone());
    }
    let h = hash_file(path)?;
    MEMO.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).insert(id, h.clone());
    Ok(h)
}

/// Hex 128-bit XXH3 hash of a tokenizer's JSON serialisation (for tokenizers not read from a
/// file).
pub fn hash_tokenizer(tokenizer: &Tokenizer) -> Result<String> {
    let json = tokenizer.to_string(false).map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(hex(&XxHash3_128::oneshot(json.as_bytes()).to_le_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_of(files: &SplitFiles, spec: &CacheSpec) -> Result<[u8; 16]> {
    let mut h = XxHash3_128::new();
    h.write(b"tram-token-cache/1\0");
    h.write(
        format!("{}\0{}\0{}\0{:?}\0{}\0{}\0", spec.protocol, spec.block_size, spec.column, spec.limit, spec.tokenizer_hash, files.format)
            .as_bytes(),
    );
    for p in &files.paths {
        h.write(hash_file_memo(p)?.as_bytes());
        h.write(b"\0");
    }
    for m in &files.members {
        h.write(m.as_bytes());
        h.write(b"\0");
    }
    Ok(h.finish_128().to_le_bytes())
}

fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

impl TokenCache {
    /// The entry for `files` under `spec`: opened when present and valid, otherwise built
    /// (tokenised in one streaming pass) and opened. Returns the entry and whether it was
    /// built now. A corrupt or mislabelled entry is reported and rebuilt.
    pub fn open_or_build(files: &SplitFiles, tokenizer: &Tokenizer, spec: &CacheSpec) -> Result<(TokenCache, bool)> {
        if spec.block_size < spec.protocol.min_block_size() {
            return Err(Error::Invalid(format!(
                "block size {} is too small for the `{}` protocol (at least {})",
                spec.block_size,
                spec.protocol,
                spec.protocol.min_block_size()
            )));
        }
        std::fs::create_dir_all(&spec.dir).map_err(Error::io(format!("creating the token cache directory {}", spec.dir.display())))?;
        let key = key_of(files, spec)?;
        let stem = format!("{}.{}", sanitize(&spec.label), spec.protocol);
        let path = spec.dir.join(format!("{stem}.{}.{EXTENSION}", &hex(&key)[..16]));
        if path.exists() {
            match Self::open(&path, &key) {
                Ok(c) => {
                    tracing::info!(path = %path.display(), tokens = c.tokens, blocks = c.blocks, "token cache entry reused");
                    return Ok((c, false));
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "token cache entry is unusable: rebuilding it");
                    std::fs::remove_file(&path).map_err(Error::io(format!("removing the bad token cache entry {}", path.display())))?;
                }
            }
        }
        // Entries of the same split under another key (older text, tokenizer or settings).
        if let Ok(entries) = std::fs::read_dir(&spec.dir) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                let stale = name.strip_prefix(&format!("{stem}.")).and_then(|rest| rest.strip_suffix(&format!(".{EXTENSION}")));
                if stale.is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit())) && e.path() != path {
                    tracing::info!(path = %e.path().display(), "removing a stale token cache entry (its text, tokenizer or settings changed)");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Unique per writer: the ranks of an in-process data-parallel job (and a test
        // binary's threads) may build the same entry at once; the last rename wins.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = spec.dir.join(format!(".{stem}.{}.{EXTENSION}.tmp-{}-{writer}", &hex(&key)[..16], std::process::id()));
        let built = build(files, tokenizer, spec, key, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(Error::io(format!("renaming {} to {}", tmp.display(), path.display()))));
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Ok(d) = std::fs::File::open(&spec.dir) {
            let _ = d.sync_all();
        }
        BUILDS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.clone())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let c =
            Self::open(&path, &key).map_err(|why| Error::corrupt(&path, format!("token cache entry just written is unreadable: {why}")))?;
        Ok((c, true))
    }

    /// Open and check an entry: magic, header checksum, key, sizes and the tokens' CRC-32.
    fn open(path: &Path, key: &[u8; 16]) -> std::result::Result<TokenCache, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: entries are written under a temporary name and renamed into place, never
        // modified afterwards; a file replaced by another process is a new inode.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let h = Header::decode(&map)?;
        if &h.key != key {
            return Err("its key does not match its name (stale or mislabelled)".into());
        }
        if h.width != 2 && h.width != 4 {
            return Err(format!("token width {} (expected 2 or 4)", h.width));
        }
        let want = HEADER as u64 + h.tokens * h.width;
        if map.len() as u64 != want {
            return Err(format!("{} bytes, the header says {want} (truncated or appended to)", map.len()));
        }
        if h.blocks > 0 && (h.blocks - 1) * h.stride + h.block_len > h.tokens {
            return Err(format!("{} blocks of {} tokens (stride {}) do not fit in {} tokens", h.blocks, h.block_len, h.stride, h.tokens));
        }
        // The checksum is computed by reading the file, not through the map, so that checking
        // a large entry does not leave all of it resident in this process.
        let mut crc = crc32fast::Hasher::new();
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader.seek(SeekFrom::Start(HEADER as u64)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
        }
        if crc.finalize() != h.crc {
            return Err("token checksum mismatch (corrupt)".into());
        }
        Ok(TokenCache {
            path: path.to_path_buf(),
            map,
            width: h.width as usize,
            tokens: h.tokens as usize,
            block_len: h.block_len as usize,
            stride: h.stride as usize,
            blocks: h.blocks as usize,
            documents: h.documents as usize,
            skips: Skips { empty: h.empty as usize, invalid_utf8_bytes: h.invalid_utf8 as usize, ..Skips::default() },
        })
    }

    /// The entry's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks
    }
    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }
    /// Tokens stored.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Tokens per block (inputs and the shifted targets are cut from it by [`crate::lm::batch`]).
    pub fn block_len(&self) -> usize {
        self.block_len
    }
    /// The token at `i` of the stored stream.
    fn token(&self, i: usize) -> u32 {
        let o = HEADER + i * self.width;
        if self.width == 2 {
            u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32
        } else {
            u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap())
        }
    }
    /// Block `k` (panics when `k >= len()`).
    pub fn block(&self, k: usize) -> Vec<u32> {
        assert!(k < self.blocks, "block {k} of {}", self.blocks);
        let s = k * self.stride;
        (s..s + self.block_len).map(|i| self.token(i)).collect()
    }
    /// Every block, in order (small splits, tests).
    pub fn all_blocks(&self) -> Vec<Vec<u32>> {
        (0..self.blocks).map(|k| self.block(k)).collect()
    }
}

/// Documents of a split, streamed: `.txt` lines (as the protocol reads them) or the text
/// column's values. Calls `f` with each, up to `limit`; returns the invalid UTF-8 bytes
/// replaced by U+FFFD.
fn for_each_document(
    files: &SplitFiles,
    protocol: Protocol,
    column: &str,
    limit: Option<usize>,
    f: &mut dyn FnMut(String) -> Result<()>,
) -> Result<usize> {
    let mut replaced = 0usize;
    let mut left = limit.unwrap_or(usize::MAX);
    let mut emit = |doc: String, f: &mut dyn FnMut(String) -> Result<()>| -> Result<bool> {
        if left == 0 {
            return Ok(false);
        }
        left -= 1;
        f(doc)?;
        Ok(left > 0)
    };
    let mut units: Vec<(PathBuf, Option<String>)> = Vec::new();
    if files.members.is_empty() {
        units.extend(files.paths.iter().map(|p| (p.clone(), None)));
    } else {
        let archive = files.paths.first().ok_or_else(|| Error::Invalid("archive members without an archive".into()))?;
        units.extend(files.members.iter().map(|m| (archive.clone(), Some(m.clone()))));
    }
    for (path, member) in units {
        if files.format == Format::Text {
            let mut go =
                |reader: &mut dyn BufRead, shown: &Path, replaced: &mut usize, f: &mut dyn FnMut(String) -> Result<()>| -> Result<bool> {
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        let n = reader.read_until(b'\n', &mut buf).map_err(Error::io(format!("reading {}", shown.display())))?;
                        if n == 0 {
                            return Ok(true);
                        }
                        for doc in text_line_documents(&buf, protocol, replaced) {
                            if !emit(doc, f)? {
                                return Ok(false);
                            }
                        }
                    }
                };
            let more = match &member {
                None => {
                    let file = std::fs::File::open(&path).map_err(Error::io(format!("opening {}", path.display())))?;
                    go(&mut BufReader::with_capacity(1 << 20, file), &path, &mut replaced, f)?
                }
                Some(m) => with_member(&path, m, &mut |r| go(r, &path.join(m), &mut replaced, f))?,
            };
            if !more {
                break;
            }
        } else {
            // Parquet / JSON lines: one file (or member) in memory at a time.
            let rows = match &member {
                None => read_split_files(&SplitFiles { paths: vec![path.clone()], members: Vec::new(), ..files.clone() }, Some(&[column]))?,
                Some(m) => crate::record::read_archive_members(&path, std::slice::from_ref(m), files.format, Some(&[column]))?,
            };
            let mut more = true;
            for (i, r) in rows.into_iter().enumerate() {
                let doc = match r.get(column) {
                    Some(Field::Str(s)) => s.clone(),
                    Some(Field::Bytes(b)) => {
                        replaced += crate::lm::invalid_utf8_bytes(b);
                        String::from_utf8_lossy(b).trim().to_string()
                    }
                    Some(Field::Null) | None => String::new(),
                    Some(other) => {
                        return Err(Error::BadField {
                            column: column.to_string(),
                            context: format!(" in row {i} of {}", path.display()),
                            expected: "text".into(),
                            found: format!("{} ({other})", other.kind()),
                        })
                    }
                };
                if !emit(doc, f)? {
                    more = false;
                    break;
                }
            }
            if !more {
                break;
            }
        }
    }
    Ok(replaced)
}

/// The documents of one raw `.txt` line (with its `\n`, if any). `lines`: the line stripped
/// of surrounding whitespace (as M2D2's loading script reads it). `run_clm`: as `datasets`'
/// text builder with `keep_linebreaks=True` reads it — universal newlines (`\r\n` and a lone
/// `\r` end a line too), the line break kept.
fn text_line_documents(raw: &[u8], protocol: Protocol, replaced: &mut usize) -> Vec<String> {
    let text = match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => {
            *replaced += crate::lm::invalid_utf8_bytes(raw);
            String::from_utf8_lossy(raw).into_owned()
        }
    };
    match protocol {
        Protocol::Lines => vec![text.trim().to_string()],
        Protocol::RunClm => {
            if !text.contains('\r') {
                return vec![text];
            }
            let text = text.replace("\r\n", "\n");
            let pieces: Vec<&str> = text.split('\r').collect();
            let last = pieces.len() - 1;
            pieces
                .iter()
                .enumerate()
                .filter(|(i, p)| *i < last || !p.is_empty())
                .map(|(i, p)| if i < last { format!("{p}\n") } else { p.to_string() })
                .collect()
        }
    }
}

/// Stream the archive member `member` of `archive` to `f`.
fn with_member(archive: &Path, member: &str, f: &mut dyn FnMut(&mut dyn BufRead) -> Result<bool>) -> Result<bool> {
    let file = std::fs::File::open(archive).map_err(Error::io(format!("opening {}", archive.display())))?;
    let name = archive.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut ar = tar::Archive::new(reader);
    let bad = |e: std::io::Error| Error::corrupt(archive, format!("not a readable tar archive: {e}"));
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let is = entry.path().ok().and_then(|p| p.to_str().map(|s| s.trim_start_matches("./") == member)).unwrap_or(false);
        if is && entry.header().entry_type().is_file() {
            return f(&mut BufReader::with_capacity(1 << 20, entry));
        }
    }
    Err(Error::corrupt(archive, format!("archive member `{member}` is missing")))
}

/// A group of documents tokenised together: `run_clm` groups of 1000 documents are cut into
/// blocks separately (the remainder of each dropped); `lines` groups are only a unit of work.
fn tokenize_group(tok: &Tokenizer, protocol: Protocol, block_size: usize, eos: Option<u32>, docs: &[String]) -> Result<(Vec<u32>, usize)> {
    let mut ids = Vec::new();
    let mut empty = 0;
    for d in docs {
        TOKENIZE_CALLS.fetch_add(1, Ordering::Relaxed);
        match protocol {
            Protocol::RunClm => {
                let enc = tok.encode(d.as_str(), true).map_err(|e| Error::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Protocol::Lines => {
                if d.trim().is_empty() {
                    empty += 1;
                    continue;
                }
                let enc = tok.encode(d.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                if enc.get_ids().is_empty() {
                    empty += 1;
                    continue;
                }
                ids.extend_from_slice(enc.get_ids());
                ids.extend(eos);
            }
        }
    }
    if protocol == Protocol::RunClm {
        ids.truncate(ids.len() / block_size * block_size);
    }
    Ok((ids, empty))
}

fn build(files: &SplitFiles, tokenizer: &Tokenizer, spec: &CacheSpec, key: [u8; 16], tmp: &Path) -> Result<()> {
    let mut tok = tokenizer.clone();
    tok.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    let eos = match spec.protocol {
        Protocol::Lines => {
            let e = eos_id(tokenizer);
            if e.is_none() {
                tracing::warn!(
                    "the tokenizer has no end-of-text token ({}): documents are joined without a separator",
                    crate::lm::EOS_TOKENS.join(", ")
                );
            }
            e
        }
        Protocol::RunClm => None,
    };
    let width: u64 = if tokenizer.get_vocab_size(true) <= 1 << 16 { 2 } else { 4 };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let group = RUN_CLM_MAP_BATCH;
    let file = std::fs::File::create(tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&[0u8; HEADER]).map_err(Error::io(format!("writing {}", tmp.display())))?;
    let mut crc = crc32fast::Hasher::new();
    let (mut tokens, mut empty) = (0u64, 0u64);
    // Read by the progress report inside `flush`, counted by the document callback.
    let (documents, bytes) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut pending: Vec<Vec<String>> = vec![Vec::with_capacity(group)];
    let mut pending_bytes = 0usize;
    // At most this much text is held at once (in groups awaiting the workers).
    let max_pending = 16 << 20;
    let tok = &tok;
    let mut flush = |pending: &mut Vec<Vec<String>>, out: &mut BufWriter<std::fs::File>, final_: bool| -> Result<()> {
        let groups: Vec<Vec<String>> = std::mem::take(pending);
        let per = groups.len().div_ceil(threads).max(1);
        // Per worker: each group's tokens and its empty documents.
        type Part = Result<Vec<(Vec<u32>, usize)>>;
        let results: Vec<Part> = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        part.iter().map(|g| tokenize_group(tok, spec.protocol, spec.block_size, eos, g)).collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Tokenizer("a tokenizer worker panicked".into())))).collect()
        });
        let mut bytes_out = Vec::new();
        for part in results {
            for (ids, e) in part? {
                empty += e as u64;
                tokens += ids.len() as u64;
                bytes_out.clear();
                for &t in &ids {
                    if width == 2 && t > u16::MAX as u32 {
                        return Err(Error::Tokenizer(format!(
                            "token id {t} is beyond the tokenizer's vocabulary size {}: the tokenizer file is inconsistent",
                            tok.get_vocab_size(true)
                        )));
                    }
                    if width == 2 {
                        bytes_out.extend_from_slice(&(t as u16).to_le_bytes());
                    } else {
                        bytes_out.extend_from_slice(&t.to_le_bytes());
                    }
                }
                crc.update(&bytes_out);
                out.write_all(&bytes_out).map_err(Error::io(format!("writing {}", tmp.display())))?;
            }
        }
        if !final_ && last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            tracing::info!(
                entry = %spec.label,
                documents = documents.get(),
                text_mib = bytes.get() / (1 << 20),
                tokens,
                tokens_per_s = (tokens as f64 / secs) as u64,
                "tokenising into the token cache"
            );
        }
        pending.push(Vec::with_capacity(group));
        Ok(())
    };
    let replaced = for_each_document(files, spec.protocol, &spec.column, spec.limit, &mut |doc: String| {
        documents.set(documents.get() + 1);
        bytes.set(bytes.get() + doc.len() as u64);
        pending_bytes += doc.len();
        let last = pending.last_mut().expect("a group is always open");
        last.push(doc);
        if last.len() == group {
            if pending_bytes >= max_pending || pending.len() >= 8 * threads {
                pending_bytes = 0;
                flush(&mut pending, &mut out, false)?;
            } else {
                pending.push(Vec::with_capacity(group));
            }
        }
        Ok(())
    })?;
    if pending.iter().any(|g| !g.is_empty()) {
        flush(&mut pending, &mut out, true)?;
    }
    let (block_len, stride, blocks) = match spec.protocol {
        Protocol::RunClm => (spec.block_size as u64, spec.block_size as u64, tokens / spec.block_size as u64),
        Protocol::Lines => (spec.block_size as u64 + 1, spec.block_size as u64, tokens.saturating_sub(1) / spec.block_size as u64),
    };
    let documents = documents.get();
    let header =
        Header { width, key, tokens, block_len, stride, blocks, documents, empty, invalid_utf8: replaced as u64, crc: crc.finalize() };
    let mut file = out.into_inner().map_err(|e| Error::io(format!("writing {}", tmp.display()))(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(Error::io(format!("writing {}", tmp.display())))?;
    file.write_all(&header.encode()).map_err(Error::io(format!("writing {}", tmp.display())))?;
    file.sync_all().map_err(Error::io(format!("syncing {}", tmp.display())))?;
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        entry = %spec.label,
        documents,
        tokens,
        blocks,
        mib = (HEADER as u64 + tokens * width) / (1 << 20),
        seconds = format!("{secs:.1}"),
        "token cache entry built"
    );
    Ok(())
}
