//! A small model whose facts are planted, by construction, in the MLP of one layer: every
//! localization method must find that layer. Subject token `s` maps to answer `c(s)` through
//! one hidden unit of the planted MLP (gate and up read the subject's embedding, down writes
//! the answer's unembedding direction); every other weight is small noise.

use crate::model::config::ModelConfig;
use crate::model::ops::tests::rnd;
use crate::model::weights::Weights;
use crate::model::Transformer;
use candle_core::{DType, Tensor};

pub const PLANTED_LAYER: usize = 2;
pub const N_LAYERS: usize = 4;
pub const ANSWERS: [u32; 3] = [60, 61, 62];
/// Subject tokens; subject `SUBJECTS.start + i` has answer `ANSWERS[i % 3]`.
pub const SUBJECTS: std::ops::Range<u32> = 10..58;

/// One planted fact: `[bos, 5, subject]`: the subject is the last token, so the answer is read
/// where the planted MLP writes it (no attention circuit has to move it).
pub struct PlantedFact {
    pub ids: Vec<u32>,
    pub subject_pos: usize,
    pub class: usize,
    pub answer: u32,
}

pub fn facts() -> Vec<PlantedFact> {
    SUBJECTS
        .enumerate()
        .map(|(i, s)| PlantedFact {
            ids: vec![1, 5, s],
            subject_pos: 2,
            class: i % 3,
            answer: ANSWERS[i % 3],
        })
        .collect()
}

fn row(t: &Tensor, i: usize) -> Vec<f64> {
    t.get(i).unwrap().to_vec1().unwrap()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

pub fn model() -> Transformer {
    build(32)
}

/// The planted model with residual width `hidden`.
fn build(hidden: usize) -> Transformer {
    let c = ModelConfig {
        head_dim: 8,
        max_position_embeddings: 64,
        ..ModelConfig::llama(64, hidden, 64, N_LAYERS, 4, 2, 10000.0, 1e-6)
    };
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let mut w = Weights::default();
    for (i, (name, shape)) in Weights::expected_shapes(&c).into_iter().enumerate() {
        let t = if name.contains("norm") {
            Tensor::ones(shape.as_slice(), DType::F64, &candle_core::Device::Cpu).unwrap()
        } else if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            rnd(&shape, 7000 + i as u64, 1.0)
        } else {
            rnd(&shape, 7000 + i as u64, 0.02)
        };
        w.tensors.insert(name, t);
    }
    let emb = w.tensors["model.embed_tokens.weight"].clone();
    let lm = w.tensors["lm_head.weight"].clone();
    let (mut gate, mut down) = (vec![0f64; f * d], vec![0f64; d * f]);
    let g = 2.0 / (d as f64).sqrt();
    for (i, s) in SUBJECTS.enumerate() {
        let e = unit(&row(&emb, s as usize));
        for k in 0..d {
            gate[i * d + k] = g * e[k];
        }
        let u = unit(&row(&lm, ANSWERS[i % 3] as usize));
        for k in 0..d {
            down[k * f + i] = 3.0 * u[k];
        }
    }
    let p = |m: &str| format!("model.layers.{PLANTED_LAYER}.mlp.{m}.weight");
    let dev = candle_core::Device::Cpu;
    let gate = Tensor::from_vec(gate, (f, d), &dev).unwrap();
    w.tensors.insert(p("gate_proj"), gate.clone());
    w.tensors.insert(p("up_proj"), gate);
    w.tensors.insert(
        p("down_proj"),
        Tensor::from_vec(down, (d, f), &dev).unwrap(),
    );
    Transformer::new(c, w).unwrap()
}

/// The mover variant: facts `[bos, 5, subject, 7]`, so the answer written by the planted MLP
/// at the subject must be moved to the last token by an attention head. Head
/// [`MOVER_HEAD`] of the last block attends uniformly, reads the three answer directions in
/// its values and writes them back, amplified, through its output.
pub const MOVER_HEAD: (usize, usize) = (N_LAYERS - 1, 0);

pub fn mover_facts() -> Vec<PlantedFact> {
    facts()
        .into_iter()
        .map(|mut f| {
            f.ids.push(7);
            f
        })
        .collect()
}

pub fn mover_model() -> Transformer {
    // Width 64, so the fixed tokens (bos, 5, 7) can be orthogonal to all 48 subject
    // embeddings and the answer directions: the planted MLP stays silent there, and the
    // head's uniform average over the prompt is the subject's answer alone.
    let m = build(64);
    let c = m.config.clone();
    let hd = c.head_dim;
    let mut w = m.into_weights();
    let lm = w.tensors["lm_head.weight"].clone();
    let emb = w.tensors["model.embed_tokens.weight"].clone();
    let (l, h) = MOVER_HEAD;
    let group = h / (c.num_heads / c.num_kv_heads);
    let name = |x: &str| format!("model.layers.{l}.self_attn.{x}.weight");
    let dev = candle_core::Device::Cpu;
    let set = |w: &mut Weights, n: String, f: &dyn Fn(usize, usize, f64) -> f64| {
        let t = &w.tensors[&n];
        let (r, cols) = t.dims2().unwrap();
        let v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f64> = (0..r * cols).map(|i| f(i / cols, i % cols, v[i])).collect();
        w.tensors
            .insert(n, Tensor::from_vec(v, (r, cols), &dev).unwrap());
    };
    let orthonormal = |vs: &[Vec<f64>]| -> Vec<Vec<f64>> {
        let mut basis: Vec<Vec<f64>> = Vec::new();
        for v in vs {
            let mut u = v.clone();
            for _ in 0..2 {
                for b in &basis {
                    let c: f64 = u.iter().zip(b).map(|(x, y)| x * y).sum();
                    u.iter_mut().zip(b).for_each(|(x, y)| *x -= c * y);
                }
            }
            basis.push(unit(&u));
        }
        basis
    };
    let answers = orthonormal(
        &ANSWERS
            .iter()
            .map(|&a| row(&lm, a as usize))
            .collect::<Vec<_>>(),
    );
    let mut span: Vec<Vec<f64>> = answers.clone();
    span.extend(SUBJECTS.map(|s| row(&emb, s as usize)));
    let span = orthonormal(&span);
    let fixed: Vec<(usize, Vec<f64>)> = [1usize, 5, 7]
        .iter()
        .map(|&t| {
            let e = row(&emb, t);
            let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
            let mut u = e.clone();
            for b in &span {
                let c: f64 = u.iter().zip(b).map(|(x, y)| x * y).sum();
                u.iter_mut().zip(b).for_each(|(x, y)| *x -= c * y);
            }
            (t, unit(&u).iter().map(|x| x * norm).collect())
        })
        .collect();
    set(&mut w, "model.embed_tokens.weight".into(), &|i, k, x| {
        fixed.iter().find(|(t, _)| *t == i).map_or(x, |(_, e)| e[k])
    });
    // Zero query: uniform attention over the prompt.
    set(&mut w, name("q_proj"), &|i, _, x| {
        if i / hd == h {
            0.0
        } else {
            x
        }
    });
    // The head's key/value group reads the answer directions (the other head of the group
    // writes through a noise output, so its effect stays small) ...
    set(
        &mut w,
        name("v_proj"),
        &|i, k, x| match (i / hd == group, i % hd) {
            (false, _) => x,
            (true, j) if j < 3 => answers[j][k],
            _ => 0.0,
        },
    );
    // ... and writes them back, amplified.
    set(
        &mut w,
        name("o_proj"),
        &|i, k, x| match (k / hd == h, k % hd) {
            (false, _) => x,
            (true, j) if j < 3 => 20.0 * answers[j][i],
            _ => 0.0,
        },
    );
    Transformer::new(c, w).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locate::probe::{curve, features_of, rises, FitOpts, ProbeAt};

    fn argmax(v: &[f64]) -> usize {
        (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
    }

    fn knows(m: &Transformer, fs: &[PlantedFact]) {
        let ids: Vec<Vec<u32>> = fs.iter().map(|f| f.ids.clone()).collect();
        let b = crate::model::Batch::new(&ids, 0, crate::model::PadSide::Left, m.device()).unwrap();
        let logits: Vec<Vec<f64>> = m
            .run(&b, &Default::default())
            .unwrap()
            .logits
            .unwrap()
            .to_vec2()
            .unwrap();
        let right = fs
            .iter()
            .zip(&logits)
            .filter(|(f, l)| argmax(l) == f.answer as usize)
            .count();
        assert!(right >= fs.len() * 9 / 10, "{right} of {}", fs.len());
    }

    #[test]
    fn the_planted_models_know_their_facts() {
        knows(&model(), &facts());
        knows(&mover_model(), &mover_facts());
    }

    /// Path patching finds the mover head as the extraction head and, through it, the
    /// planted MLP.
    #[test]
    fn path_patching_finds_the_mover_head_and_the_planted_mlp() {
        use crate::locate::path_patch::{path_patch, PathItem, PathOpts};
        let m = mover_model();
        let items: Vec<PathItem> = mover_facts()
            .iter()
            .step_by(5)
            .map(|f| PathItem {
                ids: f.ids.clone(),
                subject: f.subject_pos..f.subject_pos + 1,
                answer: f.answer,
            })
            .collect();
        let o = PathOpts {
            samples: 3,
            noise_std: 3.0,
            seed: 1,
            extraction_heads: 2,
        };
        let s = path_patch(&m, &items, &o, || {}).unwrap();
        assert_eq!(s.extraction_heads[0], MOVER_HEAD, "{:?}", s.head_direct);
        assert!(s.p_clean > 0.5 && s.p_corrupt < s.p_clean / 2.0, "{s:?}");
        let (l, h) = MOVER_HEAD;
        assert!(s.head_direct[l][h] > 0.3, "{:?}", s.head_direct);
        assert_eq!(
            argmax(&s.mlp_via_heads),
            PLANTED_LAYER,
            "{:?}",
            s.mlp_via_heads
        );
        for (k, v) in s.mlp_via_heads.iter().enumerate() {
            if k != PLANTED_LAYER {
                assert!(
                    *v < s.mlp_via_heads[PLANTED_LAYER] / 5.0,
                    "{:?}",
                    s.mlp_via_heads
                );
            }
        }
    }

    /// Probes trained on half of the subjects and tested on the others are at chance before
    /// the planted block and near perfect after it, so the steepest rise is the planted MLP.
    #[test]
    fn probes_find_the_planted_layer() {
        let m = model();
        let fs = facts();
        let items: Vec<(Vec<u32>, usize)> =
            fs.iter().map(|f| (f.ids.clone(), f.subject_pos)).collect();
        let feats = features_of(&m, 0, &items, 16).unwrap();
        let x = feats.at(ProbeAt::LastSubject);
        let split =
            |keep: usize| -> Vec<usize> { (0..fs.len()).filter(|i| i % 2 == keep).collect() };
        let (tr, te) = (split(0), split(1));
        let pick = |idx: &[usize]| -> Vec<Vec<Vec<f32>>> {
            x.iter()
                .map(|l| idx.iter().map(|&i| l[i].clone()).collect())
                .collect()
        };
        let as_facts = |idx: &[usize]| -> Vec<crate::data::Fact> {
            idx.iter()
                .map(|&i| crate::data::Fact {
                    id: i.to_string(),
                    prompt: "p".into(),
                    subject: "p".into(),
                    answer: fs[i].class.to_string(),
                    new_answer: None,
                    paraphrases: vec![],
                    neighborhood: vec![],
                    candidates: vec![],
                    attribute: None,
                })
                .collect()
        };
        let (c, _, _) = curve(
            ProbeAt::LastSubject,
            &pick(&tr),
            &as_facts(&tr),
            &pick(&te),
            &as_facts(&te),
            FitOpts::default(),
        )
        .unwrap();
        assert_eq!(c.test.len(), N_LAYERS + 1);
        for l in 0..=PLANTED_LAYER {
            assert!(c.test[l] < 0.6, "layer index {l}: {:?}", c.test);
        }
        assert!(c.test[PLANTED_LAYER + 1] > 0.9, "{:?}", c.test);
        assert_eq!(argmax(&rises(&c)), PLANTED_LAYER, "{:?}", c.test);
    }

    /// Causal tracing (MLP restored at the subject) and attribution patching both put the
    /// largest effect on the planted MLP, for every fact tested.
    #[test]
    fn tracing_and_attribution_find_the_planted_layer() {
        use crate::locate::attribution::{attribute, AttributionItem, Corruption};
        use crate::locate::trace::{embedding_std, trace, TraceKind, TraceOpts};
        let m = model();
        let fs = facts();
        let mut mean = [0f64; N_LAYERS];
        for f in fs.iter().take(6) {
            let span = f.subject_pos..f.subject_pos + 1;
            let opts = TraceOpts {
                kind: TraceKind::Mlp,
                samples: 4,
                positions: Some(vec![f.subject_pos]),
                ..Default::default()
            };
            let g = trace(&m, &f.ids, span, f.answer, &opts).unwrap();
            let eff: Vec<f64> = (0..N_LAYERS)
                .map(|l| g.grid[l][f.subject_pos] - g.p_corrupt)
                .collect();
            assert_eq!(argmax(&eff), PLANTED_LAYER, "{eff:?}");
            for l in 0..N_LAYERS {
                mean[l] += eff[l];
            }
        }
        assert!(mean[PLANTED_LAYER] > 0.0);
        let items: Vec<AttributionItem> = fs
            .iter()
            .map(|f| AttributionItem {
                ids: f.ids.clone(),
                subject: f.subject_pos..f.subject_pos + 1,
                answer: f.answer,
                alternative: ANSWERS[(f.class + 1) % 3],
                // Subject replacement: the next subject, whose answer is the next class.
                corrupt_ids: Some(vec![
                    1,
                    5,
                    SUBJECTS.start + ((f.ids[2] - SUBJECTS.start + 1) % 48),
                ]),
            })
            .collect();
        let std = embedding_std(&m).unwrap() * 3.0;
        for c in [Corruption::Noise { std }, Corruption::Replace] {
            let s = attribute(&m, &items, c, 0).unwrap();
            assert_eq!(argmax(&s.mlps), PLANTED_LAYER, "{c:?}: {:?}", s.mlps);
            assert!(s.metric_corrupt < s.metric_clean, "{c:?}");
        }
    }
}
