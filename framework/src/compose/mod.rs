//! From a config to components: the composition grammar ([`grammar`]) and the component
//! registry ([`registry`]) that names resolve against.

pub mod grammar;
pub mod registry;
