//! Evaluation: is the knowledge gone, and does the model still work? Completion accuracy on
//! facts ([`completion`]), other forms of the same facts ([`formats`], [`mcq`]), fluency of
//! answers ([`fluency`]), the accuracy of a model that knows nothing of the subjects ([`floor`]), perplexity on held-out text ([`perplexity`]), the benchmarks
//! MUSE-News ([`muse`]) and TOFU ([`tofu`]), and the `unlearn eval` command that puts the original and the unlearned model side by side ([`run`]).

pub mod completion;
pub mod floor;
pub mod fluency;
pub mod formats;
pub mod latent;
pub mod mcq;
pub mod muse;
pub mod perplexity;
pub mod relearn;
pub mod rouge;
pub mod run;
pub mod schema;
pub mod tofu;

use crate::model::LanguageModel;
use anyhow::Result;

/// Greedy answers, `max_new` tokens at most, in batches of 8.
pub fn greedy_answers(
    lm: &LanguageModel,
    prompts: &[Vec<u32>],
    max_new: usize,
) -> Result<Vec<String>> {
    let stops = lm.stop_ids();
    let mut out = Vec::new();
    for chunk in prompts.chunks(8) {
        for g in crate::model::generate::generate(
            &lm.model,
            chunk,
            max_new,
            &stops,
            lm.pad_id(),
            crate::model::generate::Sampling::default(),
        )? {
            let g: Vec<u32> = g.into_iter().filter(|t| !stops.contains(t)).collect();
            out.push(lm.tokenizer.decode(&g)?);
        }
    }
    Ok(out)
}
