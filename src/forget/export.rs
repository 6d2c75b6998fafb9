//! The result of `unlearn forget` / `unlearn edit` on disk: `changed.safetensors` (only the
//! updated tensors, Hugging Face names), optionally the full model as a Hugging Face directory
//! in the same place, and `manifest.json` (base model and its sha256, method, localization,
//! hyper-parameters, seed, steps, final losses, metrics, tool version). Every file is written
//! to a temporary name and renamed; the manifest comes last, so a directory with a manifest is
//! complete. `--model DIR` loads either form; the base model file is only ever read.

use crate::forget::config::ForgetConfig;
use crate::locate::localization::Localization;
use crate::model::source::{fingerprint, DELTA_FILE};
use crate::model::{LanguageModel, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What `manifest.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    /// How to load the base model (alias or absolute path).
    pub base_model: String,
    pub base_sha256: String,
    pub method: String,
    pub edit: bool,
    pub task: String,
    /// Duplicate facts of a user's file were merged (`--dedup`).
    #[serde(default)]
    pub dedup: bool,
    pub forget_split: String,
    pub forget_ids: Vec<String>,
    /// Known facts trained on as retain data (evaluation holds them out).
    pub retain_ids: Vec<String>,
    /// Editing: the answer taught for each forget fact.
    pub new_answers: Option<Vec<String>>,
    pub localization: Option<Localization>,
    pub params: Vec<String>,
    pub param_count: usize,
    #[serde(deserialize_with = "ForgetConfig::deserialize_recorded")]
    pub config: ForgetConfig,
    pub seed: u64,
    pub steps: usize,
    /// Steps each part actually trained (fewer than `steps` when `stop_at_forget_acc` ended
    /// it early).
    #[serde(default)]
    pub steps_done: Vec<usize>,
    pub final_losses: BTreeMap<String, f64>,
    /// Forget vs retain gradient angles before/after projection, at the first and last step.
    #[serde(default)]
    pub gradient_angles: Option<crate::forget::trainer::AnglesAtEnds>,
    /// KUDA: the share of key energy each null-space projector lets through, by key point
    /// (its own key data, held-out text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub projector_pass: BTreeMap<String, crate::forget::nullspace::PassShare>,
    /// The training's perplexity probe with the final weights (`text_ppl` in `train.jsonl`
    /// holds the readings during training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_ppl_end: Option<f64>,
    /// Worker threads the run trained with (its weights depend on the count; 0 in manifests
    /// written before it was recorded).
    #[serde(default)]
    pub threads: usize,
    /// How the run held and computed the model (`f32`, `weights bf16`, `compute bf16`; empty in
    /// manifests written before it was recorded).
    #[serde(default)]
    pub precision: String,
    /// `changed` (only changed tensors) or `full` (also a complete HF directory).
    pub weights: String,
    pub metrics: Option<serde_json::Value>,
}

/// How a base model is named in a manifest: aliases as they are, paths made absolute.
pub fn base_spec(spec: &str) -> String {
    let p = Path::new(spec);
    if p.exists() {
        p.canonicalize()
            .map(|c| c.display().to_string())
            .unwrap_or_else(|_| spec.to_string())
    } else {
        spec.to_string()
    }
}

/// Write the trained model to `dir`.
pub fn write_output(dir: &Path, lm: &LanguageModel, manifest: &Manifest, full: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut changed = HashMap::new();
    for p in &manifest.params {
        let t = lm.model.weights().dense(p, &Device::Cpu)?;
        changed.insert(
            p.clone(),
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        );
    }
    crate::util::save_safetensors_atomic(&changed, &dir.join(DELTA_FILE))?;
    if full {
        crate::model::hf_dir::export_hf_dir(
            &lm.model.config,
            lm.model.weights(),
            &lm.tokenizer,
            dir,
            None,
        )?;
    }
    crate::util::write_json(&dir.join("manifest.json"), manifest)
}

/// Read an output directory that holds only changed tensors: the base model (checked against
/// the manifest's sha256) and the changed tensors.
pub fn read_delta(dir: &Path, device: &Device) -> Result<(LoadedModel, Vec<(String, Tensor)>)> {
    let mpath = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
    let m: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", mpath.display()))?;
    let base = m["base_model"]
        .as_str()
        .with_context(|| format!("{}: field `base_model` is missing", mpath.display()))?;
    let want = m["base_sha256"]
        .as_str()
        .with_context(|| format!("{}: field `base_sha256` is missing", mpath.display()))?;
    let loaded = crate::model::load(base, device)
        .with_context(|| format!("{}: loading its base model {base}", mpath.display()))?;
    let got = fingerprint(&loaded.origin)?;
    if got != want {
        bail!(
            "{}: the base model {base} has changed since this output was written (sha256 {got}, expected {want})",
            mpath.display()
        );
    }
    let file = dir.join(DELTA_FILE);
    let t = crate::util::load_safetensors(&file, device)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok((loaded, t.into_iter().collect()))
}
