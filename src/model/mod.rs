//! Models: where they come from ([`source`], [`hub`]), how their files are read ([`gguf`],
//! [`hf_dir`]), their tokenizer ([`tokenizer`]), the differentiable ops ([`ops`]) and the
//! hooked, trainable transformer ([`transformer`]).

pub mod adapter;
pub mod arch;
pub mod batch;
pub mod chat;
pub mod config;
pub mod fastmath;
pub mod generate;
pub mod gguf;
pub mod gguf_header;
pub mod head_logprobs;
pub mod hf_dir;
pub mod hooks;
pub mod hub;
pub mod memo;
pub mod ops;
pub mod predict;
pub mod random;
pub mod scoring;
pub mod source;
pub mod tokenizer;
mod tokenizer_json;
pub mod transformer;
pub mod weights;

pub use batch::{Batch, PadSide};
pub use config::{Activation, Arch, ModelConfig};
pub use hooks::{HookPoint, Hooks, Patch, PatchMode, Selection};
pub use source::ModelOrigin;
pub use tokenizer::TextTokenizer;
pub use transformer::{Checkpoint, Grads, LogitsAt, RunOpts, RunOutput, Transformer};
pub use weights::Weights;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// How frozen weight matrices are stored (0: f32, 1: bf16, 2: f16); vectors (norms, biases)
/// and trainable parameters stay in f32, and ops compute in the compute dtype (f32 unless
/// [`set_compute_dtype`] says otherwise).
static WEIGHTS_DTYPE: AtomicU8 = AtomicU8::new(0);

/// Whether the weight matrices of GGUF files are kept as the file's quantized blocks.
static KEEP_BLOCKS: AtomicBool = AtomicBool::new(false);

/// How frozen weight matrices are held (`--weights`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightsStorage {
    /// Numbers in f32, bf16 or f16.
    Float(DType),
    /// A GGUF file's block matrices as its quantized blocks, dequantized where used (the same
    /// numbers as f32 storage, in the file's size); everything else in f32.
    Blocks,
}

/// Parse a `--weights` value: f32, bf16, f16 or gguf.
pub fn parse_weights(s: &str) -> Result<WeightsStorage> {
    Ok(match s {
        "gguf" => WeightsStorage::Blocks,
        _ => WeightsStorage::Float(
            parse_float_dtype("--weights", s)
                .map_err(|_| anyhow::anyhow!("--weights {s:?}: expected f32, bf16, f16 or gguf"))?,
        ),
    })
}

/// Hold the weights of models loaded from now on as `w` says (process-wide).
pub fn set_weights(w: WeightsStorage) {
    match w {
        WeightsStorage::Float(d) => {
            KEEP_BLOCKS.store(false, Ordering::SeqCst);
            set_weights_dtype(d);
        }
        WeightsStorage::Blocks => {
            set_weights_dtype(DType::F32);
            KEEP_BLOCKS.store(true, Ordering::SeqCst);
        }
    }
}

/// Whether GGUF block matrices are kept as quantized blocks (`--weights gguf`).
pub fn keeps_blocks() -> bool {
    KEEP_BLOCKS.load(Ordering::Relaxed)
}

/// Store the weight matrices of models loaded from now on in `dtype` (process-wide).
pub fn set_weights_dtype(dtype: DType) {
    WEIGHTS_DTYPE.store(float_code(dtype), Ordering::SeqCst);
}

/// The dtype weight matrices are stored in.
pub fn weights_dtype() -> DType {
    float_of_code(WEIGHTS_DTYPE.load(Ordering::Relaxed))
}

/// The dtype the forward pass computes in (0: f32, 1: bf16, 2: f16); see [`set_compute_dtype`].
static COMPUTE_DTYPE: AtomicU8 = AtomicU8::new(0);

/// Parse a `--compute` value: f32, bf16 or f16.
pub fn parse_compute_dtype(s: &str) -> Result<DType> {
    parse_float_dtype("--compute", s)
}

/// Compute the forward passes of models built from now on in `dtype` (process-wide): with bf16
/// or f16, activations and matrix products are in that dtype while norms, softmax, logits and
/// everything read from a run (logits, cached activations, the final residual) are f32.
/// Gradients (training, attribution patching) need f32 and are refused. A half compute dtype
/// also stores the weight matrices in it.
pub fn set_compute_dtype(dtype: DType) {
    let code = float_code(dtype);
    COMPUTE_DTYPE.store(code, Ordering::SeqCst);
    if code != 0 {
        set_weights_dtype(dtype);
    }
}

/// The dtype forward passes compute in.
pub fn compute_dtype() -> DType {
    float_of_code(COMPUTE_DTYPE.load(Ordering::Relaxed))
}

/// A `flag`'s float dtype: f32, bf16 or f16.
fn parse_float_dtype(flag: &str, s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("{flag} {other:?}: expected f32, bf16 or f16"),
    })
}

/// The code a float dtype is kept as in an atomic (0: f32 and anything else, 1: bf16, 2: f16).
fn float_code(dtype: DType) -> u8 {
    match dtype {
        DType::BF16 => 1,
        DType::F16 => 2,
        _ => 0,
    }
}

fn float_of_code(code: u8) -> DType {
    match code {
        1 => DType::BF16,
        2 => DType::F16,
        _ => DType::F32,
    }
}

/// A tag for cache keys: empty for f32 storage and compute, else the storage dtype and, when
/// not f32, the compute dtype (numbers computed with bf16-stored weights or in bf16 differ
/// from f32 ones).
pub fn weights_tag() -> &'static str {
    match (weights_dtype(), compute_dtype()) {
        (_, DType::BF16) => "+bf16+compute-bf16",
        (_, DType::F16) => "+f16+compute-f16",
        (DType::BF16, _) => "+bf16",
        (DType::F16, _) => "+f16",
        _ => "",
    }
}

/// A float dtype's name as the command line and the outputs write it (`f32`, `bf16`, `f16`).
pub fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// How models are held and computed, in words: `f32`, `weights bf16` (or f16), `compute bf16`
/// (or f16; the weights then stored alike) — the cases of [`weights_tag`] — and `f32, weights
/// gguf` (the same numbers as `f32`, so under the same tag).
pub fn precision_label() -> String {
    match (weights_dtype(), compute_dtype()) {
        (_, c) if ops::is_half(c) => format!("compute {}", dtype_name(c)),
        (w, _) if ops::is_half(w) => format!("weights {}", dtype_name(w)),
        _ if keeps_blocks() => "f32, weights gguf".into(),
        _ => "f32".into(),
    }
}

/// The fingerprint every cache of numbers computed with a model is keyed by: its weights'
/// fingerprint and, unless f32, the storage dtype.
pub fn cache_fingerprint(origin: &ModelOrigin) -> Result<String> {
    Ok(source::fingerprint(origin)? + weights_tag())
}

/// A freshly loaded f32 tensor as it is stored: matrices in the weights dtype, vectors in f32.
pub fn stored(t: Tensor) -> Result<Tensor> {
    let dtype = weights_dtype();
    Ok(if t.rank() >= 2 && dtype != t.dtype() {
        t.to_dtype(dtype)?
    } else {
        t
    })
}

/// A model as loaded from disk: configuration, weights in Hugging Face naming and conventions,
/// tokenizer, and where it came from.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub origin: ModelOrigin,
}

/// Load a model from a `--model` argument: an alias (see [`source::ALIASES`]), a path to
/// a `.gguf` file, a path to a Hugging Face model directory, or `hf:org/name[@revision]`
/// (see [`hub`]).
pub fn load(spec: &str, device: &Device) -> Result<LoadedModel> {
    let origin = source::resolve(spec)?;
    let (config, weights, tokenizer) = match origin.format {
        // A cached alias that no longer parses may have been damaged in place: verified
        // against its sha256 and fetched again if so.
        source::Format::Gguf => match gguf::load_gguf(&origin.path, device) {
            Ok(m) => m,
            Err(e) if source::refetch_if_damaged(spec)? => {
                eprintln!("(the damaged file had failed with: {e:#})");
                gguf::load_gguf(&origin.path, device)?
            }
            Err(e) => return Err(e),
        },
        source::Format::HfDir => hf_dir::load_hf_dir(&origin.path, device)?,
        source::Format::Random => random::load(&origin.spec["random:".len()..], device)?,
        source::Format::Delta => {
            let (base, changed) = crate::forget::export::read_delta(&origin.path, device)?;
            let mut weights = base.weights;
            for (name, t) in changed {
                let old = weights.dims(&name).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: changed tensor `{name}` is not in the base model",
                        origin.path.display()
                    )
                })?;
                if old != t.dims() {
                    anyhow::bail!(
                        "{}: changed tensor `{name}` has shape {:?}, the base model's {old:?}",
                        origin.path.display(),
                        t.dims()
                    );
                }
                weights.insert(&name, t);
            }
            (base.config, weights, base.tokenizer)
        }
    };
    config.validate()?;
    weights.check_against(&config)?;
    Ok(LoadedModel {
        config,
        weights,
        tokenizer,
        origin,
    })
}

/// A model ready to run: the hooked transformer, its tokenizer, and where it came from.
pub struct LanguageModel {
    pub model: Transformer,
    pub tokenizer: TextTokenizer,
    pub origin: ModelOrigin,
}

impl LanguageModel {
    /// Load a `--model` argument (see [`load`]) and build the transformer.
    pub fn load(spec: &str, device: &Device) -> Result<LanguageModel> {
        let LoadedModel {
            config,
            weights,
            tokenizer,
            origin,
        } = load(spec, device)?;
        let mut model = Transformer::new(config, weights)?;
        model.set_compute_dtype(compute_dtype())?;
        Ok(LanguageModel {
            model,
            tokenizer,
            origin,
        })
    }

    /// Token id used for padding (the model's pad token, else EOS, else 0).
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id
            .or(self.model.config.pad_token_id)
            .or(self.tokenizer.eos_ids.first().copied())
            .unwrap_or(0)
    }

    /// Last-position logits of prompts given as token ids (one left-padded batch), as rows.
    pub fn last_logits(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.model.last_logits(ids, self.pad_id())
    }

    /// Logits of the vocabulary entries `tokens` at the last position of each prompt, in
    /// length-bucketed batches of `batch_size` (see [`scoring`]).
    pub fn last_token_logits(
        &self,
        ids: &[Vec<u32>],
        tokens: &[u32],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.model
            .last_token_logits(ids, tokens, self.pad_id(), batch_size)
    }

    /// Token ids that end generation.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v = self.tokenizer.eos_ids.clone();
        for &e in &self.model.config.eos_token_ids {
            if !v.contains(&e) {
                v.push(e);
            }
        }
        v
    }
}
