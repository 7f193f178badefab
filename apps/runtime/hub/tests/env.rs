//! Hub configuration from the environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`,
//! `HF_ENDPOINT`, `HF_TOKEN`). Environment variables are process-global, so everything runs in
//! this one test function, alone in its test binary.

mod common;

use candle_core::Device;
use common::*;
use tram_hub::*;

const VARS: &[&str] = &[
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "XDG_CACHE_HOME",
];

fn clear() {
    for v in VARS {
        std::env::remove_var(v);
    }
}

fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn environment_selects_cache_offline_mode_endpoint_and_token() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("hf-home");
    let cache = standard_cache(&home); // <HF_HOME>/hub, the default layout under HF_HOME
    clear();

    // HF_HOME → <HF_HOME>/hub; HF_HUB_OFFLINE=1 → offline; defaults otherwise.
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let hub = HubOptions::from_env();
    assert_eq!(hub.cache_dir, cache);
    assert!(hub.offline);
    assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(hub.token, None);

    // Resolution and model loading through the environment alone.
    let source: ModelSource = format!("{REPO}@v1").parse().unwrap();
    assert_eq!(source.files_from_env().config().unwrap()["tram_test_marker"], "v1");
    let model = load_model(&ModelSource::hub(REPO), &tram_models::LoadOptions::default()).unwrap();
    let word = tram::Weights::weight(model.params(), "bert.embeddings.word_embeddings.weight").unwrap();
    assert!(bitwise_eq(&word, &bert_weights(1)[0].1));

    // Offline with the repository absent: the error points at the cache variables, and no
    // download is attempted even though the endpoint would be unreachable.
    std::env::set_var("HF_ENDPOINT", closed_endpoint());
    let e = load_model(&ModelSource::hub("tram-test/absent"), &tram_models::LoadOptions::default()).err().unwrap();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("HF_HOME") && msg.contains("HF_HUB_OFFLINE") && msg.contains("tram-test/absent@main"), "{msg}");

    // Other truthy spellings; anything else is online.
    for (v, off) in [("true", true), ("ON", true), ("yes", true), ("0", false), ("false", false)] {
        std::env::set_var("HF_HUB_OFFLINE", v);
        assert_eq!(HubOptions::from_env().offline, off, "HF_HUB_OFFLINE={v}");
    }

    // Online, nothing cached, hub unreachable: said so.
    std::env::set_var("HF_HUB_OFFLINE", "0");
    let e = ModelSource::hub("tram-test/absent").files_from_env().config().unwrap_err();
    assert!(matches!(e, Error::HubUnreachable { .. }), "{e}");
    // Online with the files cached: served from the cache without the network.
    assert_eq!(ModelSource::hub(REPO).files_from_env().config().unwrap()["tram_test_marker"], "main");

    // HF_HUB_CACHE overrides HF_HOME; an empty cache there finds nothing.
    let other = root.path().join("other-cache");
    std::fs::create_dir_all(&other).unwrap();
    std::env::set_var("HF_HUB_CACHE", &other);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(HubOptions::from_env().cache_dir, other);
    let msg = ModelSource::hub(REPO).files_from_env().config().unwrap_err().to_string();
    assert!(msg.contains(&other.display().to_string()), "{msg}");
    std::env::set_var("HF_HUB_CACHE", &cache);
    assert!(ModelSource::hub(REPO).files_from_env().weights(&Device::Cpu, F32).is_ok());

    // Endpoint and token.
    std::env::set_var("HF_ENDPOINT", "https://mirror.example/");
    std::fs::write(home.join("token"), "hf_from_file\n").unwrap();
    let hub = HubOptions::from_env();
    assert_eq!(hub.endpoint, "https://mirror.example");
    assert_eq!(hub.token.as_deref(), Some("hf_from_file"));
    std::env::set_var("HF_TOKEN", "hf_from_env");
    assert_eq!(HubOptions::from_env().token.as_deref(), Some("hf_from_env"));

    // Without HF_HOME: XDG_CACHE_HOME/huggingface/hub.
    clear();
    std::env::set_var("XDG_CACHE_HOME", root.path().join("xdg"));
    assert_eq!(HubOptions::from_env().cache_dir, root.path().join("xdg").join("huggingface").join("hub"));
    assert!(!HubOptions::from_env().offline);
    clear();
}
