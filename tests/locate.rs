//! Causal tracing of the real default model against the PyTorch reference grid
//! (tests/fixtures/reference/trace_gemma3_grid.npy, protocol in its README.md).

use candle_core::Device;
use unlearn::locate::localization::best_window;
use unlearn::locate::trace::{trace, TraceKind, TraceOpts};
use unlearn::model::LanguageModel;

/// A little-endian f32 .npy array (C order).
fn read_npy_f32(path: &str) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..6], b"NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn gemma3_residual_trace_matches_the_reference_grid() {
    let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let prompt = "The Eiffel Tower is located in the city of";
    // The reference corrupts " Eiffel", " Tower" (the subject's tokens minus those of "The").
    let (ids, span) = lm
        .tokenizer
        .encode_with_span(prompt, "Eiffel Tower", true)
        .unwrap();
    assert_eq!((ids.len(), span.clone()), (10, 2..4));
    let answer = lm.tokenizer.encode(" Paris", false).unwrap()[0];
    let g = trace(&lm.model, &ids, span, answer, &TraceOpts::default()).unwrap();
    let (shape, want) = read_npy_f32(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/trace_gemma3_grid.npy"
    ));
    assert_eq!(shape, vec![18, 10]);
    assert_eq!((g.grid.len(), g.grid[0].len()), (18, 10));
    assert!((g.p_clean - 0.7594).abs() < 1e-3, "p_clean {}", g.p_clean);
    assert!(g.p_corrupt < 0.05, "p_corrupt {}", g.p_corrupt);
    let ours: Vec<f64> = g.grid.iter().flatten().copied().collect();
    let theirs: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let r = pearson(&ours, &theirs);
    assert!(r >= 0.9, "correlation with the reference grid {r}");
    // Peaks: the last token in late layers; the last subject token in early-middle layers.
    let (best_l, best_t) = (0..18)
        .flat_map(|l| (0..10).map(move |t| (l, t)))
        .max_by(|a, b| g.grid[a.0][a.1].total_cmp(&g.grid[b.0][b.1]))
        .unwrap();
    assert_eq!(best_t, 9);
    assert!(best_l >= 12, "best layer {best_l}");
    let subj: Vec<f64> = (0..18).map(|l| g.grid[l][3]).collect();
    let peak = (0..18)
        .max_by(|&a, &b| subj[a].total_cmp(&subj[b]))
        .unwrap();
    assert!(
        (2..=9).contains(&peak),
        "last subject token peaks at layer {peak}: {subj:?}"
    );
    // KUDA's window over the MLP effects falls where the subject is processed.
    let mlp = trace(
        &lm.model,
        &ids,
        2..4,
        answer,
        &TraceOpts {
            kind: TraceKind::Mlp,
            window: 5,
            samples: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let eff: Vec<f64> = (0..18).map(|l| mlp.grid[l][3] - mlp.p_corrupt).collect();
    let w = best_window(&eff, 3).unwrap();
    assert!(w <= 10, "MLP window starts at layer {w}: {eff:?}");
}

#[test]
fn cli_locate_writes_localization_and_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.tsv");
    std::fs::write(
        &facts,
        "prompt\tsubject\tanswer\tcandidates\n\
         The Eiffel Tower is located in the city of\tEiffel Tower\tParis\tParis|London\n\
         Toyota is headquartered in\tToyota\tJapan\tJapan|Germany\n\
         The official language of Brazil is\tBrazil\tPortuguese\tPortuguese|Spanish\n",
    )
    .unwrap();
    for method in ["kuda-window", "attribution", "random"] {
        let out = dir.path().join(method);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_unlearn"))
            .args([
                "locate",
                "--model",
                "smollm2-135m",
                "--known",
                "p>=0",
                "--forget",
                "first-2",
                "--samples",
                "2",
                "--max-facts",
                "2",
            ])
            .args([
                "--method",
                method,
                "--task",
                facts.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("localization.json")).unwrap())
                .unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(
            v["chosen"].as_array().unwrap().len(),
            3,
            "{method}: {}",
            v["chosen"]
        );
        assert_eq!(v["known_facts"], 3);
        assert!(v["param_count"].as_u64().unwrap() > 0);
        assert!(out.join("components.svg").exists());
        if method == "kuda-window" {
            assert!(out.join("trace.svg").exists());
            let layers: Vec<u64> = v["chosen"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["layer"].as_u64().unwrap())
                .collect();
            assert_eq!(
                layers[1],
                layers[0] + 1,
                "a window is contiguous: {layers:?}"
            );
        }
    }
    // Bad arguments are errors, not panics.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args([
            "locate",
            "--model",
            "smollm2-135m",
            "--known",
            "p>=0",
            "--method",
            "telepathy",
            "--task",
            facts.to_str().unwrap(),
            "--out",
        ])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("telepathy"));
}
