//! Unlearning and editing: the training sequences ([`seqs`]), loss terms ([`terms`]), the
//! methods as weighted term lists ([`methods`]: KUDA, localized fine-tuning, GA, GradDiff,
//! NPO, SimNPO, RMU), KUDA's null-space projection ([`nullspace`]) and focus ([`focus`]), the
//! frozen model's reference rows and the targets built on them ([`refs`]), the optimizer
//! ([`optim`]), the trainer's plan built from the picked data ([`plan`]), the trainer
//! ([`trainer`]) with its checkpoints and resume ([`checkpoint`]), KUDA's tuning ([`tune`]), the
//! output on disk ([`export`]), settings ([`config`]) and the `forget` / `edit` commands
//! ([`run`]).

pub mod angles;
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod focus;
pub mod guard;
pub mod learn;
pub mod lora;
pub mod methods;
pub mod nullspace;
pub mod optim;
pub mod plan;
pub mod presets;
pub mod refs;
pub mod run;
pub mod seqs;
pub mod terms;
pub mod trainer;
pub mod tune;
