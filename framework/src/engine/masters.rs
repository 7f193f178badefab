//! Mixed precision: f32 master weights for a model whose parameters are bf16.
//!
//! The model's bf16 variables are what the forward and backward passes run on. The optimizer
//! works on f32 *masters*: the gradients are widened to f32, and the ascent ε, the norms, the
//! clipping, the base optimizer's state, the trust regions' snapshots (θ₀, θ_{t−1}, θ_ema) and
//! the bitwise restore of a two-pass step are all on the masters. After every change the bf16
//! variables are set from the masters, rounded to nearest (even). The second pass runs at
//! `bf16(master + ε)`; the restore sets the variables back to `bf16(master)` from the
//! untouched masters, so it is exact by construction.
//!
//! A parameter that is not bf16 (f32, f64) is its own master: its variable is shared, not
//! copied, and a model without bf16 parameters has no masters at all (the f32 path is
//! unchanged). f16 is refused in [`Optimizer::init`](super::Optimizer::init).
//!
//! Checkpoints hold the bf16 parameters' masters as `masters/<name>` (f32), next to the
//! optimizer state (f32, as it is kept on the masters).

use super::Optimizer;
use crate::components::model::{Batch, Logits, Mode, Model, Params, Weights};
use crate::components::state::StateReader;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};

/// The dtype of the parameters that get f32 masters.
const LOW: DType = DType::BF16;

/// Checkpoint key prefix of the masters.
pub(crate) const KEY: &str = "masters/";

/// The f32 masters of a model with bf16 parameters.
pub(crate) struct Masters {
    /// Aligned with the model's parameters: a new f32 variable for a bf16 parameter, the
    /// parameter's own variable otherwise.
    params: Params,
}

impl Masters {
    /// Masters for `live` (exact f32 copies of its bf16 values), or `None` when no parameter
    /// is bf16.
    pub(crate) fn new(live: &Params) -> Result<Option<Masters>> {
        if !live.iter().any(|p| p.var.dtype() == LOW) {
            return Ok(None);
        }
        let pairs = live
            .iter()
            .map(|p| {
                let var =
                    if p.var.dtype() == LOW { Var::from_tensor(&p.var.as_detached_tensor().to_dtype(DType::F32)?)? } else { p.var.clone() };
                Ok((p.name.clone(), var))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Masters { params: Params::new(pairs)? }))
    }

    /// Masters read from a checkpoint (`masters/<name>` for every bf16 parameter of `live`);
    /// the bf16 variables are then set from them.
    fn load(live: &Params, reader: &StateReader<'_>, origin: &str) -> Result<Masters> {
        let pairs = live
            .iter()
            .map(|p| {
                let var = if p.var.dtype() == LOW {
                    let t = reader.require(&p.name)?;
                    if t.shape() != p.var.shape() || t.dtype() != DType::F32 {
                        return Err(Error::Checkpoint {
                            path: origin.into(),
                            reason: format!(
                                "master weight `{KEY}{}` is {:?} {:?}, the parameter needs f32 {:?}: it was written for another model",
                                p.name,
                                t.dtype(),
                                t.dims(),
                                p.var.dims()
                            ),
                        });
                    }
                    Var::from_tensor(&t.to_device(p.var.device())?)?
                } else {
                    p.var.clone()
                };
                Ok((p.name.clone(), var))
            })
            .collect::<Result<Vec<_>>>()?;
        let masters = Masters { params: Params::new(pairs)? };
        masters.sync(live)?;
        Ok(masters)
    }

    /// The masters, aligned with the model's parameters.
    pub(crate) fn params(&self) -> &Params {
        &self.params
    }

    /// Set the model's bf16 variables from the masters, rounded to nearest.
    pub(crate) fn sync(&self, live: &Params) -> Result<()> {
        for (p, m) in live.iter().zip(self.params.iter()) {
            if p.var.dtype() == LOW {
                p.var.set(&m.var.as_detached_tensor().to_dtype(LOW)?)?;
            }
        }
        Ok(())
    }

    /// Checkpoint entries `masters/<name>` of the bf16 parameters.
    fn state(&self, live: &Params) -> Vec<(String, Tensor)> {
        live.iter()
            .zip(self.params.iter())
            .filter(|(p, _)| p.var.dtype() == LOW)
            .map(|(p, m)| (format!("{KEY}{}", p.name), m.var.as_detached_tensor()))
            .collect()
    }
}

/// Gradients of bf16 parameters widened to f32 (the masters' dtype); others as they are.
pub(crate) fn widen(grads: Vec<Tensor>) -> Result<Vec<Tensor>> {
    Ok(grads.into_iter().map(|g| if g.dtype() == LOW { g.to_dtype(DType::F32) } else { Ok(g) }).collect::<candle_core::Result<_>>()?)
}

/// A model seen through weights cast to its parameters' dtypes: the trust regions keep their
/// snapshots (θ₀, θ_{t−1}, θ_ema) in f32 on the masters, and the model evaluates them in its
/// own dtype (bf16), as it evaluates θ. Weights already in that dtype (the live variables)
/// pass through untouched, graph included.
pub(crate) struct CastModel<'a>(pub(crate) &'a dyn Model);

struct CastWeights<'a> {
    inner: &'a dyn Weights,
    live: &'a Params,
}

impl Weights for CastWeights<'_> {
    fn weight(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.weight(name)?;
        match self.live.position(name).and_then(|i| self.live.iter().nth(i)) {
            Some(p) if p.var.dtype() != t.dtype() => Ok(t.to_dtype(p.var.dtype())?),
            _ => Ok(t),
        }
    }
}

impl CastModel<'_> {
    fn cast<'b>(&'b self, w: &'b dyn Weights) -> CastWeights<'b> {
        CastWeights { inner: w, live: self.0.params() }
    }
}

impl Model for CastModel<'_> {
    fn params(&self) -> &Params {
        self.0.params()
    }
    fn embed(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        self.0.embed(&self.cast(w), batch, mode)
    }
    fn forward_embeds(&self, w: &dyn Weights, embeds: &Tensor, batch: &Batch, mode: Mode) -> Result<Logits> {
        self.0.forward_embeds(&self.cast(w), embeds, batch, mode)
    }
    fn forward(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Logits> {
        self.0.forward(&self.cast(w), batch, mode)
    }
    fn representation(&self, w: &dyn Weights, batch: &Batch, mode: Mode) -> Result<Tensor> {
        self.0.representation(&self.cast(w), batch, mode)
    }
    fn loss(&self, logits: &Logits) -> Result<Tensor> {
        self.0.loss(logits)
    }
}

impl Optimizer {
    /// The f32 master weights the optimizer trains for a model with bf16 parameters, aligned
    /// with the model's parameters (a parameter that is not bf16 is its own master); `None`
    /// for a model without bf16 parameters, and before the first step (or
    /// [`Optimizer::init`] / a resume).
    ///
    /// The masters are the weights being trained: once they exist, the model's bf16 weights
    /// are set from them after every step, so a bf16 weight written from outside (other than
    /// through [`Optimizer::load_state`], which restores both) is overwritten at the next step.
    pub fn master_params(&self) -> Option<&Params> {
        self.masters.as_ref().map(Masters::params)
    }

    /// The parameters the optimizer works on: the masters when there are, else the model's.
    pub(crate) fn working<'a>(&'a self, live: &'a Params) -> &'a Params {
        self.masters.as_ref().map_or(live, Masters::params)
    }

    /// Checkpoint entries of the masters (none without masters).
    pub(crate) fn masters_state(&self, live: &Params) -> Vec<(String, Tensor)> {
        self.masters.as_ref().map(|m| m.state(live)).unwrap_or_default()
    }

    /// Restore the masters from a checkpoint's tensors, before the components' state is read
    /// against them. A checkpoint of a bf16 run holds `masters/…`; one of an f32 run (or one
    /// written before the first step) does not. Resuming across the two is an error.
    pub(crate) fn load_masters(&mut self, live: &Params, reader: &StateReader<'_>, initialized: bool, origin: &str) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: origin.into(), reason };
        let low = live.iter().find(|p| p.var.dtype() == LOW);
        let saved = live.iter().find(|p| reader.get(&p.name).is_some());
        self.masters = match (low, saved) {
            (Some(p), None) if initialized => {
                return Err(bad(format!(
                    "it holds no f32 master weights, but parameter `{}` is bf16: it was written by a run whose parameters were f32 \
                     (or by a tram before f32 masters); resume with the dtype it was written with (`dtype = \"f32\"`)",
                    p.name
                )))
            }
            (None, Some(p)) => {
                return Err(bad(format!(
                    "it holds the f32 master weights of a bf16 run (`{KEY}{}`), but the model's parameters are {:?}; \
                     resume with the dtype it was written with (`dtype = \"bf16\"`)",
                    p.name,
                    p.var.dtype()
                )))
            }
            (Some(_), _) if initialized => Some(Masters::load(live, reader, origin)?),
            _ => None,
        };
        Ok(())
    }
}
