//! Fuzz targets, one per parser of user files: each case is a mutation of a valid seed input
//! (or raw random bytes), and must end in a value or an error, never a panic, and never with
//! one allocation beyond the bound of `harness.rs`.
//!
//! A short run is part of the test suite; a long campaign:
//! `UNLEARN_FUZZ_ITERS=1000000 cargo test --release --test fuzz -- --nocapture --test-threads 1`
//! (each target prints its executions). A failure prints its seed; replay it with
//! `UNLEARN_FUZZ_SEED=0x… cargo test --release --test fuzz TARGET`.

mod gguf_gen;
mod harness;
mod regressions;
mod seeds;

use arbtest::arbitrary::Unstructured;
use harness::{bounded, fuzz, seeded_or_raw, Tally};
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;
use unlearn::data::dedup::Policy;
use unlearn::model::{gguf, hf_dir, TextTokenizer};

/// A scratch directory in memory where there is one (rewriting a file on disk thousands of
/// times a second is slow), else the system's temporary directory.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        false => tempfile::tempdir().unwrap(),
    }
}

#[global_allocator]
static ALLOC: harness::BoundedAlloc = harness::BoundedAlloc;

/// Read a GGUF from memory the way `load_gguf` does: header, config, tokenizer, every tensor.
fn parse_gguf(bytes: &[u8]) -> anyhow::Result<()> {
    let mut r = Cursor::new(bytes);
    let ct = gguf::read_content_from(&mut r, bytes.len() as u64, "fuzz.gguf")?;
    if let Ok(c) = gguf::config_from_gguf(&ct, Path::new("fuzz.gguf")) {
        let _ = c.validate();
    }
    if let Ok(t) = TextTokenizer::from_gguf(&ct) {
        // tokenizers keeps a per-thread cache for every BPE model ever built and never drops
        // it: each tokenizer is used in a thread of its own so that the cache goes with it.
        let len = bytes.len();
        let used = std::thread::scope(|s| {
            s.spawn(|| {
                bounded(len, || -> anyhow::Result<()> {
                    t.decode(&t.encode("a ab\u{e9} <s>", true)?)?;
                    Ok(())
                })
            })
            .join()
        });
        used.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    }
    for name in ct.tensor_infos.keys() {
        let q = ct.tensor(&mut r, name, &candle_core::Device::Cpu)?;
        q.dequantize(&candle_core::Device::Cpu)?;
    }
    Ok(())
}

#[test]
fn gguf_files() {
    let seeds = [
        seeds::gguf_spm(),
        seeds::gguf_byte_level(),
        seeds::gguf_gemma(),
    ];
    for s in &seeds {
        parse_gguf(s).expect("the seed GGUFs are valid");
    }
    let tally = Tally::default();
    fuzz("gguf", 4096, &tally, |u| {
        let bytes = match u.int_in_range(0..=3)? {
            0 => gguf_gen::structured(u)?,
            1 => {
                let base = gguf_gen::structured(u)?;
                harness::mutate(u, &base)?
            }
            _ => seeded_or_raw(u, &seeds)?,
        };
        tally.add(&bounded(bytes.len(), || parse_gguf(&bytes)));
        Ok(())
    });
}

/// A safetensors file and a config.json text, as `load_hf_dir` reads them.
#[test]
fn hf_dir_files() {
    let st = [seeds::safetensors()];
    assert_eq!(
        hf_dir::tensors_from_safetensors(&st[0], "s", &candle_core::Device::Cpu)
            .expect("the seed safetensors is valid")
            .len(),
        4
    );
    let configs: Vec<serde_json::Value> = seeds::config_jsons()
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let texts: Vec<Vec<u8>> = seeds::config_jsons()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let tally = Tally::default();
    fuzz("hf-dir", 2048, &tally, |u| {
        let bytes = seeded_or_raw(u, &st)?;
        tally.add(&bounded(bytes.len(), || {
            hf_dir::tensors_from_safetensors(&bytes, "fuzz.safetensors", &candle_core::Device::Cpu)
        }));
        let text = if u.arbitrary()? {
            let mut v = u.choose(&configs)?.clone();
            for _ in 0..u.int_in_range(1..=4)? {
                seeds::mutate_json(u, &mut v)?;
            }
            v.to_string().into_bytes()
        } else {
            seeded_or_raw(u, &texts)?
        };
        tally.add(&bounded(text.len(), || -> anyhow::Result<()> {
            let v: serde_json::Value = serde_json::from_slice(&text)?;
            hf_dir::config_from_hf(&v, Path::new("config.json"))?.validate()
        }));
        Ok(())
    });
}

/// The two tokenizers built from the seed GGUFs (SentencePiece, byte-level BPE).
fn tokenizers() -> &'static [TextTokenizer; 2] {
    static T: OnceLock<[TextTokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        [seeds::gguf_spm(), seeds::gguf_byte_level()].map(|b| {
            let ct = gguf::read_content_from(&mut Cursor::new(&b), b.len() as u64, "seed")
                .expect("the seed GGUF is valid");
            TextTokenizer::from_gguf(&ct).expect("the seed tokenizer is valid")
        })
    })
}

/// `tokenizer.json` and the special-token files of a Hugging Face directory.
#[test]
fn hf_tokenizer_files() {
    let dir = scratch();
    let seeds: Vec<Vec<(String, Vec<u8>)>> = tokenizers()
        .iter()
        .map(|t| {
            let d = tempfile::tempdir().unwrap();
            t.save_hf(d.path()).unwrap();
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            files.push((
                "config.json".into(),
                br#"{"bos_token_id": 1, "eos_token_id": [2]}"#.to_vec(),
            ));
            files
        })
        .collect();
    let tally = Tally::default();
    fuzz("hf-tokenizer", 2048, &tally, |u| {
        let files = u.choose(&seeds)?;
        let mut len = 0;
        for (name, bytes) in files {
            let path = dir.path().join(name);
            let _ = std::fs::remove_file(&path);
            if u.ratio(1, 4)? {
                continue; // the file is absent
            }
            let text = match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(mut v) if u.arbitrary()? => {
                    for _ in 0..u.int_in_range(1..=3)? {
                        seeds::mutate_json(u, &mut v)?;
                    }
                    v.to_string().into_bytes()
                }
                _ => seeded_or_raw(u, std::slice::from_ref(bytes))?,
            };
            len += text.len();
            std::fs::write(&path, &text).unwrap();
        }
        // tokenizers keeps a per-thread cache for every BPE model built: one thread per case.
        let read = std::thread::scope(|s| {
            s.spawn(|| {
                bounded(len, || -> anyhow::Result<()> {
                    let t = TextTokenizer::from_hf_dir(dir.path())?;
                    t.decode(&t.encode("a ab\u{e9} <s>", true)?)?;
                    Ok(())
                })
            })
            .join()
        });
        tally.add(&read.unwrap_or_else(|p| std::panic::resume_unwind(p)));
        Ok(())
    });
}

/// Text that tokenizers find hard: mutations of tricky seeds or arbitrary strings.
fn tricky_text(u: &mut Unstructured) -> arbtest::arbitrary::Result<String> {
    const SEEDS: [&str; 6] = [
        "The Eiffel Tower is in Paris",
        "  leading and trailing  ",
        "<s></s><unk><user><|end|>",
        "é漢字🦀\u{200d}\u{fffd}\r\n\t",
        "abcabc ab a",
        "'s 're 123456 !!!",
    ];
    if u.ratio(1, 3)? {
        return u.arbitrary();
    }
    let seed = u.choose(&SEEDS)?.as_bytes().to_vec();
    let bytes = harness::mutate(u, &seed)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Encoding and decoding any text or ids: no panic, and byte-level BPE gives the text back.
#[test]
fn tokenizer_text() {
    let toks = tokenizers();
    let tally = Tally::default();
    fuzz("tokenizer", 512, &tally, |u| {
        let text = tricky_text(u)?;
        let t = &toks[u.choose_index(2)?];
        let ids = bounded(text.len(), || {
            t.encode(&text, u.arbitrary().unwrap_or(true))
        });
        tally.add(&ids);
        let ids = ids.expect("encoding never fails on valid UTF-8");
        let back = bounded(ids.len() * 4, || t.decode(&ids)).expect("decoding own ids works");
        if t.kind == unlearn::model::tokenizer::TokenizerKind::ByteLevelBpe {
            assert_eq!(back, text, "byte-level BPE round trip");
        }
        if !text.is_empty() {
            let a = u.choose_index(text.len())?;
            let b = u.int_in_range(a..=text.len())?;
            if let Some(subject) = text.get(a..b) {
                tally.add(&bounded(text.len(), || {
                    t.encode_with_span(&text, subject, true)
                }));
            }
        }
        let raw: Vec<u32> = u.arbitrary()?;
        tally.add(&bounded(raw.len() * 4, || t.decode(&raw)));
        Ok(())
    });
}

/// The facts files of `--task PATH` (JSON lines or TSV), through the file API.
#[test]
fn facts_files() {
    let dir = scratch();
    let seeds = seeds::facts();
    let texts: Vec<Vec<u8>> = seeds.iter().map(|(_, t)| t.clone().into_bytes()).collect();
    let tally = Tally::default();
    fuzz("facts", 1024, &tally, |u| {
        let i = u.choose_index(seeds.len())?;
        let bytes = seeded_or_raw(u, &texts[i..=i])?;
        let path = dir.path().join(format!("facts.{}", seeds[i].0));
        std::fs::write(&path, &bytes).unwrap();
        // Both duplicate policies: refused (the default) and merged (`--dedup`).
        let policy = if u.arbitrary::<bool>()? {
            Policy::Merge
        } else {
            Policy::Refuse
        };
        tally.add(&bounded(bytes.len(), || {
            unlearn::data::user::load(&path, policy)
        }));
        Ok(())
    });
}

/// Other files a user hands over: relearning corpora (text, JSON, JSON lines) and
/// multiple-choice questions (JSON lines).
#[test]
fn corpus_and_question_files() {
    let dir = scratch();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("txt", b"first line\n\nsecond line\n".to_vec()),
        (
            "json",
            br#"[{"text": "a"}, {"question": "q?", "answer": "a"}]"#.to_vec(),
        ),
        (
            "jsonl",
            b"{\"text\": \"a b\"}\n{\"question\": \"q\", \"answer\": \"a\"}\n".to_vec(),
        ),
        (
            "mcq.jsonl",
            b"{\"question\": \"2+2?\", \"choices\": [\"3\", \"4\"], \"answer\": 1}\n".to_vec(),
        ),
    ];
    let tally = Tally::default();
    fuzz("corpus", 1024, &tally, |u| {
        let i = u.choose_index(seeds.len())?;
        let bytes = seeded_or_raw(u, std::slice::from_ref(&seeds[i].1))?;
        let path = dir.path().join(format!("user.{}", seeds[i].0));
        std::fs::write(&path, &bytes).unwrap();
        if seeds[i].0 == "mcq.jsonl" {
            tally.add(&bounded(bytes.len(), || {
                unlearn::eval::mcq::load_jsonl(&path)
            }));
        } else {
            tally.add(&bounded(bytes.len(), || {
                unlearn::forget::learn::read_corpus(&path)
            }));
        }
        Ok(())
    });
}

/// TOML text: byte mutations of a seed, or a seed parsed, mutated as a tree, written back.
fn toml_case(u: &mut Unstructured, seeds: &[String]) -> arbtest::arbitrary::Result<String> {
    if u.ratio(1, 2)? {
        let seed = u.choose(seeds)?;
        if let Ok(v) = toml::from_str::<toml::Value>(seed) {
            let mut j = serde_json::to_value(v).unwrap();
            for _ in 0..u.int_in_range(1..=4)? {
                seeds::mutate_json(u, &mut j)?;
            }
            if let Ok(t) = toml::to_string(&j) {
                return Ok(t);
            }
        }
    }
    let bytes: Vec<Vec<u8>> = seeds.iter().map(|s| s.clone().into_bytes()).collect();
    Ok(String::from_utf8_lossy(&seeded_or_raw(u, &bytes)?).into_owned())
}

/// Experiment files (`unlearn run`), parsed and checked.
#[test]
fn experiment_toml() {
    let seeds = seeds::experiments();
    for s in &seeds {
        unlearn::pipeline::experiment::Experiment::parse(s, "seed").expect("the seeds are valid");
    }
    let tally = Tally::default();
    fuzz("experiment", 4096, &tally, |u| {
        let text = toml_case(u, &seeds)?;
        tally.add(&bounded(text.len(), || {
            unlearn::pipeline::experiment::Experiment::parse(&text, "fuzz.toml")
        }));
        Ok(())
    });
}

/// `--config` TOML and `--set key=value` overrides of `unlearn forget`.
#[test]
fn forget_config() {
    use unlearn::forget::config::{ForgetConfig, Method};
    let seeds = seeds::forget_configs();
    let mut keys = Vec::new();
    seeds::leaf_keys(
        &serde_json::to_value(ForgetConfig::default()).unwrap(),
        "",
        &mut keys,
    );
    let tally = Tally::default();
    fuzz("forget-config", 2048, &tally, |u| {
        let m = *u.choose(&Method::ALL)?;
        let text = if u.arbitrary()? {
            Some(toml_case(u, &seeds)?)
        } else {
            None
        };
        let mut sets = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            sets.push(match u.int_in_range(0..=3)? {
                0 => u.arbitrary::<String>()?,
                1 => format!("{}={}", u.choose(&keys)?, u.arbitrary::<String>()?),
                _ => format!("{}={}", u.choose(&keys)?, u.choose(&seeds::ODD_SCALARS)?),
            });
        }
        let len =
            text.as_ref().map_or(0, String::len) + sets.iter().map(String::len).sum::<usize>();
        tally.add(&bounded(len, || {
            ForgetConfig::resolve(m, text.as_deref(), &sets)
        }));
        Ok(())
    });
}
