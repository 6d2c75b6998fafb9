//! Where does a fact live? Causal tracing ([`trace`]) and the selection of components
//! ([`localization`]: KUDA's layer window, controls, parameter budgets).

pub mod localization;
pub mod trace;
