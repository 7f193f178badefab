//! TRAM inside a plain candle training loop.
//!
//! A two-layer classifier on a synthetic task is "pretrained" on one input distribution and
//! fine-tuned on a shifted one with Adam and with TRAM-x (`noise+ball+adam`); the example
//! prints the loss on both distributions after fine-tuning.
//!
//! `cargo run --release -p tram-tests --example plain_candle_loop`

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use tram::{Batch, Logits, Mode, Model, Optimizer, OptimizerConfig, Params, Weights};

/// Any candle model becomes trainable by TRAM by naming its variables and computing its
/// forward from the weights it is handed (live variables, or a snapshot such as θ₀).
struct Mlp {
    params: Params,
}

impl Mlp {
    fn new(dev: &Device) -> Result<Self> {
        let var = |shape: (usize, usize)| Var::from_tensor(&(Tensor::randn(0f32, 1.0, shape, dev)? / (shape.1 as f64).sqrt())?);
        Ok(Self {
            params: Params::new([
                ("hidden.weight".to_string(), var((64, 16))?),
                ("hidden.bias".to_string(), Var::zeros(64, DType::F32, dev)?),
                ("out.weight".to_string(), var((3, 64))?),
                ("out.bias".to_string(), Var::zeros(3, DType::F32, dev)?),
            ])?,
        })
    }
}

impl Model for Mlp {
    fn params(&self) -> &Params {
        &self.params
    }
    // The input features are the "embeddings" that TRAM-x perturbs.
    fn embed(&self, _w: &dyn Weights, batch: &Batch, _mode: Mode) -> tram::Result<Tensor> {
        Ok(batch.inputs.clone())
    }
    fn forward_embeds(&self, w: &dyn Weights, x: &Tensor, batch: &Batch, _mode: Mode) -> tram::Result<Logits> {
        let h = x.matmul(&w.weight("hidden.weight")?.t()?)?.broadcast_add(&w.weight("hidden.bias")?)?.gelu()?;
        let logits = h.matmul(&w.weight("out.weight")?.t()?)?.broadcast_add(&w.weight("out.bias")?)?;
        Ok(Logits { logits, targets: batch.targets.clone() })
    }
}

/// Points around three class centres, shifted by `shift` (a new "domain").
fn domain(n: usize, shift: f32, dev: &Device) -> Result<Batch> {
    let x = Tensor::randn(0f32, 1.0, (n, 16), dev)?;
    let labels = x.narrow(1, 0, 3)?.argmax(D::Minus1)?;
    let x = (x.broadcast_add(&Tensor::full(shift, 16, dev)?))?;
    Ok(Batch::new(x, labels))
}

fn loss(model: &Mlp, batch: &Batch) -> Result<f32> {
    let logits = model.forward(&model.params().detached(), batch, Mode::EVAL)?;
    Ok(model.loss(&logits)?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let registry = tram_plugins::registry()?;
    let (source, target) = (domain(512, 0.0, &dev)?, domain(512, 1.5, &dev)?);

    // "Pretrain" on the source domain with plain Adam.
    let pretrained = Mlp::new(&dev)?;
    let mut adam = Optimizer::new(&registry, OptimizerConfig::new("adam", 1e-2))?;
    for _ in 0..200 {
        adam.step(&pretrained, std::slice::from_ref(&source))?;
    }
    let theta0: Vec<Tensor> = pretrained.params().iter().map(|p| p.var.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;

    println!("{:<22} {:>12} {:>12} {:>8}", "method", "target loss", "source loss", "mean δ");
    for method in ["adam", "tram-noise", "tram-pretrained"] {
        let model = Mlp::new(&dev)?;
        model.params().assign(&theta0)?;
        let config = OptimizerConfig::new(method, 1e-2).with("noise", "sigma", 1e-3);
        let mut opt = Optimizer::new(&registry, config)?;
        let mut delta = 0.0;
        for _ in 0..100 {
            // The whole loop: one call per step; micro-batches in the slice are accumulated.
            let report = opt.step(&model, std::slice::from_ref(&target))?;
            delta += report.delta.unwrap_or(0.0) / 100.0;
        }
        println!("{:<22} {:>12.4} {:>12.4} {:>8.2e}", opt.to_string(), loss(&model, &target)?, loss(&model, &source)?, delta);
    }
    Ok(())
}
