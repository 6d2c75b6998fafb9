//! End-to-end jobs built from the other commands: [`demo`] runs locate → forget (KUDA,
//! localized fine-tuning, gradient ascent) → evaluate → report on the default model;
//! [`experiment`] runs any such chain from a TOML file, cached stage by stage.

pub mod demo;
pub mod experiment;
