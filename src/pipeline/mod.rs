//! End-to-end jobs built from the other commands: [`demo`] runs locate → forget (KUDA,
//! localized fine-tuning, gradient ascent) → evaluate → report on the default model.

pub mod demo;
