//! Load a checkpoint directory (hub layout) with tram and save it again with
//! `tram_hub::save_model`: `cargo run -p tram-hub --example resave -- <in-dir> <out-dir>`.
//! Used to check that Python `transformers` loads what tram saves (see apps/runtime/hub/README.md).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: resave <checkpoint-dir> <out-dir>");
    let model = tram_hub::load_model(&tram_hub::ModelSource::local(&args[1]), &tram_models::LoadOptions::default())?;
    tram_hub::save_model(std::path::Path::new(&args[2]), model.as_ref(), None)?;
    println!("saved {}", args[2]);
    Ok(())
}
