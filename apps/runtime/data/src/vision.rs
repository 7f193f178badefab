//! Image classification: hub image columns (`{bytes, path}` structs of PNG/JPEG bytes) decoded,
//! resized and normalised as Hugging Face's `ViTImageProcessor` does.

use crate::error::{Error, Result};
use crate::record::{check_columns, Field, Record};
use crate::skips::Skips;
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How images become model inputs: resize to `image_size`×`image_size` (bilinear), multiply by
/// `rescale`, then `(x - mean[c]) / std[c]` per channel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Output side in pixels.
    pub image_size: usize,
    /// Per-channel mean (RGB), after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB), after rescaling.
    pub std: [f32; 3],
    /// Factor from 8-bit pixel values (`1/255`).
    pub rescale: f32,
}

/// `google/vit-base-patch16-224-in21k`'s normalisation: mean = std = 0.5 per channel.
pub const VIT_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// See [`VIT_MEAN`].
pub const VIT_STD: [f32; 3] = [0.5, 0.5, 0.5];

impl Preprocess {
    /// `image_size`, mean = std = 0.5, rescale 1/255 (as `google/vit-base-patch16-224-in21k`).
    pub fn new(image_size: usize) -> Self {
        Self { image_size, mean: VIT_MEAN, std: VIT_STD, rescale: 1.0 / 255.0 }
    }

    /// From a `preprocessor_config.json` (`size` as a number or `{height, width}` /
    /// `{shortest_edge}`, `image_mean`, `image_std`, `rescale_factor`, `do_rescale`,
    /// `do_normalize`) and the model's `config.json` (`image_size`, used when the
    /// preprocessor gives no size; 224 when neither does). Absent fields take the defaults of
    /// [`Preprocess::new`]. A non-square size is an error.
    pub fn from_json(preprocessor: Option<&Value>, model_config: Option<&Value>) -> Result<Self> {
        let bad = |what: String| Error::Invalid(format!("preprocessor_config.json: {what}"));
        let model_size = model_config.and_then(|c| c.get("image_size")).and_then(Value::as_u64);
        let mut p = Self::new(model_size.unwrap_or(224) as usize);
        let Some(pc) = preprocessor else { return Ok(p) };
        match pc.get("size") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => p.image_size = n.as_u64().ok_or_else(|| bad(format!("bad size {n}")))? as usize,
            Some(Value::Object(m)) => {
                let get = |k: &str| m.get(k).and_then(Value::as_u64);
                match (get("height"), get("width"), get("shortest_edge")) {
                    (Some(h), Some(w), _) if h == w => p.image_size = h as usize,
                    (Some(h), Some(w), _) => return Err(bad(format!("non-square size {h}x{w} is not supported"))),
                    (_, _, Some(s)) => p.image_size = s as usize,
                    _ => return Err(bad(format!("size {} has neither height/width nor shortest_edge", Value::Object(m.clone())))),
                }
            }
            Some(other) => return Err(bad(format!("bad size {other}"))),
        }
        let triple = |k: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match pc.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32))
                }
                Some(other) => Err(bad(format!("{k} must be 3 numbers, got {other}"))),
            }
        };
        p.mean = triple("image_mean", p.mean)?;
        p.std = triple("image_std", p.std)?;
        if let Some(r) = pc.get("rescale_factor").and_then(Value::as_f64) {
            p.rescale = r as f32;
        }
        if pc.get("do_rescale").and_then(Value::as_bool) == Some(false) {
            p.rescale = 1.0;
        }
        if pc.get("do_normalize").and_then(Value::as_bool) == Some(false) {
            p.mean = [0.0; 3];
            p.std = [1.0; 3];
        }
        if p.image_size == 0 {
            return Err(bad("size 0".into()));
        }
        if let Some(c) = p.std.iter().position(|s| *s == 0.0) {
            return Err(bad(format!("image_std[{c}] is 0")));
        }
        Ok(p)
    }

    /// From a model's files: its `config.json` and, when present, `preprocessor_config.json`.
    pub fn from_model(files: &tram_hub::ModelFiles) -> Result<Self> {
        let read = |p: std::path::PathBuf| -> Result<Value> {
            let text = std::fs::read_to_string(&p).map_err(Error::io(format!("reading {}", p.display())))?;
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&p, format!("bad JSON: {e}")))
        };
        let hub = |e: tram_hub::Error| Error::Invalid(e.to_string());
        let config = files.find(tram_hub::CONFIG_FILE).map_err(hub)?.map(read).transpose()?;
        let pre = files.find("preprocessor_config.json").map_err(hub)?.map(read).transpose()?;
        Self::from_json(pre.as_ref(), config.as_ref())
    }

    /// Decode PNG/JPEG `bytes`, convert to RGB (alpha dropped, grey replicated), resize
    /// bilinearly to `image_size`×`image_size` (as `ViTImageProcessor`: 8-bit in, 8-bit out,
    /// antialiased when shrinking), rescale and normalise. Returns `3·H·W` values, CHW.
    pub fn apply(&self, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
        let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
        let rgb = img.to_rgb8();
        let s = self.image_size as u32;
        let rgb = if rgb.width() == s && rgb.height() == s { rgb } else { image::imageops::resize(&rgb, s, s, FilterType::Triangle) };
        let hw = (s * s) as usize;
        let mut out = vec![0f32; 3 * hw];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * hw + i] = (px.0[c] as f32 * self.rescale - self.mean[c]) / self.std[c];
            }
        }
        Ok(out)
    }
}

/// The encoded image of column `col`: the `bytes` of a hub image struct, or a binary value.
/// `Err` says why there is none.
fn image_bytes<'a>(r: &'a Record, col: &str) -> std::result::Result<&'a [u8], String> {
    match r.get(col) {
        Some(Field::Bytes(b)) => Ok(b),
        Some(Field::Struct(m)) => match m.get("bytes") {
            Some(Field::Bytes(b)) => Ok(b),
            _ => Err(match m.get("path") {
                Some(Field::Str(p)) => format!("the image struct has no bytes, only the path `{p}`"),
                _ => format!("the image struct has no bytes (fields: {})", m.keys().cloned().collect::<Vec<_>>().join(", ")),
            }),
        },
        Some(Field::Null) | None => Err("the image is null".into()),
        Some(other) => Err(format!("expected image bytes or a {{bytes, path}} struct, found {}", other.kind())),
    }
}

/// One decoded image: `3·H·W` values (CHW) and its label.
pub type ImageExample = (Vec<f32>, u32);

/// Run `f` over `items` on all cores, keeping the order.
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<U>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("image worker panicked")).collect()
    })
}

/// Decode every row eagerly: `(pixels 3·H·W CHW, label)`. Rows whose image cannot be decoded
/// are counted in [`Skips::undecodable`] (with a warning naming the row); rows with a
/// missing, null or negative label in [`Skips::missing_label`]. A column absent from the data
/// is an error naming it and listing the columns there are.
///
/// Memory: 3·H·W·4 bytes per image (602 KB at 224²): for a large training set use
/// [`Images`], which keeps the encoded bytes and decodes per batch.
pub fn decode(records: &[Record], image_col: &str, label_col: &str, pre: &Preprocess) -> Result<(Vec<ImageExample>, Skips)> {
    let (images, skips) = Images::from_records_unchecked(records, image_col, label_col)?;
    let decoded = par_map(&images.bytes, |b| pre.apply(b));
    let mut skips = skips;
    let mut out = Vec::with_capacity(decoded.len());
    for ((px, label), row) in decoded.into_iter().zip(images.labels.iter()).zip(images.rows.iter()) {
        match px {
            Ok(px) => out.push((px, *label)),
            Err(e) => {
                tracing::warn!(row, column = image_col, error = %e, "undecodable image: skipped");
                skips.undecodable += 1;
            }
        }
    }
    Ok((out, skips))
}

/// A batch of decoded images: inputs `[B, 3, H, W]` f32 (square images, all of one size),
/// targets `[B]` u32, no mask.
pub fn batch(examples: &[ImageExample], device: &Device) -> Result<tram::Batch> {
    batch_refs(&examples.iter().collect::<Vec<_>>(), device)
}

/// [`batch`] over borrowed examples.
pub fn batch_refs(examples: &[&ImageExample], device: &Device) -> Result<tram::Batch> {
    let first = examples.first().ok_or_else(|| Error::Invalid("an image batch needs at least one example".into()))?;
    let len = first.0.len();
    let side = ((len / 3) as f64).sqrt().round() as usize;
    if len == 0 || 3 * side * side != len {
        return Err(Error::Invalid(format!("image 0 has {len} values, not 3·H·W of a square image")));
    }
    if let Some(i) = examples.iter().position(|e| e.0.len() != len) {
        return Err(Error::Invalid(format!("image {i} has {} values, image 0 has {len}: images must share one size", examples[i].0.len())));
    }
    let b = examples.len();
    let mut px = Vec::with_capacity(b * len);
    for e in examples {
        px.extend_from_slice(&e.0);
    }
    let targets: Vec<u32> = examples.iter().map(|e| e.1).collect();
    Ok(tram::Batch::new(Tensor::from_vec(px, (b, 3, side, side), device)?, Tensor::from_vec(targets, b, device)?))
}

/// Images kept encoded (PNG/JPEG bytes) with their labels, decoded per batch: the memory of
/// the files, not of the pixels.
#[derive(Clone, Debug, Default)]
pub struct Images {
    /// Encoded images.
    pub bytes: Vec<Vec<u8>>,
    /// Their labels.
    pub labels: Vec<u32>,
    /// The row of each in the records it came from (for messages).
    pub rows: Vec<usize>,
}

impl Images {
    /// Collect the images and labels of `records`, decoding each once to check it (all cores):
    /// undecodable images are counted in [`Skips::undecodable`] with a warning naming the row,
    /// missing/null/negative labels in [`Skips::missing_label`].
    pub fn from_records(records: &[Record], image_col: &str, label_col: &str) -> Result<(Self, Skips)> {
        let (all, mut skips) = Self::from_records_unchecked(records, image_col, label_col)?;
        let ok = par_map(&all.bytes, |b| image::load_from_memory(b).map(|_| ()).map_err(|e| e.to_string()));
        let mut out = Images::default();
        for (((bytes, label), row), ok) in all.bytes.into_iter().zip(all.labels).zip(all.rows).zip(ok) {
            match ok {
                Ok(()) => {
                    out.bytes.push(bytes);
                    out.labels.push(label);
                    out.rows.push(row);
                }
                Err(e) => {
                    tracing::warn!(row, column = image_col, error = %e, "undecodable image: skipped");
                    skips.undecodable += 1;
                }
            }
        }
        Ok((out, skips))
    }

    /// Like [`Images::from_records`] without decoding: rows without image bytes are still
    /// counted undecodable, but corrupt bytes are only found when a batch decodes them.
    pub fn from_records_unchecked(records: &[Record], image_col: &str, label_col: &str) -> Result<(Self, Skips)> {
        check_columns(records, &[image_col, label_col], "the data")?;
        let mut skips = Skips::default();
        let mut out = Images::default();
        for (i, r) in records.iter().enumerate() {
            let Some(label) = crate::nli::label(r, label_col, i)? else {
                skips.missing_label += 1;
                continue;
            };
            match image_bytes(r, image_col) {
                Ok(b) => {
                    out.bytes.push(b.to_vec());
                    out.labels.push(label);
                    out.rows.push(i);
                }
                Err(e) => {
                    tracing::warn!(row = i, column = image_col, error = %e, "undecodable image: skipped");
                    skips.undecodable += 1;
                }
            }
        }
        Ok((out, skips))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Decode (all cores) and batch the images at `indices`: inputs `[B, 3, S, S]` f32,
    /// targets `[B]` u32. An image that fails to decode is an error naming its row.
    pub fn batch(&self, indices: &[usize], pre: &Preprocess, device: &Device) -> Result<tram::Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!("image index {i} out of range (there are {})", self.len())));
        }
        let decoded = par_map(indices, |&i| pre.apply(&self.bytes[i]).map(|px| (px, self.labels[i])));
        let examples = decoded
            .into_iter()
            .zip(indices)
            .map(|(d, &i)| d.map_err(|e| Error::Invalid(format!("image of row {} cannot be decoded: {e}", self.rows[i]))))
            .collect::<Result<Vec<_>>>()?;
        batch(&examples, device)
    }
}
