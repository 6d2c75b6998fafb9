//! Loading real models and what goes wrong at the edges: export to a Hugging Face directory and
//! back (identical logits), truncated or foreign files, mis-shaped tensors, broken configs, the
//! tokenizer round trip, and the command line's errors.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use unlearn::model::hf_dir::export_hf_dir;
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{source, Batch, LanguageModel, PadSide};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Fact: Michael Jordan plays the sport of",
    "Toyota is headquartered in",
];

fn logits(lm: &LanguageModel) -> Tensor {
    let ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let b = Batch::new(&ids, lm.pad_id(), PadSide::Left, &Device::Cpu).unwrap();
    lm.model
        .run(
            &b,
            &RunOpts {
                logits: LogitsAt::Last,
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap()
}

fn export_round_trip(alias: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (lm, out) = exported(alias, dir.path(), "exported");
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{alias}: export lacks {f}");
    }
    let back = LanguageModel::load(out.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(back.model.config, lm.model.config);
    for p in PROMPTS {
        assert_eq!(
            back.tokenizer.encode(p, true).unwrap(),
            lm.tokenizer.encode(p, true).unwrap(),
            "{alias}: ids of {p:?}"
        );
    }
    let d = (logits(&lm) - logits(&back))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0, "{alias}: exported model gives different logits");
    // The HF config is what transformers reads.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["num_hidden_layers"].as_u64().unwrap() as usize,
        lm.model.config.num_layers
    );
}

#[test]
fn smollm2_export_loads_back_with_identical_logits() {
    export_round_trip("smollm2-135m");
}

#[test]
fn gemma3_export_loads_back_with_identical_logits() {
    export_round_trip("gemma3-270m");
}

#[test]
fn tokenizer_round_trips_text() {
    for alias in ["gemma3-270m", "smollm2-135m"] {
        let lm = LanguageModel::load(alias, &Device::Cpu).unwrap();
        for text in [
            "Hello, world!",
            "  two spaces,\nnew line\ttab",
            "naïve café — 東京 🙂",
            "Danielle Darrieux's mother tongue",
        ] {
            let ids = lm.tokenizer.encode(text, false).unwrap();
            assert_eq!(
                lm.tokenizer.decode(&ids).unwrap(),
                text,
                "{alias}: {text:?} → {ids:?}"
            );
        }
        for a in [
            " Paris",
            " basketball",
            " football",
            " baseball",
            " golf",
            " A",
            " B",
            " C",
            " D",
        ] {
            assert_eq!(
                lm.tokenizer.encode(a, false).unwrap().len(),
                1,
                "{alias}: {a:?} is one token"
            );
        }
    }
}

/// A model and its export into `parent/name`.
fn exported(alias: &str, parent: &Path, name: &str) -> (LanguageModel, std::path::PathBuf) {
    let lm = LanguageModel::load(alias, &Device::Cpu).unwrap();
    let out = parent.join(name);
    export_hf_dir(
        &lm.model.config,
        lm.model.weights(),
        &lm.tokenizer,
        &out,
        None,
    )
    .unwrap();
    (lm, out)
}

fn smollm2_path() -> std::path::PathBuf {
    source::resolve("smollm2-135m").unwrap().path
}

#[test]
fn truncated_gguf_is_reported_with_the_file() {
    let src = std::fs::read(smollm2_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    std::fs::write(&p, &src[..src.len() / 2]).unwrap();
    let e = LanguageModel::load(p.to_str().unwrap(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
    std::fs::write(&p, &src[..1000]).unwrap();
    let e = format!(
        "{:#}",
        LanguageModel::load(p.to_str().unwrap(), &Device::Cpu)
            .err()
            .expect("must fail")
    );
    assert!(e.contains("cut.gguf"), "{e}");
}

#[test]
fn mis_shaped_or_missing_tensors_and_bad_configs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = exported("smollm2-135m", dir.path(), "m");
    let st = out.join("model.safetensors");
    let mut map: HashMap<String, Tensor> =
        candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let name = "model.layers.3.mlp.up_proj.weight";
    let t = map.remove(name).unwrap();
    map.insert(name.into(), t.narrow(0, 0, 10).unwrap());
    candle_core::safetensors::save(&map, &st).unwrap();
    let e = format!(
        "{:#}",
        LanguageModel::load(out.to_str().unwrap(), &Device::Cpu)
            .err()
            .expect("must fail")
    );
    assert!(e.contains(name) && e.contains("shape"), "{e}");
    map.remove(name);
    candle_core::safetensors::save(&map, &st).unwrap();
    let e = format!(
        "{:#}",
        LanguageModel::load(out.to_str().unwrap(), &Device::Cpu)
            .err()
            .expect("must fail")
    );
    assert!(e.contains(name) && e.contains("missing"), "{e}");
    // A config without a required field (and without the exact `unlearn` section).
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let o = cfg.as_object_mut().unwrap();
    o.remove("unlearn");
    o.remove("hidden_size");
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        LanguageModel::load(out.to_str().unwrap(), &Device::Cpu)
            .err()
            .expect("must fail")
    );
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );
    // A broken tokenizer.json.
    std::fs::write(out.join("tokenizer.json"), "{not json").unwrap();
    let e = unlearn::model::TextTokenizer::from_hf_dir(&out)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn half_precision_export_of_a_real_model_loads() {
    // bf16 weights in a HF directory load as f32 and stay close to the f32 model.
    let dir = tempfile::tempdir().unwrap();
    let (lm, out) = exported("smollm2-135m", dir.path(), "bf16");
    let st = out.join("model.safetensors");
    let map: HashMap<String, Tensor> = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let half: HashMap<String, Tensor> = map
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, &st).unwrap();
    let back = LanguageModel::load(out.to_str().unwrap(), &Device::Cpu).unwrap();
    let a = logits(&lm).argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let b = logits(&back).argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(a, b, "bf16 weights change the top token");
}

fn unlearn_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unlearn"))
}

#[test]
fn cli_predict_json_and_errors() {
    let out = unlearn_cmd()
        .args([
            "predict",
            "--model",
            "smollm2-135m",
            "--json",
            "--top-k",
            "3",
            "--answer",
            " Paris",
            "The capital of France is",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(v[0]["answer"]["id"].as_u64().unwrap(), 7042);
    assert_eq!(v[0]["answer"]["rank"].as_u64().unwrap(), 0);
    // Bad inputs: a clear message and exit status 1 (2 for a value the command line refuses,
    // as for every usage error), never a panic.
    for (args, needle, code) in [
        (
            vec!["predict", "--model", "/no/such/model.gguf", "x"],
            "no such file",
            1,
        ),
        (
            vec!["predict", "--model", "llama-7b", "x"],
            "gemma3-270m",
            1,
        ),
        (
            vec![
                "generate",
                "--model",
                "smollm2-135m",
                "--temperature",
                "-1",
                "x",
            ],
            "--temperature",
            2,
        ),
    ] {
        let out = unlearn_cmd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn cli_inspect_describes_the_model() {
    let out = unlearn_cmd()
        .args(["inspect", "--model", "smollm2-135m", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["config"]["num_layers"], 30);
    assert_eq!(v["tokenizer"]["kind"], "ByteLevelBpe");
    assert!(v["parameters"].as_u64().unwrap() > 130_000_000);
    assert!(Path::new(v["path"].as_str().unwrap()).exists());
}
