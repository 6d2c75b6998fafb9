//! Where does a fact live? Causal tracing ([`trace`]), attribution patching ([`attribution`]),
//! fact-lookup probes ([`probe`]), path patching ([`path_patch`]) and the selection of components
//! ([`localization`]: KUDA's layer window, controls, parameter budgets); [`run`] is the
//! `unlearn locate` command.

pub mod attribution;
pub mod localization;
pub mod logreg;
pub mod path_patch;
#[cfg(test)]
pub(crate) mod planted;
pub mod probe;
pub mod run;
pub mod trace;
