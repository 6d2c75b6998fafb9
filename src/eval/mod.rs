//! Evaluation: is the knowledge gone, and does the model still work? Completion accuracy on
//! facts ([`completion`]) and perplexity on held-out text ([`perplexity`]).

pub mod completion;
pub mod perplexity;
