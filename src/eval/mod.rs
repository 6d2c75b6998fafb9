//! Evaluation: is the knowledge gone, and does the model still work? Completion accuracy on
//! facts ([`completion`]), other forms of the same facts ([`formats`], [`mcq`]), fluency of
//! answers ([`fluency`]), perplexity on held-out text ([`perplexity`]), the benchmarks
//! MUSE-News ([`muse`]) and TOFU ([`tofu`]), and the `unlearn eval` command that puts the original and the unlearned model side by side ([`run`]).

pub mod completion;
pub mod fluency;
pub mod formats;
pub mod latent;
pub mod mcq;
pub mod muse;
pub mod perplexity;
pub mod relearn;
pub mod rouge;
pub mod run;
pub mod tofu;
