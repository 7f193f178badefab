//! Rows as plain values ([`Record`], [`Field`]) and the readers that produce them: parquet
//! (the hub's format) and JSON lines.

use crate::error::{Error, Result};
use crate::source::{DataFiles, DataSource, HubOptions};
use crate::splits::{find_split_in, Format, SplitFiles};
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field as PqField;
use parquet::schema::types::Type;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

/// One row: column name → value.
pub type Record = BTreeMap<String, Field>;

/// One value of a row. Image columns of hub parquet files are structs `{bytes, path}`;
/// `ClassLabel` columns are integers.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// Missing value.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any integer (parquet's signed and unsigned integer types, dates, times, timestamps).
    Int(i64),
    /// Any floating-point number.
    Float(f64),
    /// Text (and decimals, as text).
    Str(String),
    /// Binary data (image bytes).
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Field>),
    /// A struct (and a map, keyed by its keys' text).
    Struct(BTreeMap<String, Field>),
}

impl Field {
    /// The name of this value's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Int(_) => "an integer",
            Field::Float(_) => "a float",
            Field::Str(_) => "a string",
            Field::Bytes(_) => "bytes",
            Field::List(_) => "a list",
            Field::Struct(_) => "a struct",
        }
    }
    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one (or a float with an integer value).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Field::Int(i) => Some(*i),
            Field::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Field::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// The bytes: of a binary value, or of the `bytes` field of a struct (hub image columns).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Field::Bytes(b) => Some(b),
            Field::Struct(m) => m.get("bytes").and_then(Field::as_bytes),
            _ => None,
        }
    }
    /// Whether this is [`Field::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Field::Null)
    }
}

impl fmt::Display for Field {
    /// A short rendering for messages (long values are cut).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Null => f.write_str("null"),
            Field::Bool(b) => write!(f, "{b}"),
            Field::Int(i) => write!(f, "{i}"),
            Field::Float(x) => write!(f, "{x}"),
            Field::Str(s) if s.chars().count() > 40 => write!(f, "{:?}…", s.chars().take(40).collect::<String>()),
            Field::Str(s) => write!(f, "{s:?}"),
            Field::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Field::List(l) => write!(f, "<list of {}>", l.len()),
            Field::Struct(m) => write!(f, "<struct {{{}}}>", m.keys().cloned().collect::<Vec<_>>().join(", ")),
        }
    }
}

fn available(record: &Record) -> String {
    if record.is_empty() {
        "none".into()
    } else {
        record.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// The value of column `name`; a missing column is an error naming it and listing the columns
/// the record has.
pub fn column<'a>(record: &'a Record, name: &str) -> Result<&'a Field> {
    record.get(name).ok_or_else(|| Error::MissingColumn { column: name.to_string(), context: String::new(), available: available(record) })
}

/// Check that the first record has every column of `names` (a dataset's rows share a schema):
/// an error names the first missing column, the split, and the columns there are. Empty
/// record lists pass.
pub fn check_columns(records: &[Record], names: &[&str], what: &str) -> Result<()> {
    if let Some(first) = records.first() {
        for n in names {
            if !first.contains_key(*n) {
                return Err(Error::MissingColumn {
                    column: n.to_string(),
                    context: if what.is_empty() { String::new() } else { format!(" in {what}") },
                    available: available(first),
                });
            }
        }
    }
    Ok(())
}

fn from_parquet(f: &PqField) -> Field {
    match f {
        PqField::Null => Field::Null,
        PqField::Bool(b) => Field::Bool(*b),
        PqField::Byte(v) => Field::Int(*v as i64),
        PqField::Short(v) => Field::Int(*v as i64),
        PqField::Int(v) => Field::Int(*v as i64),
        PqField::Long(v) => Field::Int(*v),
        PqField::UByte(v) => Field::Int(*v as i64),
        PqField::UShort(v) => Field::Int(*v as i64),
        PqField::UInt(v) => Field::Int(*v as i64),
        PqField::ULong(v) => Field::Int(*v as i64),
        PqField::Float16(v) => Field::Float(f64::from(*v)),
        PqField::Float(v) => Field::Float(*v as f64),
        PqField::Double(v) => Field::Float(*v),
        PqField::Str(s) => Field::Str(s.clone()),
        PqField::Bytes(b) => Field::Bytes(b.data().to_vec()),
        PqField::Date(v) => Field::Int(*v as i64),
        PqField::TimeMillis(v) => Field::Int(*v as i64),
        PqField::TimeMicros(v) => Field::Int(*v),
        PqField::TimestampMillis(v) => Field::Int(*v),
        PqField::TimestampMicros(v) => Field::Int(*v),
        PqField::Group(row) => Field::Struct(row.get_column_iter().map(|(k, v)| (k.clone(), from_parquet(v))).collect()),
        PqField::ListInternal(list) => Field::List(list.elements().iter().map(from_parquet).collect()),
        PqField::MapInternal(map) => Field::Struct(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        PqField::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, from_parquet(v))
                })
                .collect(),
        ),
        other => Field::Str(other.to_string()),
    }
}

fn from_json(v: serde_json::Value) -> Field {
    use serde_json::Value;
    match v {
        Value::Null => Field::Null,
        Value::Bool(b) => Field::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Field::Int(i),
            None => Field::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Field::Str(s),
        Value::Array(a) => Field::List(a.into_iter().map(from_json).collect()),
        Value::Object(m) => Field::Struct(m.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    }
}

/// Read every row of a parquet file; with `columns`, only those top-level columns (a column
/// the file lacks is an error listing the file's columns).
pub fn read_parquet(path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let file = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    parquet_rows(file, path, columns)
}

/// Rows of parquet data held by `chunk` (a file, or bytes read out of an archive); `path`
/// names it in messages.
fn parquet_rows<R: ChunkReader + 'static>(chunk: R, path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let reader = SerializedFileReader::new(chunk).map_err(|e| Error::corrupt(path, format!("not a readable parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema();
    let projection = match columns {
        None => None,
        Some(cols) => {
            let fields = schema.get_fields();
            let mut chosen: Vec<Arc<Type>> = Vec::new();
            for c in cols {
                match fields.iter().find(|f| f.name() == *c) {
                    Some(f) => {
                        if !chosen.iter().any(|x| x.name() == *c) {
                            chosen.push(f.clone())
                        }
                    }
                    None => {
                        return Err(Error::MissingColumn {
                            column: c.to_string(),
                            context: format!(" in {}", path.display()),
                            available: fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
                        })
                    }
                }
            }
            Some(
                Type::group_type_builder(schema.name())
                    .with_fields(chosen)
                    .build()
                    .map_err(|e| Error::corrupt(path, format!("projecting columns: {e}")))?,
            )
        }
    };
    let rows = reader.get_row_iter(projection).map_err(|e| Error::corrupt(path, e))?;
    let mut out = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::corrupt(path, format!("row {i}: {e}")))?;
        out.push(row.get_column_iter().map(|(k, v)| (k.clone(), from_parquet(v))).collect());
    }
    Ok(out)
}

/// Read JSON lines (one object per line; blank lines skipped), or a file holding one JSON
/// array of objects. With `columns`, only those keys are kept (a key missing from every row
/// is reported by [`check_columns`], not here: JSON rows may omit null values).
pub fn read_json_lines(path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let file = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    json_rows(BufReader::new(file), path, columns)
}

fn json_rows(mut reader: impl BufRead, path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let keep = |mut r: Record| -> Record {
        if let Some(cols) = columns {
            r.retain(|k, _| cols.contains(&k.as_str()));
        }
        r
    };
    let to_record = |v: serde_json::Value, line: usize| -> Result<Record> {
        match from_json(v) {
            Field::Struct(m) => Ok(keep(m)),
            other => Err(Error::corrupt(path, format!("line {line}: expected a JSON object, found {}", other.kind()))),
        }
    };
    // A JSON array file starts with `[`.
    let starts_with_array = {
        let buf = reader.fill_buf().map_err(Error::io(format!("reading {}", path.display())))?;
        buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
    };
    if starts_with_array {
        let v: serde_json::Value = serde_json::from_reader(reader).map_err(|e| Error::corrupt(path, format!("bad JSON: {e}")))?;
        let serde_json::Value::Array(items) = v else { unreachable!("starts with `[`") };
        return items.into_iter().enumerate().map(|(i, v)| to_record(v, i + 1)).collect();
    }
    let mut out = Vec::new();
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(Error::io(format!("reading {}", path.display())))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::corrupt(path, format!("line {n}: bad JSON: {e}")))?;
        out.push(to_record(v, n)?);
    }
    Ok(out)
}

/// The column of the rows of `.txt` files.
pub const TEXT_COLUMN: &str = "text";

/// Read a text file: one row `{text}` per line, stripped of surrounding whitespace (as M2D2's
/// loading script does; empty lines give empty texts). A line that is not valid UTF-8 is kept
/// as [`Field::Bytes`] (see [`crate::lm::decode_texts`]). With `columns`, `text` must be among
/// them.
pub fn read_text_lines(path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let file = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    text_rows(BufReader::new(file), path, columns)
}

fn text_rows(mut reader: impl BufRead, path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    if let Some(c) = columns.and_then(|cols| cols.iter().find(|c| **c != TEXT_COLUMN)) {
        return Err(Error::MissingColumn {
            column: c.to_string(),
            context: format!(" in {}", path.display()),
            available: TEXT_COLUMN.into(),
        });
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        // A line that is not valid UTF-8 (a binary file, another encoding) stays raw bytes:
        // the reader of the text (`lm::decode_texts`) decodes it, counts and reports the
        // replaced bytes. Nothing is replaced silently here.
        let field = match std::str::from_utf8(&buf) {
            Ok(line) => Field::Str(line.trim().to_string()),
            Err(_) => Field::Bytes(buf.trim_ascii().to_vec()),
        };
        out.push(Record::from([(TEXT_COLUMN.to_string(), field)]));
    }
    Ok(out)
}

fn open_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(tar::Archive::new(reader))
}

fn member_name(entry: &tar::Entry<'_, Box<dyn Read>>) -> Option<String> {
    let p = entry.path().ok()?;
    let s = p.to_str()?.trim_start_matches("./").to_string();
    (!s.is_empty() && entry.header().entry_type().is_file()).then_some(s)
}

/// The regular files of a tar archive (`.tar`, `.tar.gz`, `.tgz`), sorted, `./` prefixes
/// removed; hidden files and macOS `._` resource forks are left out.
pub fn archive_members(path: &Path) -> Result<Vec<String>> {
    let mut ar = open_tar(path)?;
    let bad = |e: std::io::Error| Error::corrupt(path, format!("not a readable tar archive: {e}"));
    let mut out = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if let Some(name) = member_name(&entry) {
            if !name.rsplit('/').next().unwrap_or("").starts_with('.') {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn rows_of(format: Format, reader: impl BufRead, path: &Path, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    match format {
        Format::JsonLines => json_rows(reader, path, columns),
        Format::Text => text_rows(reader, path, columns),
        Format::Parquet => {
            let mut bytes = Vec::new();
            let mut reader = reader;
            reader.read_to_end(&mut bytes).map_err(Error::io(format!("reading {}", path.display())))?;
            parquet_rows(bytes::Bytes::from(bytes), path, columns)
        }
    }
}

/// Read the `members` of a tar archive as `format`, in the order given.
pub fn read_archive_members(path: &Path, members: &[String], format: Format, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let mut ar = open_tar(path)?;
    let bad = |e: std::io::Error| Error::corrupt(path, format!("not a readable tar archive: {e}"));
    let mut got: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let Some(name) = member_name(&entry) else { continue };
        if members.contains(&name) {
            let shown = path.join(&name);
            got.insert(name, rows_of(format, BufReader::new(entry), &shown, columns)?);
        }
    }
    let mut out = Vec::new();
    for m in members {
        let mut rows = got.remove(m).ok_or_else(|| Error::corrupt(path, format!("archive member `{m}` is missing")))?;
        out.append(&mut rows);
    }
    Ok(out)
}

/// Read the rows of resolved split files, in file order (or archive members, in order).
pub fn read_split_files(files: &SplitFiles, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    if !files.members.is_empty() {
        let archive = files.paths.first().ok_or_else(|| Error::Invalid("archive members without an archive".into()))?;
        return read_archive_members(archive, &files.members, files.format, columns);
    }
    let mut out = Vec::new();
    for p in &files.paths {
        let mut rows = match files.format {
            Format::Parquet => read_parquet(p, columns)?,
            Format::JsonLines => read_json_lines(p, columns)?,
            Format::Text => read_text_lines(p, columns)?,
        };
        out.append(&mut rows);
    }
    Ok(out)
}

/// Every row of `split` (and `config`) of `source`, all columns; the hub is configured from
/// the environment. A missing split is an error listing the splits found.
pub fn load_split(source: &DataSource, split: &str, config: Option<&str>) -> Result<Vec<Record>> {
    load_split_with(&source.files_from_env(), split, config, None)
}

/// Like [`load_split`], through explicit hub options and with an optional column projection
/// (only those columns are read: much less memory for wide datasets). A projected column that
/// the data lack is an error naming it and listing the columns there are.
pub fn load_split_with(files: &DataFiles, split: &str, config: Option<&str>, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let found = find_split_in(files, split, config)?;
    tracing::info!(source = %files.source(), split, config = ?found.config, files = found.paths.len(), format = %found.format, "reading split");
    let rows = read_split_files(&found, columns)?;
    if let (Some(cols), Format::JsonLines) = (columns, found.format) {
        let any = |c: &str| rows.iter().any(|r| r.contains_key(c));
        if let Some(c) = cols.iter().find(|c| !rows.is_empty() && !any(c)) {
            let mut all = read_split_files(&found, None)?;
            all.truncate(1);
            return Err(Error::MissingColumn {
                column: c.to_string(),
                context: format!(" in split `{split}` of {}", files.source()),
                available: all.first().map(available).unwrap_or_else(|| "none".into()),
            });
        }
    }
    Ok(rows)
}

/// [`load_split_with`] with a hub configured by `hub`.
pub fn load_split_hub(
    source: &DataSource,
    hub: &HubOptions,
    split: &str,
    config: Option<&str>,
    columns: Option<&[&str]>,
) -> Result<Vec<Record>> {
    load_split_with(&source.files(hub), split, config, columns)
}
