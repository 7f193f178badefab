//! From a config to components: the composition grammar ([`grammar`]), the component
//! registry ([`registry`]) that names resolve against, and [`bind`], which builds the
//! components of one optimizer from its config.

pub mod bind;
pub mod grammar;
pub mod registry;
