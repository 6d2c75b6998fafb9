//! Where does a fact live? Causal tracing ([`trace`]) and the selection of components
//! ([`localization`]: KUDA's layer window, controls, parameter budgets); [`run`] is the
//! `unlearn locate` command.

pub mod localization;
pub mod run;
pub mod trace;
