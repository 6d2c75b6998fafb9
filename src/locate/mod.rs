//! Where does a fact live? Causal tracing ([`trace`]), attribution patching ([`attribution`]) and the selection of components
//! ([`localization`]: KUDA's layer window, controls, parameter budgets); [`run`] is the
//! `unlearn locate` command.

pub mod attribution;
pub mod localization;
#[cfg(test)]
pub(crate) mod planted;
pub mod probe;
pub mod run;
pub mod trace;
