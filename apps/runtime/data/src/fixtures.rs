//! Tiny datasets and tokenizers for tests (this crate's and the trainer's end-to-end tests):
//! parquet files written from [`Record`]s in hub-cache and local-directory layouts, JSON lines,
//! PNG images made with the `image` crate, and word-level tokenizers with BERT, RoBERTa/XLM-R
//! and GPT-2 style templates. Nothing here touches the network.

use crate::error::{Error, Result};
use crate::record::{Field, Record};
use parquet::basic::{Compression, GzipLevel, LogicalType, Repetition, Type as PhysicalType, ZstdLevel};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Parquet compression codec of written fixtures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// No compression.
    None,
    /// Snappy (pyarrow's and so the hub's default).
    #[default]
    Snappy,
    /// Zstandard.
    Zstd,
    /// Gzip.
    Gzip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Bytes,
    Int,
    Float,
    Bool,
}

fn kind_of(f: &Field, col: &str) -> Result<Option<Kind>> {
    Ok(Some(match f {
        Field::Null => return Ok(None),
        Field::Str(_) => Kind::Str,
        Field::Bytes(_) => Kind::Bytes,
        Field::Int(_) => Kind::Int,
        Field::Float(_) => Kind::Float,
        Field::Bool(_) => Kind::Bool,
        other => {
            return Err(Error::Invalid(format!("fixture parquet writer: column `{col}` holds {}, which it cannot write", other.kind())))
        }
    }))
}

/// A leaf column: top-level name, child name inside a struct, kind.
struct Leaf {
    top: String,
    child: Option<String>,
    kind: Kind,
}

fn leaf_type(name: &str, kind: Kind) -> Result<Type> {
    let (phys, logical) = match kind {
        Kind::Str => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        Kind::Bytes => (PhysicalType::BYTE_ARRAY, None),
        Kind::Int => (PhysicalType::INT64, None),
        Kind::Float => (PhysicalType::DOUBLE, None),
        Kind::Bool => (PhysicalType::BOOLEAN, None),
    };
    Type::primitive_type_builder(name, phys)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()
        .map_err(|e| Error::Invalid(format!("fixture schema: {e}")))
}

/// Write `records` to a parquet file (snappy, one row group). Columns are every key of any
/// record; values may be null, strings, bytes, integers, floats, booleans, or structs of those
/// (a hub image column is a struct `{bytes, path}`). A column's kind comes from its first
/// non-null value (all-null columns are strings).
pub fn write_parquet(path: &Path, records: &[Record]) -> Result<()> {
    write_parquet_with(path, records, Codec::Snappy, usize::MAX)
}

/// [`write_parquet`] with a codec and at most `rows_per_group` rows per row group.
pub fn write_parquet_with(path: &Path, records: &[Record], codec: Codec, rows_per_group: usize) -> Result<()> {
    // Schema: top-level columns in name order; struct children in name order.
    let mut tops: BTreeMap<String, Option<BTreeMap<String, Option<Kind>>>> = BTreeMap::new();
    let mut top_kinds: BTreeMap<String, Option<Kind>> = BTreeMap::new();
    for r in records {
        for (k, v) in r {
            match v {
                Field::Struct(m) => {
                    let children = tops.entry(k.clone()).or_insert_with(|| Some(BTreeMap::new()));
                    let children = children
                        .as_mut()
                        .ok_or_else(|| Error::Invalid(format!("fixture parquet writer: column `{k}` mixes structs and plain values")))?;
                    for (ck, cv) in m {
                        let kind = kind_of(cv, &format!("{k}.{ck}"))?;
                        let e = children.entry(ck.clone()).or_insert(None);
                        if e.is_none() {
                            *e = kind;
                        }
                    }
                }
                other => {
                    if let Some(Some(_)) = tops.get(k) {
                        return Err(Error::Invalid(format!("fixture parquet writer: column `{k}` mixes structs and plain values")));
                    }
                    tops.insert(k.clone(), None);
                    let kind = kind_of(other, k)?;
                    let e = top_kinds.entry(k.clone()).or_insert(None);
                    if e.is_none() {
                        *e = kind;
                    }
                }
            }
        }
    }
    let mut fields = Vec::new();
    let mut leaves = Vec::new();
    for (name, children) in &tops {
        match children {
            None => {
                let kind = top_kinds.get(name).copied().flatten().unwrap_or(Kind::Str);
                fields.push(Arc::new(leaf_type(name, kind)?));
                leaves.push(Leaf { top: name.clone(), child: None, kind });
            }
            Some(children) => {
                let mut cf = Vec::new();
                for (c, k) in children {
                    let kind = k.unwrap_or(Kind::Str);
                    cf.push(Arc::new(leaf_type(c, kind)?));
                    leaves.push(Leaf { top: name.clone(), child: Some(c.clone()), kind });
                }
                fields.push(Arc::new(
                    Type::group_type_builder(name)
                        .with_repetition(Repetition::OPTIONAL)
                        .with_fields(cf)
                        .build()
                        .map_err(|e| Error::Invalid(format!("fixture schema: {e}")))?,
                ));
            }
        }
    }
    let schema = Arc::new(
        Type::group_type_builder("schema").with_fields(fields).build().map_err(|e| Error::Invalid(format!("fixture schema: {e}")))?,
    );
    let compression = match codec {
        Codec::None => Compression::UNCOMPRESSED,
        Codec::Snappy => Compression::SNAPPY,
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Gzip => Compression::GZIP(GzipLevel::default()),
    };
    let props = Arc::new(WriterProperties::builder().set_compression(compression).build());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let file = std::fs::File::create(path).map_err(Error::io(format!("creating {}", path.display())))?;
    let pq = |e: parquet::errors::ParquetError| Error::corrupt(path, format!("writing parquet: {e}"));
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(pq)?;
    let groups: Vec<&[Record]> = if records.is_empty() { vec![records] } else { records.chunks(rows_per_group.max(1)).collect() };
    for group in groups {
        let mut rg = writer.next_row_group().map_err(pq)?;
        for leaf in &leaves {
            let mut col =
                rg.next_column().map_err(pq)?.ok_or_else(|| Error::Invalid("fixture writer: fewer columns than leaves".into()))?;
            let max_def: i16 = if leaf.child.is_some() { 2 } else { 1 };
            let mut defs = Vec::with_capacity(group.len());
            let mut vals: Vec<&Field> = Vec::new();
            for r in group {
                let v = match (&leaf.child, r.get(&leaf.top)) {
                    (None, Some(v)) if !v.is_null() => Some(v),
                    (None, _) => None,
                    (Some(c), Some(Field::Struct(m))) => match m.get(c) {
                        Some(v) if !v.is_null() => Some(v),
                        _ => {
                            defs.push(1);
                            continue;
                        }
                    },
                    (Some(_), _) => None,
                };
                match v {
                    Some(v) => {
                        defs.push(max_def);
                        vals.push(v);
                    }
                    None => defs.push(0),
                }
            }
            let name = match &leaf.child {
                Some(c) => format!("{}.{c}", leaf.top),
                None => leaf.top.clone(),
            };
            let mismatch = |v: &Field| Error::Invalid(format!("fixture parquet writer: column `{name}` mixes kinds ({})", v.kind()));
            match leaf.kind {
                Kind::Str | Kind::Bytes => {
                    let v = vals
                        .iter()
                        .map(|f| match f {
                            Field::Str(s) if leaf.kind == Kind::Str => Ok(ByteArray::from(s.as_bytes().to_vec())),
                            Field::Bytes(b) if leaf.kind == Kind::Bytes => Ok(ByteArray::from(b.clone())),
                            other => Err(mismatch(other)),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    col.typed::<ByteArrayType>().write_batch(&v, Some(&defs), None).map_err(pq)?;
                }
                Kind::Int => {
                    let v =
                        vals.iter().map(|f| if let Field::Int(i) = f { Ok(*i) } else { Err(mismatch(f)) }).collect::<Result<Vec<_>>>()?;
                    col.typed::<Int64Type>().write_batch(&v, Some(&defs), None).map_err(pq)?;
                }
                Kind::Float => {
                    let v =
                        vals.iter().map(|f| if let Field::Float(x) = f { Ok(*x) } else { Err(mismatch(f)) }).collect::<Result<Vec<_>>>()?;
                    col.typed::<DoubleType>().write_batch(&v, Some(&defs), None).map_err(pq)?;
                }
                Kind::Bool => {
                    let v =
                        vals.iter().map(|f| if let Field::Bool(x) = f { Ok(*x) } else { Err(mismatch(f)) }).collect::<Result<Vec<_>>>()?;
                    col.typed::<BoolType>().write_batch(&v, Some(&defs), None).map_err(pq)?;
                }
            }
            col.close().map_err(pq)?;
        }
        rg.close().map_err(pq)?;
    }
    writer.close().map_err(pq)?;
    Ok(())
}

fn to_json(f: &Field) -> Result<Value> {
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => json!(b),
        Field::Int(i) => json!(i),
        Field::Float(x) => json!(x),
        Field::Str(s) => json!(s),
        Field::Bytes(_) => return Err(Error::Invalid("JSON lines fixtures cannot hold bytes".into())),
        Field::List(l) => Value::Array(l.iter().map(to_json).collect::<Result<_>>()?),
        Field::Struct(m) => Value::Object(m.iter().map(|(k, v)| Ok((k.clone(), to_json(v)?))).collect::<Result<_>>()?),
    })
}

/// Write `records` as JSON lines (one object per line).
pub fn write_json_lines(path: &Path, records: &[Record]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&to_json(&Field::Struct(r.clone()))?.to_string());
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

/// Write `bytes` to `path`, creating its folders.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    std::fs::write(path, bytes).map_err(Error::io(format!("writing {}", path.display())))
}

/// Bytes of a gzip-compressed tar archive holding `members` (`(path inside, content)`), as
/// M2D2's `data/<domain>.tar.gz`.
pub fn tar_gz_bytes(members: &[(&str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(enc);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar in memory");
    }
    b.into_inner().expect("tar in memory").finish().expect("gzip in memory")
}

/// The commit hash fixtures put in the hub cache by default.
pub const FIXTURE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A dataset repository in the hub cache layout under `cache_dir` (what `HF_HUB_CACHE`, or
/// `$HF_HOME/hub`, points to): `datasets--org--name/refs/<revision>` holding `commit`, and
/// the empty snapshot folder `datasets--org--name/snapshots/<commit>/`, which is returned.
pub fn hub_snapshot(cache_dir: &Path, repo_id: &str, revision: &str, commit: &str) -> Result<PathBuf> {
    let repo = cache_dir.join(format!("datasets--{}", repo_id.replace('/', "--")));
    write_file(&repo.join("refs").join(revision), commit.as_bytes())?;
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).map_err(Error::io(format!("creating {}", snap.display())))?;
    Ok(snap)
}

/// Put a file into a cached snapshot as the hub client does: the content in
/// `blobs/<hash>`, and `snapshots/<commit>/<rel>` a symbolic link to it (a copy where links
/// are unavailable). `snapshot` is what [`hub_snapshot`] returned.
pub fn hub_file(snapshot: &Path, rel: &str, bytes: &[u8]) -> Result<PathBuf> {
    let repo = snapshot
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::Invalid(format!("{} is not a snapshot folder", snapshot.display())))?;
    // FNV-1a: a stable name for the blob.
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
    let blob = repo.join("blobs").join(format!("{hash:016x}{}", bytes.len()));
    write_file(&blob, bytes)?;
    let link = snapshot.join(rel);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, &link).map_err(Error::io(format!("linking {}", link.display())))?;
    #[cfg(not(unix))]
    std::fs::copy(&blob, &link).map_err(Error::io(format!("copying to {}", link.display())))?;
    Ok(link)
}

/// Parquet bytes of `records` (snappy).
pub fn parquet_bytes(records: &[Record]) -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("tram-data-fixture-{}-{:?}", std::process::id(), std::thread::current().id()));
    let path = dir.join(format!("{}.parquet", next_id()));
    write_parquet(&path, records)?;
    let bytes = std::fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    Ok(bytes)
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Records with one text column `column`.
pub fn text_records(column: &str, texts: &[&str]) -> Vec<Record> {
    texts.iter().map(|t| Record::from([(column.to_string(), Field::Str(t.to_string()))])).collect()
}

/// Records with the NLI columns `premise`, `hypothesis`, `label` (as MultiNLI and XNLI).
pub fn nli_records(rows: &[(&str, &str, i64)]) -> Vec<Record> {
    rows.iter()
        .map(|(p, h, l)| {
            Record::from([
                ("premise".to_string(), Field::Str(p.to_string())),
                ("hypothesis".to_string(), Field::Str(h.to_string())),
                ("label".to_string(), Field::Int(*l)),
            ])
        })
        .collect()
}

/// A hub image value: the struct `{bytes, path}` (`bytes` null when `None`).
pub fn image_field(bytes: Option<Vec<u8>>, path: &str) -> Field {
    Field::Struct(BTreeMap::from([
        ("bytes".to_string(), bytes.map(Field::Bytes).unwrap_or(Field::Null)),
        ("path".to_string(), Field::Str(path.to_string())),
    ]))
}

/// Records with an image struct column `image_col` and an integer label column `label_col`.
pub fn image_records(image_col: &str, label_col: &str, rows: &[(Vec<u8>, i64)]) -> Vec<Record> {
    rows.iter()
        .enumerate()
        .map(|(i, (b, l))| {
            Record::from([
                (image_col.to_string(), image_field(Some(b.clone()), &format!("{i}.png"))),
                (label_col.to_string(), Field::Int(*l)),
            ])
        })
        .collect()
}

/// PNG bytes of a `width`×`height` RGB image, `pixels` row-major RGB.
pub fn png_rgb(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let img = image::RgbImage::from_raw(width, height, pixels.to_vec()).expect("pixels must hold width·height·3 bytes");
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("PNG encoding to memory");
    out.into_inner()
}

/// PNG bytes of a solid `width`×`height` image of colour `rgb`.
pub fn png_solid(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let px: Vec<u8> = (0..width * height).flat_map(|_| rgb).collect();
    png_rgb(width, height, &px)
}

/// JPEG bytes (quality 95) of a solid image.
pub fn jpeg_solid(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let px: Vec<u8> = (0..width * height).flat_map(|_| rgb).collect();
    let img = image::RgbImage::from_raw(width, height, px).expect("solid image");
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).encode_image(&img).expect("JPEG encoding to memory");
    out.into_inner()
}

/// The special tokens and template of a fixture tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerStyle {
    /// `[PAD]`=0 `[UNK]`=1 `[CLS]`=2 `[SEP]`=3; `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]`.
    Bert,
    /// `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3; `<s> a </s>` / `<s> a </s></s> b </s>` (XLM-R).
    Roberta,
    /// `<|endoftext|>`=0 `<unk>`=1; no template (GPT-2 adds no special tokens).
    Gpt2,
}

impl TokenizerStyle {
    /// The special tokens, in id order.
    pub fn specials(self) -> &'static [&'static str] {
        match self {
            TokenizerStyle::Bert => &["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
            TokenizerStyle::Roberta => &["<s>", "<pad>", "</s>", "<unk>"],
            TokenizerStyle::Gpt2 => &["<|endoftext|>", "<unk>"],
        }
    }
}

/// The `tokenizer.json` of a word-level tokenizer (whitespace and punctuation split): the
/// special tokens of `style` first, then `words` in order (ids `specials.len()..`).
pub fn word_tokenizer_json(words: &[&str], style: TokenizerStyle) -> Value {
    let specials = style.specials();
    let mut vocab = serde_json::Map::new();
    for (i, w) in specials.iter().chain(words.iter()).enumerate() {
        vocab.entry(w.to_string()).or_insert(json!(i));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |s: &str, ty: u32| json!({"Sequence": {"id": s, "type_id": ty}});
    let special_map = |names: &[&str]| -> Value {
        let mut m = serde_json::Map::new();
        for n in names {
            let id = specials.iter().position(|s| s == n).unwrap();
            m.insert(n.to_string(), json!({"id": n, "ids": [id], "tokens": [n]}));
        }
        Value::Object(m)
    };
    let (post, unk) = match style {
        TokenizerStyle::Bert => (
            json!({"type": "TemplateProcessing",
                "single": [tok("[CLS]"), seq("A", 0), tok("[SEP]")],
                "pair": [tok("[CLS]"), seq("A", 0), tok("[SEP]"), seq("B", 1), {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": special_map(&["[CLS]", "[SEP]"])}),
            "[UNK]",
        ),
        TokenizerStyle::Roberta => (
            json!({"type": "TemplateProcessing",
                "single": [tok("<s>"), seq("A", 0), tok("</s>")],
                "pair": [tok("<s>"), seq("A", 0), tok("</s>"), tok("</s>"), seq("B", 0), tok("</s>")],
                "special_tokens": special_map(&["<s>", "</s>"])}),
            "<unk>",
        ),
        TokenizerStyle::Gpt2 => (Value::Null, "<unk>"),
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": Value::Object(vocab), "unk_token": unk}
    })
}

/// A word-level tokenizer (see [`word_tokenizer_json`]).
pub fn word_tokenizer(words: &[&str], style: TokenizerStyle) -> Tokenizer {
    let json = word_tokenizer_json(words, style).to_string();
    Tokenizer::from_bytes(json.as_bytes()).expect("fixture tokenizer.json is valid")
}

/// Writes `mb` MiB of synthetic text to `path` (varied words, one paragraph a line, a blank
/// line every ninth): corpora of any size for the token cache's memory test and benchmark.
pub fn synthetic_text(path: &Path, mb: usize) -> Result<()> {
    use std::io::Write;
    let io = |source: std::io::Error| Error::Io { context: format!("writing {}", path.display()), source };
    let words = [
        "theorem",
        "lemma",
        "proof",
        "manifold",
        "group",
        "ring",
        "field",
        "integral",
        "we",
        "show",
        "that",
        "the",
        "of",
        "is",
        "a",
        "for",
        "every",
        "bounded",
        "operator",
        "space",
        "Hilbert",
        "Banach",
        "2024",
        "x_1",
        "=",
        "+",
        "(",
        ")",
        "convergence",
        "sequence",
    ];
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let (mut written, mut i) = (0usize, 0usize);
    while written < mb << 20 {
        let mut line = String::new();
        for j in 0..(20 + i % 60) {
            line.push_str(words[(i * 7 + j * 13 + j * j) % words.len()]);
            line.push(' ');
        }
        line.push('\n');
        if i % 9 == 0 {
            line.push('\n');
        }
        f.write_all(line.as_bytes()).map_err(io)?;
        written += line.len();
        i += 1;
    }
    f.flush().map_err(io)
}

/// This process's peak resident memory in KiB (`VmHWM` of `/proc/self/status`; `None` where
/// there is no such file, i.e. off Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}
