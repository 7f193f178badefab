//! Neighborhoods: the shape of the ascent perturbation ε given a radius and a gradient.

use crate::components::model::Params;
use crate::error::Result;
use candle_core::Tensor;

/// Where the radius of the ascent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadiusSource {
    /// A trust region's distance δ sizes it (TRAM).
    Region,
    /// A fixed ρ (SAM, ASAM, FSAM); a trust region may only perturb the first pass's input.
    Fixed,
}

/// The result of an ascent computation.
pub enum Ascent {
    /// Perturbation ε aligned with the parameter order.
    Step(Vec<Tensor>),
    /// No ascent: the denominator was zero or not finite (or the radius was zero).
    None,
}

/// A neighborhood computes the ascent perturbation ε from the first pass's gradient and a radius.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use tram::{Ascent, Neighborhood, Params, RadiusSource};
///
/// /// SAM's ball without its guards: ε = r · g / ‖g‖.
/// struct Ball;
/// impl Neighborhood for Ball {
///     fn name(&self) -> &str { "ball" }
///     fn rho(&self) -> f64 { 0.05 }
///     fn radius_source(&self) -> RadiusSource { RadiusSource::Region }
///     fn perturbation(&self, _: &Params, grads: &[Tensor], radius: f64) -> tram::Result<Ascent> {
///         let norm = tram::ops::global_norm(grads)?;
///         Ok(Ascent::Step(tram::ops::scale_all(grads, radius / norm)?))
///     }
/// }
///
/// // Sized by a trust region, the radius is its δ; alone, the fixed ρ.
/// assert_eq!((Ball.radius(Some(0.2)), Ball.radius(None)), (0.2, 0.05));
/// let params = Params::new([("w".to_string(), Var::new(&[0f32, 0.0], &Device::Cpu)?)])?;
/// let g = [Tensor::new(&[3f32, 4.0], &Device::Cpu)?];
/// let Ascent::Step(eps) = Ball.perturbation(&params, &g, Ball.radius(Some(0.5)))? else { unreachable!() };
/// assert_eq!(eps[0].to_vec1::<f32>()?, [0.3, 0.4]);
/// # Ok::<(), tram::Error>(())
/// ```
pub trait Neighborhood: Send {
    /// Registered name.
    fn name(&self) -> &str;
    /// The fixed radius ρ.
    fn rho(&self) -> f64;
    /// Whether a trust region composed with it sizes the radius or only perturbs the input.
    fn radius_source(&self) -> RadiusSource;
    /// Tell the neighborhood whether a trust region sizes it (called once at composition).
    fn sized_by_region(&mut self, _sized: bool) {}
    /// The radius of this step's ascent, given the δ of the trust region composed before it
    /// (`None` without one): δ when that region sizes this neighborhood
    /// ([`RadiusSource::Region`]), else [`Neighborhood::rho`].
    fn radius(&self, delta: Option<f64>) -> f64 {
        match (self.radius_source(), delta) {
            (RadiusSource::Region, Some(delta)) => delta,
            _ => self.rho(),
        }
    }
    /// ε for gradient `grads` (aligned with `params`) and radius `radius`.
    fn perturbation(&self, params: &Params, grads: &[Tensor], radius: f64) -> Result<Ascent>;
    /// Parameters, for reports. The default (`null`) records the config the component was
    /// built from ([`crate::compose::registry::resolved`]); override only to record something else.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
