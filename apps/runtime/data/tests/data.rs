//! tram-data tests on fixtures generated at run time: hub-cache and local layouts, parquet and
//! JSON lines, LM blocks, NLI pairs, image preprocessing, the loader. No test touches the
//! network (a fake hub on 127.0.0.1 stands in for downloads).

use candle_core::Device;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use tram_data::fixtures::*;
use tram_data::*;

const COMMIT: &str = FIXTURE_COMMIT;

fn offline(cache: &Path) -> HubOptions {
    HubOptions::offline(cache)
}

fn rec(pairs: &[(&str, Field)]) -> Record {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn s(x: &str) -> Field {
    Field::Str(x.into())
}

fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().to_string()
}

// ---------------------------------------------------------------------------------------
// Sources

#[test]
fn parses_sources() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(DataSource::parse("nyu-mll/multi_nli").unwrap(), DataSource::hub_at("nyu-mll/multi_nli", "main"));
    assert_eq!(DataSource::parse("facebook/xnli@v1").unwrap(), DataSource::hub_at("facebook/xnli", "v1"));
    assert_eq!(
        "facebook/xnli@refs/convert/parquet".parse::<DataSource>().unwrap(),
        DataSource::hub_at("facebook/xnli", "refs/convert/parquet")
    );
    assert_eq!(DataSource::parse("imdb").unwrap(), DataSource::hub("imdb"));
    assert_eq!(DataSource::parse(dir.path().to_str().unwrap()).unwrap(), DataSource::local(dir.path()));
    assert_eq!(DataSource::hub("a/b").to_string(), "dataset a/b@main");
    for bad in ["", "a/b/c", "a b/c", "a/b@", "a/b@x@y", "./nope", "/definitely/not/here", "a--b/c"] {
        let e = err(DataSource::parse(bad));
        assert!(e.contains("invalid dataset source"), "{bad}: {e}");
    }
    let file = dir.path().join("train.jsonl");
    std::fs::write(&file, "{}\n").unwrap();
    assert!(err(DataSource::parse(file.to_str().unwrap())).contains("is a file"));
}

// ---------------------------------------------------------------------------------------
// Split discovery

#[test]
fn classifies_paths() {
    let c = |p: &str| classify(p).map(|f| (f.config, f.split, f.format));
    let none = None::<String>;
    assert_eq!(c("train.jsonl"), Some((none.clone(), "train".into(), Format::JsonLines)));
    assert_eq!(c("test.json"), Some((none.clone(), "test".into(), Format::JsonLines)));
    assert_eq!(c("train-00000-of-00002.parquet"), Some((none.clone(), "train".into(), Format::Parquet)));
    assert_eq!(
        c("data/validation_matched-00000-of-00001-abc123.parquet"),
        Some((none.clone(), "validation_matched".into(), Format::Parquet))
    );
    assert_eq!(c("train/0000.parquet"), Some((none.clone(), "train".into(), Format::Parquet)));
    assert_eq!(c("data/train/0000.parquet"), Some((none.clone(), "train".into(), Format::Parquet)));
    assert_eq!(c("en/train-00000-of-00001.parquet"), Some((Some("en".into()), "train".into(), Format::Parquet)));
    assert_eq!(c("en/test/0000.parquet"), Some((Some("en".into()), "test".into(), Format::Parquet)));
    assert_eq!(c("README.md"), None);
    assert_eq!(c("dataset_infos.json"), None);
    assert_eq!(c("0000.parquet"), None);
    assert_eq!(c(".gitattributes"), None);
}

/// MultiNLI's hub layout: `data/<split>-00000-of-00001.parquet`, read offline from the cache.
#[test]
fn hub_cache_discovery_and_missing_split() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "nyu-mll/multi_nli", "main", COMMIT).unwrap();
    let rows = |n: usize, tag: &str| nli_records(&(0..n).map(|i| (["a", "b"][i % 2], tag, i as i64 % 3)).collect::<Vec<_>>());
    for (split, n) in [("train", 5), ("validation_matched", 3), ("validation_mismatched", 2)] {
        hub_file(&snap, &format!("data/{split}-00000-of-00001.parquet"), &parquet_bytes(&rows(n, split)).unwrap()).unwrap();
    }
    hub_file(&snap, "README.md", b"# MultiNLI").unwrap();
    let src = DataSource::hub("nyu-mll/multi_nli");
    let hub = offline(cache.path());
    let got = load_split_hub(&src, &hub, "validation_matched", None, None).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["hypothesis"], s("validation_matched"));
    assert_eq!(got[2]["label"], Field::Int(2));
    assert_eq!(load_split_hub(&src, &hub, "train", None, None).unwrap().len(), 5);
    // The split files resolve inside the snapshot (links into blobs/).
    let found = find_split_in(&src.files(&hub), "train", None).unwrap();
    assert_eq!(found.format, Format::Parquet);
    assert!(found.paths[0].starts_with(&snap), "{:?}", found.paths);

    let e = err(load_split_hub(&src, &hub, "validation", None, None));
    assert!(e.contains("no split `validation`"), "{e}");
    assert!(e.contains("train, validation_matched, validation_mismatched"), "{e}");
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");

    // A revision not in the cache, a dataset not in the cache.
    let e = err(load_split_hub(&DataSource::hub_at("nyu-mll/multi_nli", "v2"), &hub, "train", None, None));
    assert!(e.contains("revision `v2` is not in the cache") && e.contains("main"), "{e}");
    let e = err(load_split_hub(&DataSource::hub("org/absent"), &hub, "train", None, None));
    assert!(e.contains("datasets--org--absent"), "{e}");
    // The revision may be the commit itself.
    assert_eq!(load_split_hub(&DataSource::hub_at("nyu-mll/multi_nli", COMMIT), &hub, "train", None, None).unwrap().len(), 5);
}

/// XNLI's per-language configs `<lang>/<split>-….parquet`.
#[test]
fn configs_xnli_layout() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "facebook/xnli", "main", COMMIT).unwrap();
    for lang in ["ar", "en", "fr"] {
        for split in ["test", "train", "validation"] {
            let rows = nli_records(&[(lang, split, 0), (lang, split, 1)]);
            hub_file(&snap, &format!("{lang}/{split}-00000-of-00001.parquet"), &parquet_bytes(&rows).unwrap()).unwrap();
        }
    }
    let src = DataSource::hub("facebook/xnli");
    let hub = offline(cache.path());
    let fr = load_split_hub(&src, &hub, "test", Some("fr"), None).unwrap();
    assert_eq!(fr.len(), 2);
    assert_eq!(fr[0]["premise"], s("fr"));
    assert_eq!(fr[0]["hypothesis"], s("test"));
    let e = err(load_split_hub(&src, &hub, "test", None, None));
    assert!(e.contains("several configs (ar, en, fr)") && e.contains("pass one"), "{e}");
    let e = err(load_split_hub(&src, &hub, "test", Some("de"), None));
    assert!(e.contains("(config `de`)") && e.contains("splits test, train, validation in each of the configs ar, en, fr"), "{e}");
}

/// One config only (cifar100's `cifar100/train-….parquet`): no config needed; the
/// `refs/convert/parquet` layout `<config>/<split>/0000.parquet` at a ref revision.
#[test]
fn single_config_and_convert_parquet_layout() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "uoft-cs/cifar100", "main", COMMIT).unwrap();
    let rows = image_records("img", "fine_label", &[(png_solid(2, 2, [1, 2, 3]), 7)]);
    hub_file(&snap, "cifar100/train-00000-of-00001.parquet", &parquet_bytes(&rows).unwrap()).unwrap();
    let got = load_split_hub(&DataSource::hub("uoft-cs/cifar100"), &offline(cache.path()), "train", None, None).unwrap();
    assert_eq!(got[0]["fine_label"], Field::Int(7));
    // `default` (configs/vision-cifar100.toml's `vision.subset`) is the repository's only
    // config, whatever its folder is named; another name is not.
    let got = load_split_hub(&DataSource::hub("uoft-cs/cifar100"), &offline(cache.path()), "train", Some("default"), None).unwrap();
    assert_eq!(got[0]["fine_label"], Field::Int(7));
    let e = err(load_split_hub(&DataSource::hub("uoft-cs/cifar100"), &offline(cache.path()), "train", Some("plain_text"), None));
    assert!(e.contains("(config `plain_text`)") && e.contains("config `cifar100`: train"), "{e}");
    assert!(matches!(&got[0]["img"], Field::Struct(m) if m.contains_key("bytes") && m.contains_key("path")));

    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let snap = hub_snapshot(cache.path(), "m/d", "refs/convert/parquet", other).unwrap();
    hub_file(&snap, "default/train/0000.parquet", &parquet_bytes(&text_records("text", &["x", "y"])).unwrap()).unwrap();
    hub_file(&snap, "default/train/0001.parquet", &parquet_bytes(&text_records("text", &["z"])).unwrap()).unwrap();
    let src = DataSource::parse("m/d@refs/convert/parquet").unwrap();
    let got = load_split_hub(&src, &offline(cache.path()), "train", None, None).unwrap();
    assert_eq!(got.iter().map(|r| r["text"].clone()).collect::<Vec<_>>(), vec![s("x"), s("y"), s("z")]);
    assert_eq!(load_split_hub(&src, &offline(cache.path()), "train", Some("default"), None).unwrap().len(), 3);
}

/// A sharded split with a shard missing from the cache is not silently half-read.
#[test]
fn incomplete_cached_shards_are_reported() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "o/sharded", "main", COMMIT).unwrap();
    hub_file(&snap, "data/train-00000-of-00003.parquet", &parquet_bytes(&text_records("text", &["a"])).unwrap()).unwrap();
    hub_file(&snap, "data/train-00002-of-00003.parquet", &parquet_bytes(&text_records("text", &["c"])).unwrap()).unwrap();
    let e = err(load_split_hub(&DataSource::hub("o/sharded"), &offline(cache.path()), "train", None, None));
    assert!(e.contains("incomplete") && e.contains("00001") && e.contains("of 3"), "{e}");
    hub_file(&snap, "data/train-00001-of-00003.parquet", &parquet_bytes(&text_records("text", &["b"])).unwrap()).unwrap();
    let rows = load_split_hub(&DataSource::hub("o/sharded"), &offline(cache.path()), "train", None, None).unwrap();
    assert_eq!(rows.iter().map(|r| r["text"].clone()).collect::<Vec<_>>(), vec![s("a"), s("b"), s("c")]);
}

/// Local directories: `<split>.jsonl`, `<split>.json` (lines or an array), `<split>.parquet`,
/// `<split>/*.parquet`; parquet preferred over JSON for the same split.
#[test]
fn local_dir_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_json_lines(&d.join("train.jsonl"), &text_records("text", &["one", "two"])).unwrap();
    write_file(&d.join("test.json"), br#"[{"text": "t1", "n": 1.5}, {"text": null, "n": 2}]"#).unwrap();
    write_parquet(&d.join("validation.parquet"), &text_records("text", &["v"])).unwrap();
    write_parquet(&d.join("extra/0000.parquet"), &text_records("text", &["e1"])).unwrap();
    write_parquet(&d.join("extra/0001.parquet"), &text_records("text", &["e2"])).unwrap();
    write_json_lines(&d.join("both.jsonl"), &text_records("text", &["json"])).unwrap();
    write_parquet(&d.join("both.parquet"), &text_records("text", &["parquet"])).unwrap();
    write_file(&d.join("dataset_info.json"), b"{}").unwrap();
    let src = DataSource::parse(d.to_str().unwrap()).unwrap();
    let hub = offline(d);
    let load = |split: &str| load_split_hub(&src, &hub, split, None, None).unwrap();
    assert_eq!(load("train")[1]["text"], s("two"));
    let test = load("test");
    assert_eq!(test[0]["n"], Field::Float(1.5));
    assert_eq!(test[1]["text"], Field::Null);
    assert_eq!(test[1]["n"], Field::Int(2));
    assert_eq!(load("validation")[0]["text"], s("v"));
    assert_eq!(load("extra").len(), 2);
    assert_eq!(load("both")[0]["text"], s("parquet"));
    // `dev` is an alias of `validation`.
    assert_eq!(load_split_hub(&src, &hub, "dev", None, None).unwrap()[0]["text"], s("v"));
    let e = err(load_split_hub(&src, &hub, "unlabelled", None, None));
    assert!(e.contains("no split `unlabelled`") && e.contains("both, extra, test, train, validation"), "{e}");
    assert!(!e.contains("dataset_info"), "{e}");
    // load_split (environment hub options) works the same for a local directory.
    assert_eq!(load_split(&src, "train", None).unwrap().len(), 2);
    // An empty directory says it has no data files.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("notes.md"), "x").unwrap();
    let e = err(load_split(&DataSource::local(empty.path()), "train", None));
    assert!(e.contains("no data files") && e.contains("notes.md"), "{e}");
}

/// M2D2's hub layout: one `data/<domain>.tar.gz` per domain (config) holding
/// `<domain>/{train,valid,test}.txt`, one stripped line per row; `validation` finds `valid`.
#[test]
fn archives_per_config_m2d2_layout() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "machelreid/m2d2", "main", COMMIT).unwrap();
    for domain in ["cs.CL", "Society"] {
        let train = format!("{domain} one\n  {domain} two  \n\n{domain} three\n");
        let valid = format!("{domain} valid\n");
        let test = format!("{domain} test\r\n");
        let t = format!("{domain}/train.txt");
        let v = format!("{domain}/valid.txt");
        let x = format!("{domain}/test.txt");
        let tgz = tar_gz_bytes(&[(&t, train.as_bytes()), (&v, valid.as_bytes()), (&x, test.as_bytes())]);
        hub_file(&snap, &format!("data/{domain}.tar.gz"), &tgz).unwrap();
    }
    hub_file(&snap, "m2d2.py", b"import datasets").unwrap();
    hub_file(&snap, "split_names.txt", b"cs.CL\nSociety\n").unwrap();
    hub_file(&snap, "README.md", b"# M2D2").unwrap();
    let src = DataSource::hub("machelreid/m2d2");
    let hub = offline(cache.path());
    let train = load_split_hub(&src, &hub, "train", Some("Society"), None).unwrap();
    let texts: Vec<Field> = train.iter().map(|r| r[TEXT_COLUMN].clone()).collect();
    assert_eq!(texts, vec![s("Society one"), s("Society two"), s(""), s("Society three")]);
    let val = load_split_hub(&src, &hub, "validation", Some("cs.CL"), Some(&["text"])).unwrap();
    assert_eq!(val, vec![rec(&[("text", s("cs.CL valid"))])]);
    assert_eq!(load_split_hub(&src, &hub, "test", Some("cs.CL"), None).unwrap()[0]["text"], s("cs.CL test"));
    let found = find_split_in(&src.files(&hub), "valid", Some("Society")).unwrap();
    assert_eq!(
        (found.format, found.members.clone(), found.config.as_deref()),
        (Format::Text, vec!["Society/valid.txt".to_string()], Some("Society"))
    );
    // A text file has only the `text` column.
    let e = err(load_split_hub(&src, &hub, "test", Some("cs.CL"), Some(&["content"])));
    assert!(e.contains("no column `content`") && e.contains("available columns: text"), "{e}");
    let e = err(load_split_hub(&src, &hub, "train", None, None));
    assert!(e.contains("no data files outside archives") && e.contains("Society, cs.CL"), "{e}");
    let e = err(load_split_hub(&src, &hub, "train", Some("Math"), None));
    assert!(e.contains("(config `Math`)") && e.contains("Society, cs.CL"), "{e}");
    let e = err(load_split_hub(&src, &hub, "extra", Some("cs.CL"), None));
    assert!(e.contains("archive data/cs.CL.tar.gz: no member `cs.CL/extra.txt`"), "{e}");
    assert!(e.contains("cs.CL/test.txt, cs.CL/train.txt, cs.CL/valid.txt"), "{e}");
    assert_eq!(archive_members(&found.paths[0]).unwrap(), vec!["Society/test.txt", "Society/train.txt", "Society/valid.txt"]);
    // LM blocks straight from the archive's lines.
    let tok = word_tokenizer(&["Society", "one", "two", "three"], TokenizerStyle::Gpt2);
    let (blocks, skips) = lm::token_blocks(lm::texts(&train, "text").unwrap(), &tok, 3).unwrap();
    assert_eq!((blocks.len(), skips.empty), (2, 1));
}

/// M2D2's S2ORC domains as the hub names them (`m2d2_split_names.py`): level-1 archives
/// `<domain>_l1.tar.gz`, the capitalised `Art` and `Philosophy`, bare arXiv archives beside
/// them; a level-1 archive that also holds its level-2 folders is read at `<domain>/<split>.txt`
/// only. Unknown names get the nearest real ones suggested.
#[test]
fn m2d2_s2orc_level1_archives_read_exact_members_and_suggest_names() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "machelreid/m2d2", "main", COMMIT).unwrap();
    let archive = |domain: &str, nested: &[&str]| {
        let mut members: Vec<(String, String)> = Vec::new();
        for split in ["train", "valid", "test"] {
            members.push((format!("{domain}/{split}.txt"), format!("{domain} {split} one\n{domain} {split} two\n")));
            for sub in nested {
                members.push((format!("{domain}/{sub}/{split}.txt"), format!("{sub} {split} again\n")));
            }
        }
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, t)| (n.as_str(), t.as_bytes())).collect();
        hub_file(&snap, &format!("data/{domain}.tar.gz"), &tar_gz_bytes(&refs)).unwrap();
    };
    archive("math_l1", &["math.AG", "math.CO"]);
    archive("astro-ph_l1", &["astro-ph.CO", "astro-ph.GA"]);
    archive("astro-ph", &[]);
    archive("Art", &[]);
    archive("Philosophy", &[]);
    archive("cs_l1", &["cs.CL"]);
    let src = DataSource::hub("machelreid/m2d2");
    let hub = offline(cache.path());
    let train = load_split_hub(&src, &hub, "train", Some("math_l1"), None).unwrap();
    assert_eq!(train, text_records("text", &["math_l1 train one", "math_l1 train two"]), "level-2 folders are not read");
    let found = find_split_in(&src.files(&hub), "validation", Some("astro-ph_l1")).unwrap();
    assert_eq!(found.members, vec!["astro-ph_l1/valid.txt".to_string()]);
    assert_eq!(load_split_hub(&src, &hub, "test", Some("Art"), None).unwrap().len(), 2);
    // The names of configs/lm-m2d2-s2orc.toml before the fix: each says what to use instead.
    for (asked, want) in
        [("math", "`math_l1`"), ("art", "`Art`"), ("philosophy", "`Philosophy`"), ("cs", "`cs_l1`"), ("MATH_L1", "`math_l1`")]
    {
        let e = err(load_split_hub(&src, &hub, "train", Some(asked), None));
        assert!(e.contains(&format!("there is no config `{asked}`: did you mean {want}")), "{asked}: {e}");
    }
    let e = err(load_split_hub(&src, &hub, "train", Some("zoology"), None));
    assert!(e.contains("there is no config `zoology`") && !e.contains("did you mean"), "{e}");
    assert_eq!(nearest_names("astro-ph", ["astro-ph_l1", "astro-ph", "Art"]), vec!["astro-ph", "astro-ph_l1"]);
    assert_eq!(nearest_names("Physics", ["physics_l1", "Philosophy"]), vec!["physics_l1"]);

    // An archive of another shape: no `<config>/<split>.txt`; the error lists its members.
    let odd = tar_gz_bytes(&[("train.txt", b"top level\n"), ("econ_l1/econ.GN/train.txt", b"nested\n")]);
    hub_file(&snap, "data/econ_l1.tar.gz", &odd).unwrap();
    let e = err(load_split_hub(&src, &hub, "train", Some("econ_l1"), None));
    assert!(e.contains("no member `econ_l1/train.txt`") && e.contains("2 members are: econ_l1/econ.GN/train.txt, train.txt"), "{e}");
    assert_eq!(
        archive_member(&["x/valid.txt".into(), "x/a/validation.txt".into()], "x", "validation").unwrap(),
        "x/valid.txt",
        "the alias at the top, never the name deeper down"
    );
}

/// A split with two files for one shard index (as the Stanford Cars repositories' history
/// had), or with files of two shardings, is refused like a missing shard, naming the files.
#[test]
fn duplicate_shards_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "Multimodal-Fatima/StanfordCars_train", "main", COMMIT).unwrap();
    let shard = |texts: &[&str]| parquet_bytes(&text_records("text", texts)).unwrap();
    hub_file(&snap, "data/train-00000-of-00002-2d5a7b3c.parquet", &shard(&["a"])).unwrap();
    hub_file(&snap, "data/train-00001-of-00002-9f01e2aa.parquet", &shard(&["b"])).unwrap();
    let src = DataSource::hub("Multimodal-Fatima/StanfordCars_train");
    let hub = offline(cache.path());
    assert_eq!(load_split_hub(&src, &hub, "train", None, None).unwrap().len(), 2);
    hub_file(&snap, "data/train-00000-of-00002-77c41d05.parquet", &shard(&["a"])).unwrap();
    let e = err(load_split_hub(&src, &hub, "train", None, None));
    assert!(e.contains("duplicate shards") && e.contains("shard 00000 of 2 is there 2 times"), "{e}");
    assert!(e.contains("data/train-00000-of-00002-2d5a7b3c.parquet") && e.contains("data/train-00000-of-00002-77c41d05.parquet"), "{e}");
    // Two shardings of the same split in one folder.
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_snapshot(cache.path(), "o/resharded", "main", COMMIT).unwrap();
    hub_file(&snap, "data/test-00000-of-00001.parquet", &shard(&["a", "b"])).unwrap();
    hub_file(&snap, "data/test-00000-of-00002.parquet", &shard(&["a"])).unwrap();
    hub_file(&snap, "data/test-00001-of-00002.parquet", &shard(&["b"])).unwrap();
    let e = err(load_split_hub(&DataSource::hub("o/resharded"), &offline(cache.path()), "test", None, None));
    assert!(e.contains("duplicate shards") && e.contains("2 shardings (of 1, of 2)"), "{e}");
}

#[test]
fn text_files_and_split_aliases_in_local_dirs() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("train.txt"), b"first line\nsecond line").unwrap();
    write_json_lines(&dir.path().join("dev.jsonl"), &text_records("text", &["d"])).unwrap();
    write_file(&dir.path().join("LICENSE.txt"), b"MIT").unwrap();
    let src = DataSource::local(dir.path());
    let hub = offline(dir.path());
    let train = load_split_hub(&src, &hub, "train", None, None).unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(train[1]["text"], s("second line"));
    assert_eq!(load_split_hub(&src, &hub, "validation", None, None).unwrap()[0]["text"], s("d"));
    let e = err(load_split_hub(&src, &hub, "test", None, None));
    assert!(e.contains("splits dev, train") && !e.contains("LICENSE"), "{e}");
    // A local directory of archives works the same.
    let arch = tempfile::tempdir().unwrap();
    write_file(&arch.path().join("math.tar.gz"), &tar_gz_bytes(&[("./math/train.jsonl", b"{\"text\": \"x\"}\n")])).unwrap();
    let rows = load_split(&DataSource::local(arch.path()), "train", Some("math")).unwrap();
    assert_eq!(rows[0]["text"], s("x"));
    // The only archive serves when no config is given.
    assert_eq!(load_split(&DataSource::local(arch.path()), "train", None).unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Reading

#[test]
fn parquet_codecs_nulls_structs_and_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Record> = (0..7)
        .map(|i| {
            rec(&[
                ("text", if i == 3 { Field::Null } else { s(&format!("row {i}")) }),
                ("label", Field::Int(i - 1)),
                ("score", Field::Float(i as f64 / 2.0)),
                ("flag", Field::Bool(i % 2 == 0)),
                ("image", image_field(if i == 5 { None } else { Some(vec![i as u8; 3]) }, "p.png")),
            ])
        })
        .collect();
    for codec in [Codec::None, Codec::Snappy, Codec::Zstd, Codec::Gzip] {
        let p = dir.path().join(format!("{codec:?}.parquet"));
        write_parquet_with(&p, &rows, codec, 3).unwrap();
        let got = read_parquet(&p, None).unwrap();
        assert_eq!(got, rows, "{codec:?}");
        let proj = read_parquet(&p, Some(&["label", "text"])).unwrap();
        assert_eq!(proj[4].keys().collect::<Vec<_>>(), vec!["label", "text"]);
        assert_eq!(proj[4]["label"], Field::Int(3));
    }
    assert_eq!(rows[5]["image"].as_bytes(), None);
    assert_eq!(rows[4]["image"].as_bytes(), Some(&[4u8, 4, 4][..]));
    let e = err(read_parquet(&dir.path().join("Zstd.parquet"), Some(&["txt"])));
    assert!(e.contains("no column `txt`") && e.contains("flag, image, label, score, text"), "{e}");
    // Not a parquet file.
    let bad = dir.path().join("bad.parquet");
    std::fs::write(&bad, b"PAR1 nonsense").unwrap();
    assert!(err(read_parquet(&bad, None)).contains("bad.parquet"));
    // Bad JSON line names the line.
    let badj = dir.path().join("bad.jsonl");
    std::fs::write(&badj, "{\"a\": 1}\n\n{oops\n").unwrap();
    let e = err(read_json_lines(&badj, None));
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn missing_columns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("train.parquet"), &nli_records(&[("p", "h", 0)])).unwrap();
    write_json_lines(&dir.path().join("test.jsonl"), &nli_records(&[("p", "h", 0)])).unwrap();
    let src = DataSource::local(dir.path());
    let hub = offline(dir.path());
    for split in ["train", "test"] {
        let e = err(load_split_hub(&src, &hub, split, None, Some(&["premise", "sentence"])));
        assert!(e.contains("no column `sentence`") && e.contains("hypothesis, label, premise"), "{split}: {e}");
    }
    let rows = load_split_hub(&src, &hub, "train", None, None).unwrap();
    assert_eq!(column(&rows[0], "label").unwrap(), &Field::Int(0));
    let e = err(column(&rows[0], "labels"));
    assert!(e.contains("no column `labels`") && e.contains("hypothesis, label, premise"), "{e}");
    let tok = word_tokenizer(&["p", "h"], TokenizerStyle::Roberta);
    let e = err(nli::encode(&rows, &tok, "premise", "hypothesis", "gold_label", 16));
    assert!(e.contains("no column `gold_label`"), "{e}");
    let e = err(lm::texts(&rows, "text"));
    assert!(e.contains("no column `text`"), "{e}");
    let e = err(vision::decode(&rows, "img", "label", &vision::Preprocess::new(4)));
    assert!(e.contains("no column `img`"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Fake hub: listing and download

/// A fake hub serving dataset `repo` at `main` (commit `COMMIT`): the listing
/// `GET /api/datasets/<repo>/revision/main` and the files `GET /datasets/<repo>/resolve/main/<f>`
/// as `hf-hub` 0.4 fetches them (a `Range: bytes=0-0` probe, then the content).
fn fake_hub(repo: &'static str, files: Vec<(String, Vec<u8>)>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let downloads = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = downloads.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut request = String::new();
            let _ = r.read_line(&mut request);
            let mut start = 0usize;
            let mut probe = false;
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.split('-').next().and_then(|x| x.trim().parse().ok()).unwrap_or(0);
                    probe = v.trim() == "0-0";
                }
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            if path == format!("/api/datasets/{repo}/revision/main") {
                let siblings: Vec<_> = files.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let prefix = format!("/datasets/{repo}/resolve/main/");
            let file = path.strip_prefix(&prefix).and_then(|f| files.iter().find(|(n, _)| n == f));
            let Some((_, body)) = file else {
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let end = if probe { 1.min(body.len()) } else { body.len() };
            if !probe {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let chunk = &body[start.min(end)..end];
            let etag = body.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
            let _ = write!(
                s,
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\netag: \"{etag:016x}\"\r\ncontent-range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                end.max(1) - 1,
                body.len(),
                chunk.len()
            );
            let _ = s.write_all(chunk);
        }
    });
    (format!("http://127.0.0.1:{port}"), downloads)
}

#[test]
fn downloads_splits_from_the_hub_into_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let files = vec![
        ("README.md".to_string(), b"# d".to_vec()),
        ("data/train-00000-of-00002.parquet".to_string(), parquet_bytes(&text_records("text", &["a", "b"])).unwrap()),
        ("data/train-00001-of-00002.parquet".to_string(), parquet_bytes(&text_records("text", &["c"])).unwrap()),
        ("data/test-00000-of-00001.parquet".to_string(), parquet_bytes(&text_records("text", &["t"])).unwrap()),
    ];
    let (endpoint, downloads) = fake_hub("org/ds", files);
    let hub = HubOptions { cache_dir: cache.path().to_path_buf(), offline: false, endpoint, token: None, progress: false };
    let src = DataSource::hub("org/ds");
    let rows = load_split_hub(&src, &hub, "train", None, None).unwrap();
    assert_eq!(rows.iter().map(|r| r["text"].clone()).collect::<Vec<_>>(), vec![s("a"), s("b"), s("c")]);
    assert_eq!(downloads.load(std::sync::atomic::Ordering::SeqCst), 2);
    let e = err(load_split_hub(&src, &hub, "validation", None, None));
    assert!(e.contains("no split `validation`") && e.contains("test, train") && e.contains("the hub"), "{e}");
    // Now cached: offline reading works, and online reading does not download again.
    let again = load_split_hub(&src, &offline(cache.path()), "train", None, None).unwrap();
    assert_eq!(again, rows);
    load_split_hub(&src, &hub, "train", None, None).unwrap();
    assert_eq!(downloads.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Unreachable hub: the error says so and how to work offline.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    drop(l);
    let hub = HubOptions { cache_dir: cache.path().to_path_buf(), offline: false, endpoint: closed, token: None, progress: false };
    let e = err(load_split_hub(&DataSource::hub("org/other"), &hub, "train", None, None));
    assert!(e.contains("cannot reach the hub") && e.contains("HF_HUB_OFFLINE"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Language modelling

#[test]
fn lm_blocks_join_with_eos_and_shift_targets() {
    let words = ["a", "b", "c", "d", "e"];
    let tok = word_tokenizer(&words, TokenizerStyle::Gpt2);
    let id = |w: &str| tok.token_to_id(w).unwrap();
    let eos = id("<|endoftext|>");
    assert_eq!(lm::eos_id(&tok), Some(eos));
    let texts = vec!["a b c".to_string(), "".to_string(), "  ".to_string(), "d e".to_string()];
    let (stream, skips) = lm::token_stream(&texts, &tok, Some(eos)).unwrap();
    assert_eq!(stream, vec![id("a"), id("b"), id("c"), eos, id("d"), id("e"), eos]);
    assert_eq!(skips.empty, 2);
    let (blocks, skips) = lm::token_blocks(&texts, &tok, 2).unwrap();
    assert_eq!(skips.empty, 2);
    assert_eq!(skips.to_string(), "2 rows skipped (2 empty)");
    // Blocks of 3 tokens with stride 2: every token after the first is a target once.
    assert_eq!(blocks, vec![vec![id("a"), id("b"), id("c")], vec![id("c"), eos, id("d")], vec![id("d"), id("e"), eos]]);
    let b = lm::batch(&blocks, &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[3, 2]);
    assert_eq!(b.inputs.to_vec2::<u32>().unwrap(), vec![vec![id("a"), id("b")], vec![id("c"), eos], vec![id("d"), id("e")]]);
    assert_eq!(b.targets.to_vec2::<u32>().unwrap(), vec![vec![id("b"), id("c")], vec![eos, id("d")], vec![id("e"), eos]]);
    assert_eq!(b.mask.unwrap().to_vec2::<u32>().unwrap(), vec![vec![1, 1]; 3]);
    // The remainder is dropped: 7 tokens, blocks of 4+1 → one block.
    let (blocks, _) = lm::token_blocks(&texts, &tok, 4).unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].len(), 5);
    // Longer: block count and lengths.
    let long: Vec<String> = (0..50).map(|i| words[..(i % 5) + 1].join(" ")).collect();
    let (stream, _) = lm::token_stream(&long, &tok, Some(eos)).unwrap();
    let sequential: Vec<u32> = long
        .iter()
        .flat_map(|t| tok.encode(t.as_str(), false).unwrap().get_ids().iter().copied().chain([eos]).collect::<Vec<_>>())
        .collect();
    assert_eq!(stream, sequential, "parallel tokenisation keeps document order");
    let (blocks, _) = lm::token_blocks(&long, &tok, 8).unwrap();
    assert_eq!(blocks.len(), (stream.len() - 1) / 8);
    assert!(blocks.iter().all(|b| b.len() == 9));
    for k in 1..blocks.len() {
        assert_eq!(blocks[k][0], blocks[k - 1][8]);
    }
    assert!(err(lm::token_blocks(&texts, &tok, 0)).contains("block length"));
    assert!(err(lm::batch(&[], &Device::Cpu)).contains("at least one block"));
    // Text column extraction: nulls are empty texts, numbers are errors naming the row.
    let rows = vec![rec(&[("text", s("a b"))]), rec(&[("text", Field::Null)]), rec(&[("text", Field::Int(3))])];
    assert!(err(lm::texts(&rows, "text")).contains("row 2"));
    assert_eq!(lm::texts(&rows[..2], "text").unwrap(), vec!["a b".to_string(), String::new()]);
    // A tokenizer without any EOS joins documents directly.
    let bert = word_tokenizer(&words, TokenizerStyle::Bert);
    assert_eq!(lm::eos_id(&bert), bert.token_to_id("[SEP]"));
}

// ---------------------------------------------------------------------------------------
// NLI

#[test]
fn nli_pairs_use_the_tokenizer_template_truncate_and_pad() {
    let words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"];
    let tok = word_tokenizer(&words, TokenizerStyle::Roberta);
    let id = |w: &str| tok.token_to_id(w).unwrap();
    let (bos, sep, pad) = (id("<s>"), id("</s>"), id("<pad>"));
    assert_eq!(nli::pad_id(&tok), pad);
    let rows = vec![
        rec(&[("premise", s("the cat sat")), ("hypothesis", s("a dog")), ("label", Field::Int(2))]),
        rec(&[("premise", s("the cat sat on the mat")), ("hypothesis", s("a dog ran")), ("label", Field::Int(0))]),
        rec(&[("premise", s("the cat")), ("hypothesis", s("a dog")), ("label", Field::Int(-1))]),
        rec(&[("premise", s("")), ("hypothesis", s("a dog")), ("label", Field::Int(1))]),
        rec(&[("premise", s("cat")), ("hypothesis", Field::Null), ("label", Field::Int(1))]),
        rec(&[("premise", s("cat")), ("hypothesis", s("dog")), ("label", Field::Null)]),
        rec(&[("premise", s("cat")), ("hypothesis", s("dog"))]),
    ];
    let (ex, skips) = nli::encode(&rows, &tok, "premise", "hypothesis", "label", 10).unwrap();
    assert_eq!(skips, Skips { empty: 2, missing_label: 3, ..Skips::default() });
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].ids, vec![bos, id("the"), id("cat"), id("sat"), sep, sep, id("a"), id("dog"), sep]);
    assert_eq!(ex[0].type_ids, vec![0; 9], "XLM-R's template gives every token type 0");
    assert_eq!(ex[0].label, 2);
    // 6 + 3 words + 4 specials = 13 > 10: the longer side (premise) is cut first → 3 + 3.
    assert_eq!(ex[1].ids, vec![bos, id("the"), id("cat"), id("sat"), sep, sep, id("a"), id("dog"), id("ran"), sep]);
    let b = nli::batch(&ex, pad, &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[2, 10]);
    let inputs = b.inputs.to_vec2::<u32>().unwrap();
    assert_eq!(inputs[0][9], pad);
    assert_eq!(inputs[1], ex[1].ids);
    assert_eq!(b.mask.unwrap().to_vec2::<u32>().unwrap(), vec![vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 0], vec![1; 10]]);
    assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![2, 0]);
    assert_eq!(b.token_types.unwrap().to_vec2::<u32>().unwrap(), vec![vec![0; 10]; 2]);
    // Batches over picked examples pad to their own longest.
    let b = nli::batch_refs(&[&ex[0]], pad, &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[1, 9]);

    // BERT's template.
    let bert = word_tokenizer(&words, TokenizerStyle::Bert);
    let bid = |w: &str| bert.token_to_id(w).unwrap();
    let (ex, _) = nli::encode(&rows[..1], &bert, "premise", "hypothesis", "label", 64).unwrap();
    assert_eq!(ex[0].ids, vec![bid("[CLS]"), bid("the"), bid("cat"), bid("sat"), bid("[SEP]"), bid("a"), bid("dog"), bid("[SEP]")]);
    assert_eq!(nli::pad_id(&bert), bid("[PAD]"));
    // The tokenizer's segment ids are kept (the second sentence and its [SEP] are type 1)
    // and reach the batch, padded with 0.
    assert_eq!(ex[0].type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1]);
    let (ex2, _) = nli::encode(&rows[..2], &bert, "premise", "hypothesis", "label", 64).unwrap();
    let b = nli::batch(&ex2, bid("[PAD]"), &Device::Cpu).unwrap();
    let types = b.token_types.unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(types[0], vec![0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0], "padding gets type 0");
    assert_eq!(types[1], vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
    let mut bad = ex2[0].clone();
    bad.type_ids.pop();
    assert!(err(nli::batch(&[bad], 0, &Device::Cpu)).contains("token type ids"));

    // A max_len that cannot hold the special tokens is an error, not a crash; the smallest
    // one that can keeps one token of each side.
    let e = err(nli::encode(&rows[..2], &tok, "premise", "hypothesis", "label", 5));
    assert!(e.contains("max_len 5") && e.contains("4 special tokens") && e.contains("at least 6"), "{e}");
    let (ex, _) = nli::encode(&rows[..2], &tok, "premise", "hypothesis", "label", 6).unwrap();
    assert_eq!(ex[1].ids, vec![bos, id("the"), sep, sep, id("a"), sep]);
    // A non-integer label is an error naming the row and the column.
    let bad = vec![rec(&[("premise", s("cat")), ("hypothesis", s("dog")), ("label", s("entailment"))])];
    let e = err(nli::encode(&bad, &tok, "premise", "hypothesis", "label", 10));
    assert!(e.contains("label") && e.contains("row 0"), "{e}");
    assert!(err(nli::batch(&[], pad, &Device::Cpu)).contains("at least one"));
}

// ---------------------------------------------------------------------------------------
// Vision

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < 1e-6, "element {i}: {x} vs {y}");
    }
}

#[test]
fn images_decode_resize_and_normalise() {
    let pre = vision::Preprocess::new(4);
    assert_eq!(pre.mean, [0.5; 3]);
    // A 2×2 solid colour, resized to 4×4: every pixel is the normalised constant.
    let rows = image_records("image", "label", &[(png_solid(2, 2, [255, 0, 51]), 3)]);
    let (ex, skips) = vision::decode(&rows, "image", "label", &pre).unwrap();
    assert!(skips.is_empty());
    let want: Vec<f32> = [1.0f32, -1.0, (51.0 / 255.0 - 0.5) / 0.5].iter().flat_map(|v| vec![*v; 16]).collect();
    assert_close(&ex[0].0, &want);
    assert_eq!(ex[0].1, 3);
    // Bilinear like PIL (ViTImageProcessor): columns [0, 255] → [0, 64, 191, 255].
    let px: Vec<u8> = [0u8, 255, 0, 255].iter().flat_map(|v| [*v; 3]).collect();
    let rows = image_records("image", "label", &[(png_rgb(2, 2, &px), 0)]);
    let (ex, _) =
        vision::decode(&rows, "image", "label", &vision::Preprocess { image_size: 4, mean: [0.0; 3], std: [1.0; 3], rescale: 1.0 })
            .unwrap();
    assert_eq!(&ex[0].0[..4], &[0.0, 64.0, 191.0, 255.0]);
    // Shrinking a 4×4 checkerboard-free solid to 2×2 keeps the colour; JPEG and grey decode.
    let big = image_records("image", "label", &[(png_solid(8, 8, [10, 20, 30]), 1), (jpeg_solid(8, 8, [200, 100, 50]), 2)]);
    let raw = vision::Preprocess { image_size: 2, mean: [0.0; 3], std: [1.0; 3], rescale: 1.0 };
    let (ex, _) = vision::decode(&big, "image", "label", &raw).unwrap();
    assert_close(&ex[0].0, &[10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0, 30.0, 30.0, 30.0, 30.0]);
    for (c, v) in [200.0f32, 100.0, 50.0].iter().enumerate() {
        assert!(ex[1].0[c * 4..c * 4 + 4].iter().all(|x| (x - v).abs() <= 3.0), "JPEG channel {c}: {:?}", ex[1].0);
    }
    let mut grey = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_pixel(3, 3, image::Luma([77])).write_to(&mut grey, image::ImageFormat::Png).unwrap();
    let mut rgba = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_pixel(3, 3, image::Rgba([1, 2, 3, 0])).write_to(&mut rgba, image::ImageFormat::Png).unwrap();
    let rows = image_records("img", "fine_label", &[(grey.into_inner(), 5), (rgba.into_inner(), 6)]);
    let (ex, _) = vision::decode(&rows, "img", "fine_label", &raw).unwrap();
    assert_close(&ex[0].0, &[77.0; 12]);
    assert_close(&ex[1].0, &[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]);
    // Batches: [B, 3, H, W] and labels.
    let b = vision::batch(&ex, &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[2, 3, 2, 2]);
    assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![5, 6]);
    assert!(b.mask.is_none());
}

#[test]
fn undecodable_images_and_missing_labels_are_counted_skips() {
    let mut rows = image_records(
        "image",
        "label",
        &[(png_solid(2, 2, [1, 1, 1]), 0), (b"not an image".to_vec(), 1), (png_solid(2, 2, [9, 9, 9]), -1)],
    );
    rows.push(rec(&[("image", image_field(None, "only/a/path.jpg")), ("label", Field::Int(2))]));
    rows.push(rec(&[("image", Field::Bytes(png_solid(2, 2, [5, 5, 5]))), ("label", Field::Int(4))]));
    let pre = vision::Preprocess::new(2);
    let (ex, skips) = vision::decode(&rows, "image", "label", &pre).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(skips, Skips { undecodable: 2, missing_label: 1, ..Skips::default() });
    assert_eq!(skips.to_string(), "3 rows skipped (2 undecodable, 1 missing label)");
    assert_eq!(ex.iter().map(|e| e.1).collect::<Vec<_>>(), vec![0, 4]);
    // The lazy set skips the same rows and batches the same pixels.
    let (imgs, skips2) = vision::Images::from_records(&rows, "image", "label").unwrap();
    assert_eq!(skips2, skips);
    assert_eq!(imgs.rows, vec![0, 4]);
    let b = imgs.batch(&[1, 0], &pre, &Device::Cpu).unwrap();
    assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![4, 0]);
    let flat = b.inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(&flat[..12], &ex[1].0);
    assert_close(&flat[12..], &ex[0].0);
    assert!(err(imgs.batch(&[2], &pre, &Device::Cpu)).contains("out of range"));
}

#[test]
fn preprocess_from_configs() {
    use serde_json::json;
    // google/vit-base-patch16-224-in21k's preprocessor_config.json.
    let vit = json!({"do_normalize": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "resample": 2, "size": 224, "feature_extractor_type": "ViTFeatureExtractor"});
    let p = vision::Preprocess::from_json(Some(&vit), None).unwrap();
    assert_eq!(p, vision::Preprocess { image_size: 224, mean: [0.5; 3], std: [0.5; 3], rescale: 1.0 / 255.0 });
    let imagenet = json!({"size": {"height": 384, "width": 384}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "rescale_factor": 0.00392156862745098, "do_rescale": true});
    let p = vision::Preprocess::from_json(Some(&imagenet), Some(&json!({"image_size": 224}))).unwrap();
    assert_eq!(p.image_size, 384);
    assert_eq!(p.std, [0.229, 0.224, 0.225]);
    let p = vision::Preprocess::from_json(None, Some(&json!({"image_size": 32}))).unwrap();
    assert_eq!(p, vision::Preprocess::new(32));
    assert_eq!(vision::Preprocess::from_json(None, None).unwrap().image_size, 224);
    let p = vision::Preprocess::from_json(Some(&json!({"do_normalize": false, "do_rescale": false})), None).unwrap();
    assert_eq!((p.mean, p.std, p.rescale), ([0.0; 3], [1.0; 3], 1.0));
    assert!(err(vision::Preprocess::from_json(Some(&json!({"size": {"height": 2, "width": 3}})), None)).contains("non-square"));
    // From a model directory (tram-hub ModelFiles).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "vit", "image_size": 64}"#).unwrap();
    let files = tram_hub::ModelSource::local(dir.path()).files(&HubOptions::offline(dir.path()));
    assert_eq!(vision::Preprocess::from_model(&files).unwrap(), vision::Preprocess::new(64));
    std::fs::write(dir.path().join("preprocessor_config.json"), r#"{"size": 48, "image_mean": 0.1}"#).unwrap();
    let p = vision::Preprocess::from_model(&files).unwrap();
    assert_eq!((p.image_size, p.mean), (48, [0.1; 3]));
}

// ---------------------------------------------------------------------------------------
// Loader

/// `permutation(10, 7, 0)` as the trainer's `Shuffled` drew it before the loader moved here.
const PINNED_ORDER: [usize; 10] = [4, 2, 1, 5, 0, 6, 9, 8, 7, 3];

#[test]
fn loader_is_deterministic_and_resumes_exactly() {
    let draw = |l: &mut Loader, k: usize| (0..k).map(|_| l.next_indices()).collect::<Vec<_>>();
    let mut a = Loader::new(10, 4, 7).unwrap();
    let mut b = Loader::new(10, 4, 7).unwrap();
    let xs = draw(&mut a, 6);
    assert_eq!(xs, draw(&mut b, 6));
    // 2 full batches per epoch (the incomplete third is dropped), each epoch from its own
    // permutation, epochs differ.
    assert_eq!(a.batches_per_epoch(), 2);
    assert!(xs.iter().all(|x| x.len() == 4));
    let epochs: Vec<Vec<usize>> = xs.chunks(2).map(|c| c.concat()).collect();
    for (e, seen) in epochs.iter().enumerate() {
        assert_eq!(seen[..], permutation(10, 7, e as u64)[..8]);
        let mut s = permutation(10, 7, e as u64);
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1]);
    // The order is the one the trainer has always used (checkpoints of earlier runs resume to
    // the same batches): pinned.
    assert_eq!(permutation(10, 7, 0), PINNED_ORDER);
    assert_eq!(a.position(), LoaderState { epoch: 2, next: 2, served: 6, items: 10, batch_size: 4, seed: 7 });
    assert_ne!(draw(&mut Loader::new(10, 4, 8).unwrap(), 3), xs[..3].to_vec());
    // Fewer examples than a batch: one batch of all of them per epoch.
    let mut small = Loader::new(3, 4, 0).unwrap();
    assert_eq!((small.batches_per_epoch(), small.next_indices().len()), (1, 3));

    // Resume mid-epoch through a serialized state.
    let mut c = Loader::new(10, 4, 7).unwrap();
    let _ = draw(&mut c, 3);
    let state = c.position();
    assert_eq!(state, LoaderState { epoch: 1, next: 1, served: 3, items: 10, batch_size: 4, seed: 7 });
    let json = serde_json::to_string(&state).unwrap();
    let mut d = Loader::new(10, 4, 7).unwrap();
    d.restore(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(draw(&mut d, 3), xs[3..].to_vec());
    assert_eq!(d.served(), 6);
    let e = Loader::new(10, 4, 99).unwrap().restore(&state).unwrap_err().to_string();
    assert!(e.contains("seed 7") && e.contains("seed 99") && e.contains("the data changed"), "{e}");
    assert!(Loader::new(9, 4, 7).unwrap().restore(&state).is_err());
    assert!(Loader::new(0, 4, 0).is_err());
    // Sequential evaluation batches.
    assert_eq!(sequential(5, 2).collect::<Vec<_>>(), vec![vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn skips_display_and_sum() {
    let mut a = Skips::default();
    assert_eq!(a.to_string(), "no rows skipped");
    a += Skips { too_long: 1, ..Skips::default() };
    assert_eq!(a.to_string(), "1 row skipped (1 too long)");
    a.add(&Skips { empty: 2, too_long: 0, undecodable: 3, missing_label: 4, invalid_utf8_bytes: 0 });
    assert_eq!(a.total(), 10);
}

#[test]
fn invalid_utf8_in_a_text_file_is_kept_raw_and_counted_when_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.txt");
    // UTF-8, Latin-1 (`é` as 0xE9), a binary run, a valid multi-byte character.
    std::fs::write(&p, b"plain text\n  caf\xe9 au lait \n\x00\x80\x81\xff binary\nna\xc3\xafve\n").unwrap();
    let rows = read_text_lines(&p, None).unwrap();
    assert_eq!(rows[0]["text"], s("plain text"));
    assert_eq!(rows[1]["text"], Field::Bytes(b"caf\xe9 au lait".to_vec()), "not decoded silently");
    assert_eq!(rows[3]["text"], s("naïve"));
    let (texts, replaced) = lm::decode_texts(&rows, "text").unwrap();
    assert_eq!(replaced, 1 + 3, "0xE9, then 0x80 0x81 0xFF (0x00 is valid UTF-8)");
    assert_eq!(texts[1], "caf\u{fffd} au lait");
    assert_eq!(texts[2], "\0\u{fffd}\u{fffd}\u{fffd} binary");
    assert_eq!(lm::texts(&rows, "text").unwrap(), texts);
    assert_eq!(lm::invalid_utf8_bytes("naïve".as_bytes()), 0);
    let skips = Skips { empty: 1, invalid_utf8_bytes: 4, ..Skips::default() };
    assert_eq!(skips.to_string(), "1 row skipped (1 empty); 4 invalid UTF-8 bytes replaced by U+FFFD");
    assert!(!skips.is_clean() && Skips { invalid_utf8_bytes: 4, ..Skips::default() }.is_empty());
}
