//! Random-weight models of a published model's shape (`--model random:llama3-8b`), for timing
//! and memory checks on machines that have no weights: seeded Gaussian matrices (std 0.02)
//! made on the device in the weights dtype, unit norms, and the tiny byte-level test
//! tokenizer (token ids fit every vocabulary). Nothing it predicts means anything.

use crate::model::config::ModelConfig;
use crate::model::{TextTokenizer, Weights};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::Distribution;

/// The tokenizer of the tiny test models (384 byte-level BPE tokens).
const TOKENIZER_JSON: &str = include_str!("../../tests/fixtures/tiny/llama/tokenizer.json");
const TOKENIZER_CONFIG: &str =
    include_str!("../../tests/fixtures/tiny/llama/tokenizer_config.json");

/// The shapes `random:NAME` knows.
pub const SHAPES: [&str; 3] = ["llama3-8b", "qwen2.5-1.5b", "tiny"];

/// The configuration of a known shape.
pub fn config(name: &str) -> Result<ModelConfig> {
    let llama = |vocab, d, f, layers, heads, kv, theta| {
        ModelConfig::llama(vocab, d, f, layers, heads, kv, theta, 1e-5)
    };
    Ok(match name {
        // Meta-Llama-3-8B: 8.03 B parameters.
        "llama3-8b" => llama(128_256, 4096, 14_336, 32, 32, 8, 500_000.0),
        // Qwen2.5-1.5B: q/k/v biases, 2 key/value heads.
        "qwen2.5-1.5b" => ModelConfig {
            attention_bias: true,
            ..llama(151_936, 1536, 8960, 28, 12, 2, 1_000_000.0)
        },
        "tiny" => llama(384, 32, 64, 4, 4, 2, 10_000.0),
        other => bail!(
            "--model random:{other}: unknown shape (known: {})",
            SHAPES.join(", ")
        ),
    })
}

/// Configuration, seeded random weights on `device` and the test tokenizer.
pub fn load(name: &str, device: &Device) -> Result<(ModelConfig, Weights, TextTokenizer)> {
    let config = config(name)?;
    let dtype = crate::model::weights_dtype();
    if !device.is_cpu() {
        device.set_seed(0)?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut weights = Weights::default();
    let shapes = Weights::expected_shapes(&config);
    let bar = crate::util::progress(shapes.len() as u64, "random weights");
    for (tensor, shape) in shapes {
        bar.inc(1);
        let t = if shape.len() == 1 {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else if device.is_cpu() {
            // candle's CPU generator cannot be seeded.
            let normal = rand_distr::Normal::new(0f32, 0.02)?;
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(v, shape.as_slice(), device)?.to_dtype(dtype)?
        } else {
            Tensor::randn(0f32, 0.02, shape.as_slice(), device)?.to_dtype(dtype)?
        };
        weights.tensors.insert(tensor, t);
    }
    bar.finish_and_clear();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON)?;
    std::fs::write(dir.path().join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    let tokenizer = TextTokenizer::from_hf_dir(dir.path())?;
    Ok((config, weights, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_their_published_sizes_and_a_tiny_one_runs() {
        let c = config("llama3-8b").unwrap();
        assert_eq!(c.param_count(), 8_030_261_248);
        assert!(config("gpt5")
            .unwrap_err()
            .to_string()
            .contains("llama3-8b"));
        let (c, w, tok) = load("tiny", &Device::Cpu).unwrap();
        let m = crate::model::Transformer::new(c, w).unwrap();
        let ids = tok.encode("The capital of France is", true).unwrap();
        let logits = m.last_logits(&[ids], 0).unwrap();
        assert_eq!(logits[0].len(), 384);
        assert!(logits[0].iter().all(|x| x.is_finite()));
    }
}
