//! Hugging Face model directories: `config.json`, `*.safetensors`, `tokenizer.json`. Loading
//! (f32/f16/bf16 tensors, converted to f32) and export (what unlearn writes loads back with
//! identical logits: the exact configuration is kept in an `unlearn` section of config.json).

pub use crate::model::arch::config_from_hf;
use crate::model::config::ModelConfig;
use crate::model::{TextTokenizer, Weights};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Index of a sharded model directory: which shard file holds each tensor.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The `weight_map` (tensor name → shard file) of a `model.safetensors.index.json`, given as
/// its text; `what` names the file in errors. Shard names must be plain file names.
pub fn parse_index(text: &str, what: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(text).with_context(|| {
        format!("{what}: not a safetensors index (no `weight_map` object of tensor → file)")
    })?;
    for shard in index.weight_map.values() {
        check_shard_name(shard, what)?;
    }
    Ok(index.weight_map)
}

/// Reject a shard name that is not a plain `*.safetensors` file name of the directory.
fn check_shard_name(shard: &str, what: &str) -> Result<()> {
    let plain = !shard.starts_with('.') && !shard.contains(['/', '\\']);
    if !plain || !shard.ends_with(".safetensors") {
        bail!("{what}: shard {shard:?} is not a *.safetensors file name of the model directory");
    }
    Ok(())
}

/// The index of a model directory (see [`parse_index`]), None when it has none.
pub fn read_index(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let path = dir.join(INDEX_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    parse_index(&text, &path.display().to_string()).map(Some)
}

/// The weight files of a model directory: exactly the shards its index names (each must
/// exist), else `model.safetensors`, else every `*.safetensors` file; sorted.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some(map) = read_index(dir)? {
        let shards: BTreeSet<&String> = map.values().collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let f = dir.join(shard);
            if !f.is_file() {
                bail!(
                    "{}: {INDEX_FILE} names the shard {shard}, which is missing",
                    dir.display()
                );
            }
            files.push(f);
        }
        if files.is_empty() {
            bail!("{}: {INDEX_FILE} names no shard", dir.display());
        }
        return Ok(files);
    }
    // As transformers does: `model.safetensors` when there is one (other safetensors files
    // beside it — adapters, references — are not the model's).
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors files", dir.display());
    }
    Ok(files)
}

/// Load the weight files of a directory (see [`safetensors_files`]) as f32 tensors; with an
/// index, every tensor it maps must be in the shard it names.
pub fn load_safetensors(dir: &Path, device: &Device) -> Result<Weights> {
    let index = read_index(dir)?;
    let mut w = Weights::default();
    let mut shard_of: HashMap<String, String> = HashMap::new();
    for f in safetensors_files(dir)? {
        let bytes = std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?;
        let what = f.display().to_string();
        let file_name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for (name, t) in tensors_from_safetensors(&bytes, &what, device)? {
            shard_of.insert(name.clone(), file_name.clone());
            w.tensors.insert(name, t);
        }
    }
    for (tensor, shard) in index.iter().flatten() {
        if shard_of.get(hf_name(tensor)) != Some(shard) {
            bail!(
                "{}: {INDEX_FILE} maps tensor `{tensor}` to the shard {shard}, which lacks it",
                dir.display()
            );
        }
    }
    Ok(w)
}

/// A tensor name as unlearn keeps it: without a `language_model.` prefix.
fn hf_name(name: &str) -> &str {
    name.strip_prefix("language_model.").unwrap_or(name)
}

/// The tensors of one safetensors file's bytes as f32, named without a `language_model.`
/// prefix; `what` names the file in errors.
pub fn tensors_from_safetensors(
    bytes: &[u8],
    what: &str,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let map: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| anyhow::anyhow!("{what}: cannot read safetensors: {e}"))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, t) in map {
        // Matrices already in the storage dtype stay as they are (no f32 copy on the way).
        let t = match t.dtype() {
            d if d == crate::model::weights_dtype() && t.rank() >= 2 => t,
            DType::F32 => crate::model::stored(t)?,
            DType::F16 | DType::BF16 | DType::F64 => crate::model::stored(t.to_dtype(DType::F32)?)?,
            other => {
                bail!("{what}: tensor `{name}` has dtype {other:?}; expected f32, f16, bf16 or f64")
            }
        };
        out.push((hf_name(&name).to_string(), t));
    }
    Ok(out)
}

/// Load config, weights and tokenizer from a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<(ModelConfig, Weights, TextTokenizer)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let config = config_from_hf(&v, &cfg_path)?;
    let mut weights = load_safetensors(dir, device)?;
    if config.tie_word_embeddings {
        weights.tensors.remove("lm_head.weight");
    }
    config
        .arch
        .tensors_from_hf(&config, &mut weights.tensors)
        .with_context(|| format!("{}", dir.display()))?;
    weights
        .check_against(&config)
        .with_context(|| format!("{}", dir.display()))?;
    let tokenizer = TextTokenizer::from_hf_dir(dir)?;
    Ok((config, weights, tokenizer))
}

/// Write a model as a Hugging Face directory: `model.safetensors` (every tensor, or only the
/// named ones; stored as the architecture stores them, e.g. Phi-3's fused projections),
/// `config.json`, tokenizer files. Each file is written atomically; an existing
/// directory's other files are left alone.
pub fn export_hf_dir(
    config: &ModelConfig,
    weights: &Weights,
    tokenizer: &TextTokenizer,
    dir: &Path,
    only: Option<&[String]>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut chosen: BTreeMap<String, Tensor> = BTreeMap::new();
    for name in weights.names() {
        if only.is_none_or(|o| o.contains(&name)) {
            let t = weights.dense(&name, &Device::Cpu)?;
            chosen.insert(
                name,
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            );
        }
    }
    if let Some(o) = only {
        for n in o {
            if !weights.contains(n) {
                bail!("export: the model has no tensor `{n}`");
            }
        }
    }
    config.arch.tensors_to_hf(config, &mut chosen)?;
    crate::util::save_safetensors_atomic(
        &chosen.into_iter().collect::<HashMap<_, _>>(),
        &dir.join("model.safetensors"),
    )?;
    let mut cfg = config.to_hf_json();
    cfg.as_object_mut()
        .expect("object")
        .insert("unlearn".into(), serde_json::to_value(config)?);
    crate::util::write_json(&dir.join("config.json"), &cfg)?;
    tokenizer.save_hf(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Activation;
    use serde_json::json;

    #[test]
    fn config_errors_name_the_field() {
        let p = Path::new("m/config.json");
        let e = config_from_hf(&json!({"model_type": "llama", "hidden_size": 8}), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("num_attention_heads"),
            "{e}"
        );
        let e = config_from_hf(&json!({"model_type": "bert"}), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bert"), "{e}");
    }

    #[test]
    fn hf_llama_config_is_read() {
        let v = json!({"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
            "intermediate_size": 1536, "num_hidden_layers": 30, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true, "eos_token_id": [2, 0]});
        let c = config_from_hf(&v, Path::new("config.json")).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.eos_token_ids.clone()),
            (64, 3, vec![2, 0])
        );
        assert_eq!(c.activation, Activation::Silu);
    }

    #[test]
    fn half_precision_safetensors_load_as_f32() {
        let d = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[[1.5f32, -2.25], [0.125, 3.0]], &Device::Cpu).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let m: HashMap<String, Tensor> = [("x".to_string(), t.to_dtype(dt).unwrap())].into();
            candle_core::safetensors::save(&m, d.path().join("a.safetensors")).unwrap();
            let w = load_safetensors(d.path(), &Device::Cpu).unwrap();
            assert_eq!(w.tensors["x"].dtype(), DType::F32);
            assert_eq!(
                w.tensors["x"].to_vec2::<f32>().unwrap(),
                t.to_vec2::<f32>().unwrap()
            );
        }
    }

    /// Write `tensors` (name → values) as one safetensors file `dir/file`.
    fn write_shard(dir: &Path, file: &str, tensors: &[(&str, f32)]) {
        let m: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), Tensor::new(&[*v], &Device::Cpu).unwrap()))
            .collect();
        candle_core::safetensors::save(&m, dir.join(file)).unwrap();
    }

    /// The error of loading the directory `dir`, which must fail.
    fn load_error(dir: &Path) -> String {
        match load_safetensors(dir, &Device::Cpu) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn an_index_chooses_the_shards_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        write_shard(d.path(), "a.safetensors", &[("x", 1.0)]);
        write_shard(d.path(), "b.safetensors", &[("language_model.y", 2.0)]);
        // Not named by the index: not read.
        write_shard(d.path(), "stale.safetensors", &[("z", 3.0)]);
        let index = |map: serde_json::Value| {
            let v = json!({"metadata": {}, "weight_map": map});
            std::fs::write(d.path().join(INDEX_FILE), v.to_string()).unwrap();
        };
        index(json!({"x": "a.safetensors", "language_model.y": "b.safetensors"}));
        let w = load_safetensors(d.path(), &Device::Cpu).unwrap();
        assert_eq!(w.tensors.keys().collect::<Vec<_>>(), ["x", "y"]);

        index(json!({"x": "b.safetensors", "language_model.y": "b.safetensors"}));
        let e = load_error(d.path());
        assert!(
            e.contains("`x`") && e.contains("b.safetensors") && e.contains("lacks"),
            "{e}"
        );

        index(json!({"x": "a.safetensors", "y": "c.safetensors"}));
        let e = load_error(d.path());
        assert!(e.contains("c.safetensors") && e.contains("missing"), "{e}");

        index(json!({"x": "../a.safetensors"}));
        let e = load_error(d.path());
        assert!(e.contains("../a.safetensors"), "{e}");

        index(json!(["not", "a", "map"]));
        let e = load_error(d.path());
        assert!(e.contains(INDEX_FILE) && e.contains("weight_map"), "{e}");
    }
}
