//! `unlearn muse` on the real Gemma 3 270M with a few items: every number is in range, the
//! report rows are written, and PrivLeak against the model itself as the "retrained" reference
//! is exactly 0 (MUSE's definition, (AUC − AUC_retrain) / AUC_retrain).

use candle_core::Device;
use unlearn::eval::muse::{run, MuseArgs, MuseOpts};

#[test]
fn muse_runs_and_privleak_against_itself_is_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("muse");
    let v = run(
        &MuseArgs {
            model: "gemma3-270m".into(),
            unlearned: None,
            retrained: Some("gemma3-270m".into()),
            data: unlearn::data::data_dir().join("muse/news"),
            opts: MuseOpts {
                n: 4,
                prompt_tokens: 32,
                new_tokens: 8,
                text_tokens: 32,
            },
            out: out.clone(),
        },
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(v.privleak.original, Some(0.0), "{:?}", v.privleak);
    let auc = v.auc_retrained.unwrap();
    assert!((0.0..=1.0).contains(&auc), "AUC {auc}");
    for r in &v.head.rows {
        assert!((0.0..=1.0).contains(&r.original), "{r:?}");
    }
    assert!(v
        .head
        .rows
        .iter()
        .any(|r| r.metric == "muse.privleak_abs_vs_retrained"));
    // What the report reads back is what was written.
    let back: unlearn::eval::schema::MuseMetrics =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(back.head.rows, v.head.rows);
    assert!(out.join("metrics.json").exists());
}
