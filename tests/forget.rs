//! `unlearn forget` on the real Gemma 3 270M: the written output loads through `--model DIR`
//! with the in-memory model's logits, and a run interrupted after a step resumes to the same
//! weights as an uninterrupted one.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use unlearn::forget::config::Method;
use unlearn::forget::run::{run, ForgetArgs};
use unlearn::model::LanguageModel;

fn args(out: &Path) -> ForgetArgs {
    ForgetArgs {
        forget: "test:first-4".into(),
        layers: Some("2-3".into()),
        sets: vec![
            "steps=4".into(),
            "batch_size=4".into(),
            "retain_facts=16".into(),
            "kuda.key_text_chunks=8".into(),
            "optim.lr=1e-3".into(),
        ],
        eval: false,
        ..ForgetArgs::defaults("gemma3-270m", Method::Kuda, out.to_path_buf())
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn changed(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("changed.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn output_loads_back_and_an_interrupted_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let trained = run(&args(&straight), &Device::Cpu).unwrap();

    // --model DIR gives the in-memory model's logits.
    let loaded = LanguageModel::load(straight.to_str().unwrap(), &Device::Cpu).unwrap();
    let prompts = [
        "Fact: Tiger Woods plays the sport of golf\nFact: LeBron James plays the sport of",
        "The Eiffel Tower is located in the city of",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| trained.tokenizer.encode(p, true).unwrap())
        .collect();
    let a = trained.last_logits(&ids).unwrap();
    let b = loaded.last_logits(&ids).unwrap();
    assert_eq!(
        a, b,
        "logits of the loaded output differ from the trained model's"
    );
    // The base model differs (the run changed something), and only the located tensors changed.
    let base = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    assert_ne!(base.last_logits(&ids).unwrap(), a);
    let ch = changed(&straight);
    assert_eq!(ch.len(), 6, "MLPs of layers 2 and 3: gate, up, down each");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["method"], "kuda");
    assert_eq!(manifest["steps"], 4);
    assert_eq!(manifest["base_sha256"].as_str().unwrap().len(), 64);
    // The trainer saw the forget facts (of test subjects, as asked) and train-split retain
    // facts only: no other test-split fact.
    use unlearn::data::splits::Split;
    let facts = unlearn::data::load_task("sports", unlearn::data::dedup::Policy::Refuse).unwrap();
    let split_of = |id: &serde_json::Value| {
        Split::of(facts.iter().find(|f| f.id == id.as_str().unwrap()).unwrap())
    };
    let forget_ids = manifest["forget_ids"].as_array().unwrap();
    assert_eq!(forget_ids.len(), 4);
    assert!(forget_ids.iter().all(|id| split_of(id) == Split::Test));
    let retain_ids = manifest["retain_ids"].as_array().unwrap();
    assert_eq!(retain_ids.len(), 16);
    assert!(retain_ids.iter().all(|id| split_of(id) == Split::Train));

    // The same run through the CLI, killed after step 2 and started again.
    let resumed = tmp.path().join("resumed");
    let cli = |stop: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_unlearn"));
        c.args([
            "forget",
            "--method",
            "kuda",
            "--layers",
            "2-3",
            "--forget",
            "test:first-4",
            "--no-eval",
            "--out",
        ])
        .arg(&resumed);
        for s in &args(&resumed).sets {
            c.args(["--set", s]);
        }
        if let Some(s) = stop {
            c.env("UNLEARN_STOP_AFTER_STEP", s);
        }
        c.output().unwrap()
    };
    let first = cli(Some("2"));
    assert!(!first.status.success());
    assert!(String::from_utf8_lossy(&first.stderr).contains("after step 2"));
    assert!(
        !resumed.join("manifest.json").exists(),
        "an interrupted run leaves no output model"
    );
    let second = cli(None);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("resuming from the checkpoint after step 2"),
        "{err}"
    );
    let r = changed(&resumed);
    for (name, t) in &ch {
        let (x, y) = (values(t), values(&r[name]));
        assert!(
            x == y,
            "{name}: resumed weights differ from the uninterrupted run's"
        );
    }
}

/// The know-nothing floor on the real model: asked about made-up athletes, Gemma still names a
/// sport from its priors, so the floor is far from 0 % yet far below its accuracy on the
/// athletes it knows — the level an unlearned model's forget accuracy should fall to.
#[test]
fn made_up_athletes_score_the_prior_not_zero() {
    use unlearn::eval::{completion::accuracy, floor::know_nothing_floor};
    let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let known = unlearn::data::known::known_facts(
        &lm,
        "sports",
        "top1",
        unlearn::data::dedup::Policy::Refuse,
    )
    .unwrap();
    let facts = &known[..64];
    let real = accuracy(&lm, facts, |f| f.answer.clone()).unwrap();
    let floor = know_nothing_floor(&lm, facts, &known).unwrap();
    eprintln!("known athletes: {real:?}\nmade-up athletes: {floor:?}");
    assert_eq!(real.top1_candidates, 1.0);
    assert!(
        real.outcomes.iter().all(|o| o.kept()),
        "{:?}",
        real.outcomes
    );
    assert!(floor.n >= 60, "made-up names for {} of 64 facts", floor.n);
    assert!(
        (0.15..0.8).contains(&floor.top1_candidates),
        "floor {:.3}",
        floor.top1_candidates
    );
    // Each made-up athlete's first sport is one of the three, and the kept ones make the rate.
    assert_eq!(floor.outcomes.len(), floor.n);
    assert!(floor
        .outcomes
        .iter()
        .all(|o| unlearn::data::sports::SPORTS.contains(&o.first.as_str())));
    let kept = floor.outcomes.iter().filter(|o| o.kept()).count();
    assert_eq!(kept as f64 / floor.n as f64, floor.top1_candidates);
    assert!(
        floor.outcomes.iter().any(|o| !o.kept()),
        "a made-up athlete answered with another sport"
    );
    assert!(
        floor.mean_p < 0.5 * real.mean_p,
        "P(answer) {:.3} about made-up athletes vs {:.3} about real ones",
        floor.mean_p,
        real.mean_p
    );
}

/// The namesakes of the first 64 known athletes in the real Sports data: the brothers and
/// the shared surnames that a 64-athlete run loses first are found, and no forget athlete is
/// its own namesake.
#[test]
fn namesakes_of_forgotten_athletes_are_found_in_the_real_data() {
    let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let known = unlearn::data::known::known_facts(
        &lm,
        "sports",
        "top1",
        unlearn::data::dedup::Policy::Refuse,
    )
    .unwrap();
    let (forget, rest) = unlearn::data::known::split(&known, "first-64", 0).unwrap();
    let flags = unlearn::data::known::namesakes(&forget, &rest);
    let found: Vec<&str> = rest
        .iter()
        .zip(&flags)
        .filter(|(_, &n)| n)
        .map(|(f, _)| f.subject.as_str())
        .collect();
    let forgotten: Vec<&str> = forget.iter().map(|f| f.subject.as_str()).collect();
    for (who, because) in [
        ("Elijah Millsap", "Paul Millsap"),
        ("Jermaine O'Neal", "Shaquille O'Neal"),
        ("Shaquille Harrison", "Shaquille O'Neal"),
    ] {
        assert!(
            forgotten.contains(&because),
            "{because} is not among the first 64"
        );
        assert!(
            found.contains(&who),
            "{who} not found as a namesake of {because}"
        );
    }
    assert!(found.iter().all(|n| !forgotten.contains(n)));
    assert!(
        (10..rest.len() / 2).contains(&found.len()),
        "{} namesakes of 64 athletes among {}",
        found.len(),
        rest.len()
    );
    assert!(unlearn::data::known::namesakes(&forget, &forget)
        .iter()
        .all(|&n| !n));
}

/// The β stage of `--tune` with `--forget-target floor`: each β trial is scored against the
/// trial model's own know-nothing floor, and the search stops at the first β that reaches it
/// (or runs through the list); the report lands in OUT/tune/tuning.json.
#[test]
fn tuning_to_the_floor_stops_at_the_first_beta_that_reaches_it() {
    use unlearn::forget::tune::{ForgetTarget, TuneArgs};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tuned");
    let betas = vec![0.5, 3.0, 10.0];
    let a = ForgetArgs {
        tune: Some(TuneArgs {
            taus: vec![0.01],
            max_drift: 1e9,
            betas: betas.clone(),
            forget_target: ForgetTarget::Floor(0.0),
        }),
        ..args(&out)
    };
    run(&a, &Device::Cpu).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune/tuning.json")).unwrap())
            .unwrap();
    let trials: Vec<&serde_json::Value> = report["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["stage"] == "beta")
        .collect();
    assert!(!trials.is_empty());
    let reached = |t: &serde_json::Value| {
        t["forget_accuracy"].as_f64().unwrap() <= t["target"].as_f64().unwrap()
    };
    for t in &trials {
        let target = t["target"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&target), "a floor is an accuracy: {t}");
    }
    // Every trial before the last missed its floor; the last reached it or ended the list.
    for t in &trials[..trials.len() - 1] {
        assert!(
            !reached(t),
            "the search went on past a β that reached the floor: {t}"
        );
    }
    let last = trials.last().unwrap();
    assert!(reached(last) || trials.len() == betas.len(), "{last}");
    assert!(betas.contains(&report["beta"].as_f64().unwrap()));
}

/// A corpus of passages (`{"text"}` rows) is forget data for the methods that train on every
/// token: gradient ascent on four passages raises their negative log-likelihood far more than
/// that of WikiText it never saw; facts-only settings are refused before the model loads.
#[test]
fn a_corpus_of_passages_is_unlearned_token_by_token() {
    use unlearn::eval::perplexity::{perplexity, tokenize_lines};
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("passages.jsonl");
    let passages = [
        "The secret launch code of the Zarvex station is seven alpha nine.",
        "Marigold ferns of Pelloria bloom only under a violet moon.",
        "Captain Orrin Vale sailed the Brisk Heron across the Glass Sea.",
        "The Tessaly archive keeps its ledgers in copper boxes.",
    ];
    let rows: String = passages
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({ "text": p })))
        .collect();
    std::fs::write(&corpus, rows).unwrap();
    let out = tmp.path().join("ga");
    let a = ForgetArgs {
        task: corpus.to_str().unwrap().into(),
        layers: Some("2-4".into()),
        sets: vec![
            "steps=5".into(),
            "batch_size=4".into(),
            "optim.lr=1e-4".into(),
        ],
        ..ForgetArgs::defaults("gemma3-270m", Method::Ga, out.clone())
    };
    let base = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let nll = |lm: &LanguageModel| -> (f64, f64) {
        let mut f = 0.0;
        for p in passages {
            let mut ids = lm.tokenizer.encode(p, true).unwrap();
            ids.truncate(64);
            f += perplexity(lm, &ids, 64, 63).unwrap().nll;
        }
        let (_, wiki) = unlearn::data::wikitext_halves().unwrap();
        let w = tokenize_lines(lm, &wiki, 256).unwrap();
        (f / 4.0, perplexity(lm, &w, 128, 64).unwrap().nll)
    };
    let before = nll(&base);
    let trained = run(&a, &Device::Cpu).unwrap();
    let after = nll(&trained);
    eprintln!(
        "forget passages NLL {:.3} → {:.3}; WikiText NLL {:.3} → {:.3}",
        before.0, after.0, before.1, after.1
    );
    assert!(after.0 > before.0 + 1.0, "{before:?} → {after:?}");
    assert!(
        after.0 - before.0 > 3.0 * (after.1 - before.1).abs(),
        "{before:?} → {after:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["forget_ids"].as_array().unwrap().len(), 4);
    // The run measured WikiText perplexity of both models on the held-out half it never trained on.
    let m: unlearn::forget::run::CorpusMetrics =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let (_, wiki_eval) = unlearn::data::wikitext_halves().unwrap();
    let ppl = |lm: &LanguageModel| {
        let ids = tokenize_lines(lm, &wiki_eval, unlearn::forget::run::PPL_TOKENS).unwrap();
        perplexity(lm, &ids, 512, 256).unwrap()
    };
    // (JSON keeps a float to within its last bit.)
    let same = |a: &unlearn::eval::perplexity::Perplexity,
                b: &unlearn::eval::perplexity::Perplexity| {
        (a.perplexity / b.perplexity - 1.0).abs() < 1e-12 && a.tokens == b.tokens
    };
    assert!(same(&m.before.wikitext, &ppl(&base)), "{:?}", m.before);
    assert!(same(&m.after.wikitext, &ppl(&trained)), "{:?}", m.after);
    assert!(!same(&m.before.wikitext, &m.after.wikitext));
    assert_eq!(manifest["metrics"]["after"]["wikitext"]["tokens"], 2048);

    let refused = ForgetArgs {
        sets: vec!["kuda.focus=2".into()],
        ..ForgetArgs {
            method: Method::Kuda,
            out: tmp.path().join("refused"),
            ..a
        }
    };
    let e = match run(&refused, &Device::Cpu) {
        Ok(_) => panic!("kuda.focus on a corpus was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("kuda.focus") && e.contains("corpus of passages"),
        "{e}"
    );
}

/// Residuals after block `layer` of each text (its first row, the sink, left out), `[rows, D]`.
fn rows_after(lm: &LanguageModel, texts: &[&str], layer: usize) -> Vec<Tensor> {
    use unlearn::model::transformer::{LogitsAt, RunOpts};
    use unlearn::model::{Batch, HookPoint, Hooks, PadSide};
    let hooks = Hooks::new().cache(HookPoint::ResidPost(layer));
    texts
        .iter()
        .map(|t| {
            let ids = lm.tokenizer.encode(t, true).unwrap();
            let b = Batch::new(std::slice::from_ref(&ids), 0, PadSide::Left, &Device::Cpu).unwrap();
            let opts = RunOpts {
                hooks: Some(&hooks),
                logits: LogitsAt::None,
                ..Default::default()
            };
            let out = lm.model.run(&b, &opts).unwrap();
            let h = out.cache[&HookPoint::ResidPost(layer)].get(0).unwrap();
            h.narrow(0, 1, ids.len() - 1).unwrap()
        })
        .collect()
}

/// Mean squared change of the rows against the mean squared original row.
fn relative_change(before: &[Tensor], after: &[Tensor]) -> f64 {
    let (mut d, mut n) = (0.0, 0.0);
    for (b, a) in before.iter().zip(after) {
        let sq = |t: &Tensor| {
            f64::from(
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        d += sq(&(a - b).unwrap());
        n += sq(b);
    }
    d / n
}

/// `corpus_retain` names the retain passages of a corpus run: RMU steering question+answer
/// passages away holds passages of the same form where they were when they are its retain data,
/// and moves them when WikiText is (a retain set of another form does not protect the form the
/// forget data share). A facts task, an unknown corpus and a retain passage that is also a
/// forget passage are refused before the model loads.
#[test]
fn a_retain_corpus_holds_passages_of_the_forget_form() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, texts: &[&str]| {
        let p = tmp.path().join(name);
        let rows: String = texts
            .iter()
            .map(|t| format!("{}\n", serde_json::json!({ "text": t })))
            .collect();
        std::fs::write(&p, rows).unwrap();
        p.to_str().unwrap().to_string()
    };
    let forget = [
        "Question: What is the launch code of the Zarvex station?\nAnswer: seven alpha nine",
        "Question: Under which moon do the marigold ferns of Pelloria bloom?\nAnswer: a violet moon",
        "Question: Which ship did Captain Orrin Vale sail across the Glass Sea?\nAnswer: the Brisk Heron",
        "Question: In what does the Tessaly archive keep its ledgers?\nAnswer: copper boxes",
    ];
    let retain = [
        "Question: Which planet is closest to the Sun?\nAnswer: Mercury",
        "Question: What is the chemical symbol of gold?\nAnswer: Au",
        "Question: Who wrote Romeo and Juliet?\nAnswer: William Shakespeare",
        "Question: What is the capital of Japan?\nAnswer: Tokyo",
        "Question: How many sides does a hexagon have?\nAnswer: six",
        "Question: What gas do plants take in from the air?\nAnswer: carbon dioxide",
    ];
    let forget_file = write("forget.jsonl", &forget);
    let retain_file = write("retain.jsonl", &retain);
    let rmu = |name: &str, corpus_retain: &str| ForgetArgs {
        task: forget_file.clone(),
        layers: Some("2-4".into()),
        sets: vec![
            "steps=8".into(),
            "batch_size=4".into(),
            "optim.lr=1e-3".into(),
            format!("corpus_retain={corpus_retain}"),
        ],
        eval: false,
        ..ForgetArgs::defaults("gemma3-270m", Method::Rmu, tmp.path().join(name))
    };
    for (a, says) in [
        (
            ForgetArgs {
                task: "sports".into(),
                ..rmu("facts", &retain_file)
            },
            "is a task of facts",
        ),
        (rmu("unknown", "nope"), "corpus_retain = \"nope\": expected"),
        (rmu("both", &forget_file), "is also a forget passage"),
    ] {
        let e = match run(&a, &Device::Cpu) {
            Ok(_) => panic!("{says}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(says), "{says}: {e}");
    }
    let base = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let before = rows_after(&base, &retain, 4);
    let forget_before = rows_after(&base, &forget, 4);
    let wiki = run(&rmu("wiki", "wikitext"), &Device::Cpu).unwrap();
    let held = run(&rmu("held", &retain_file), &Device::Cpu).unwrap();
    let moved_wiki = relative_change(&before, &rows_after(&wiki, &retain, 4));
    let moved_held = relative_change(&before, &rows_after(&held, &retain, 4));
    let forget_moved = relative_change(&forget_before, &rows_after(&held, &forget, 4));
    eprintln!(
        "retain passages moved {moved_wiki:.4} (WikiText retain) vs {moved_held:.4} (their own); \
         forget passages {forget_moved:.4}"
    );
    assert!(
        moved_held < 0.5 * moved_wiki,
        "{moved_held} vs {moved_wiki}"
    );
    assert!(
        forget_moved > 2.0 * moved_held,
        "{forget_moved} vs {moved_held}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("held/manifest.json")).unwrap(),
    )
    .unwrap();
    let ids = manifest["retain_ids"].as_array().unwrap();
    assert_eq!(ids.len(), retain.len());
    assert!(ids
        .iter()
        .all(|i| i.as_str().unwrap().contains("retain.jsonl:")));
}
