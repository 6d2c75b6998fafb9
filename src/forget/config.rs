//! Hyper-parameters of `unlearn forget` / `unlearn edit`: one struct per method with the
//! defaults written down, read from TOML and overridden by `--set section.key=value`. Unknown
//! keys and nonsense values are errors that name the key.

use crate::forget::nullspace::Projection;
use crate::forget::optim::OptimConfig;
use crate::forget::seqs::{ForgetPositions, Sink};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An unlearning or editing method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Kuda,
    LocalizedFt,
    Ga,
    Graddiff,
    Npo,
    Simnpo,
    Rmu,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Kuda,
        Method::LocalizedFt,
        Method::Ga,
        Method::Graddiff,
        Method::Npo,
        Method::Simnpo,
        Method::Rmu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Kuda => "kuda",
            Method::LocalizedFt => "localized-ft",
            Method::Ga => "ga",
            Method::Graddiff => "graddiff",
            Method::Npo => "npo",
            Method::Simnpo => "simnpo",
            Method::Rmu => "rmu",
        }
    }

    /// Learning rate that works for this method on a 270M model with 3 MLP layers updated.
    fn default_lr(self) -> f64 {
        match self {
            Method::Kuda => 1e-3,
            Method::LocalizedFt => 3e-5,
            Method::Ga | Method::Graddiff => 2e-5,
            Method::Npo | Method::Simnpo => 5e-5,
            Method::Rmu => 1e-4,
        }
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Method::ALL.iter().find(|m| m.name() == s) {
            Some(m) => Ok(*m),
            None => bail!(
                "method {s:?}: use one of {}",
                Method::ALL.map(|m| m.name()).join(", ")
            ),
        }
    }
}

/// KUDA (SPEC §3.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KudaConfig {
    /// Inverse forgetting temperature β of exp(−β(1 − cos)).
    pub beta: f64,
    /// Share of the forget tokens sampled each step.
    pub token_ratio: f64,
    /// Weight of ‖h − h₀‖² on retain facts.
    pub retain_weight: f64,
    /// Weight of ‖h − h₀‖² on general text.
    pub text_weight: f64,
    pub projection: Projection,
    /// τ relative to the mean eigenvalue of the key covariance.
    pub tau: f64,
    /// General-text chunks added to the retain facts for the key statistics.
    pub key_text_chunks: usize,
    /// Representation layer ℓ* (default: the last updated layer).
    pub rep_layer: Option<usize>,
    /// Where the deviation is measured from: cos(h − c, h₀ − c). Gemma's residual carries a
    /// large component shared by every token, which keeps the plain cosine (c = 0) near 1
    /// whatever the subject; see docs/forget.md.
    pub center: Centre,
    /// Focus γ: weigh each forget fact's rows in the deviation by (its answer's share among
    /// the candidates)^γ, read every `standing_every` steps and scaled to average 1, so that
    /// the pressure goes to the facts the model still knows. 0 = every fact alike (SPEC).
    pub focus: f64,
    /// Variants that were measured (docs/results.md, "KUDA's loose ends") and did not
    /// earn a place in a preset: `kuda.experimental.*`.
    pub experimental: KudaExperimental,
}

impl Default for KudaConfig {
    fn default() -> Self {
        KudaConfig {
            beta: 3.0,
            token_ratio: 0.5,
            retain_weight: 10.0,
            text_weight: 10.0,
            projection: Projection::Relaxed,
            tau: 0.01,
            key_text_chunks: 64,
            rep_layer: None,
            center: Centre::None,
            focus: 0.0,
            experimental: KudaExperimental::default(),
        }
    }
}

/// KUDA's research settings (`kuda.experimental.*`): each measured against the default on
/// validation facts, none chosen by a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KudaExperimental {
    /// Weight of an optional cross-entropy on retain facts (runs the layers above ℓ*).
    pub retain_ce_weight: f64,
    /// Also project the optimizer's update (Adam's per-entry scaling would otherwise undo
    /// the projection of the gradient).
    pub project_update: bool,
    /// With `project_update = false`: the projected (forget) terms keep their own Adam
    /// moments and their Adam update is projected, instead of projecting their gradient
    /// before moments shared with the retain terms.
    pub moments_per_term: bool,
    /// The deviation's reference h₀ moved by a seeded random vector of this share of its
    /// norm (0 = off): exp(−β(1−cos(h, h₀))) has zero gradient at h = h₀, so without it the
    /// first steps follow float rounding (and differ with thread count and batch shapes);
    /// with it they follow a fixed direction away from the reference.
    pub start_perturbation: f64,
}

impl Default for KudaExperimental {
    fn default() -> Self {
        KudaExperimental {
            retain_ce_weight: 0.0,
            project_update: true,
            moments_per_term: false,
            start_perturbation: 0.0,
        }
    }
}

/// The centre c of KUDA's deviation cos(h − c, h₀ − c) (`kuda.center`; `true` and `false`
/// are read as `mean` and `none`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Centre {
    /// c = 0: the cosine of SPEC §3.1.
    #[default]
    None,
    /// c = the mean residual at ℓ* of the retain facts and general text.
    Mean,
    /// c = the mean residual, at the same place in the prompt (a subject token, the subject's
    /// last token, k tokens after it), of facts about subjects the model does not know
    /// (`retain_unknown_facts`): h₀ − c is then what the model holds about this subject beyond
    /// what it says of anyone, and reflecting it points away from the answer rather than
    /// toward the prior.
    Unknown,
    /// c = the mean residual, at the same place in the prompt, of the retain facts about
    /// subjects the model knows, each answer weighted the same: a centre that favours no
    /// answer, so reflecting h₀ − c points away from the answer even where the answer is also
    /// what the model says of strangers (the footballers of Sports Facts).
    Known,
}

impl Centre {
    pub fn name(self) -> &'static str {
        match self {
            Centre::None => "none",
            Centre::Mean => "mean",
            Centre::Unknown => "unknown",
            Centre::Known => "known",
        }
    }
}

impl std::str::FromStr for Centre {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "false" => Centre::None,
            "true" => Centre::Mean,
            _ => match [Centre::None, Centre::Mean, Centre::Unknown, Centre::Known]
                .into_iter()
                .find(|c| c.name() == s)
            {
                Some(c) => c,
                None => bail!("kuda.center {s:?}: use none, mean, unknown or known"),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Centre {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(b) => Ok(if b { Centre::Mean } else { Centre::None }),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Localized fine-tuning (Mechanistic Unlearning): λ₁ forget/inject + λ₂ retain + λ₃ text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FtConfig {
    pub forget_weight: f64,
    pub retain_weight: f64,
    pub text_weight: f64,
}

impl Default for FtConfig {
    fn default() -> Self {
        FtConfig {
            forget_weight: 1.0,
            retain_weight: 1.0,
            text_weight: 1.0,
        }
    }
}

/// NPO and SimNPO (with a retain cross-entropy, as in their papers' "+RT" variants).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreferenceConfig {
    pub beta: f64,
    /// SimNPO's margin γ (unused by NPO).
    pub gamma: f64,
    pub retain_weight: f64,
}

impl Default for PreferenceConfig {
    /// NPO's defaults (β = 0.1); SimNPO's (β = 2.5) are set in [`ForgetConfig::default`].
    fn default() -> Self {
        PreferenceConfig {
            beta: 0.1,
            gamma: 0.0,
            retain_weight: 1.0,
        }
    }
}

/// RMU: steer the layer-ℓ activation of forget tokens toward c·u.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmuConfig {
    /// c as a multiple of the mean norm of the original activations at ℓ on forget tokens.
    pub steer_coeff: f64,
    /// α: weight of the retain MSE to the frozen model.
    pub retain_weight: f64,
    /// Steering layer ℓ (default: the last updated layer).
    pub layer: Option<usize>,
}

impl Default for RmuConfig {
    fn default() -> Self {
        RmuConfig {
            steer_coeff: 4.0,
            retain_weight: 1.0,
            layer: None,
        }
    }
}

/// Research settings of the retain set (`experimental.*`), measured and not chosen by a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForgetExperimental {
    /// How many times each known retain fact enters the training retain set (the unknown
    /// ones once): the retain terms then weigh the known subjects, whose answers the
    /// evaluation reads, this many times the unknown ones. 1 = all facts alike.
    pub retain_known_repeat: usize,
}

impl Default for ForgetExperimental {
    fn default() -> Self {
        ForgetExperimental {
            retain_known_repeat: 1,
        }
    }
}

/// Tokens of general text read by the training's perplexity probe (`ppl_every`).
pub const PPL_PROBE_TOKENS: usize = 1024;

/// `corpus_retain`'s default: a corpus run retains WikiText chunks.
pub const WIKITEXT_RETAIN: &str = "wikitext";

/// Everything `unlearn forget` can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForgetConfig {
    pub steps: usize,
    /// Forget facts per step.
    pub batch_size: usize,
    /// Retain facts per step.
    pub retain_batch_size: usize,
    /// General-text chunks per step, and tokens per chunk.
    pub text_batch_size: usize,
    pub text_tokens: usize,
    /// Next-token targets sampled per text chunk for the text cross-entropy (0 = all).
    pub text_ce_rows: usize,
    /// Forget passages (a corpus task such as `wmdp-qa`) are cut into pieces of at most this
    /// many tokens.
    pub corpus_tokens: usize,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub grad_accum: usize,
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end, and after a step that ends
    /// ten minutes or more after the last checkpoint).
    pub checkpoint_every: usize,
    /// A loss term larger than this in magnitude counts as divergence.
    pub max_abs_loss: f64,
    /// The run counts as diverged when the updated weights' L2 norm exceeds this multiple of
    /// their original norm (0 = no check).
    pub diverge_weight_ratio: f64,
    /// The run counts as diverged when the retain cross-entropy exceeds this multiple of its
    /// value at the first step (0 = no check; only methods with a retain cross-entropy).
    pub diverge_retain_ratio: f64,
    /// Retain facts used for training; the other known facts are held out for evaluation.
    pub retain_facts: usize,
    /// Facts of the task the model does *not* know, added to the retain facts (their
    /// representations are kept where they were and their keys enter KUDA's key statistics;
    /// a method with a retain cross-entropy would also train them). More names that must not
    /// move make the update more specific to the forget subjects. 0 = known facts only.
    pub retain_unknown_facts: usize,
    /// Fill the retain facts first with the known facts about namesakes of a forget subject
    /// (a different subject sharing a name word: "Elijah Millsap" for "Paul Millsap"), then at
    /// random; off, they are drawn at random like the others and may land in the held-out set.
    pub retain_namesakes: bool,
    /// Positions of a forget fact that KUDA's deviation and RMU's steering act on: `prompt`
    /// (subject to the last prompt token), `subject`, `last-subject`, or `named` (last subject token to the last prompt token).
    pub forget_positions: ForgetPositions,
    /// How each sequence's first row (the attention sink) enters the representation losses:
    /// `keep` (like any other) or `drop` (no forget row, no scale; see [`Sink`]).
    pub sink: Sink,
    /// A corpus run's retain data: `wikitext` (chunks of WikiText-2's training half, like its
    /// general text) or a corpus task whose passages are cut like the forget passages —
    /// `mmlu-qa` (520 MMLU questions no built-in set scores, each written with its answer in
    /// the form of `wmdp-qa`, so the retain terms hold the question-and-answer form the forget
    /// passages share) or a `{"text"}` JSONL file; `retain_facts` of them, drawn by the seed.
    pub corpus_retain: String,
    /// Steps between two readings of the forget facts' standing (their answers against the
    /// other candidates), for `kuda.focus` and `stop_at_forget_acc`.
    pub standing_every: usize,
    /// Steps between readings of the model's perplexity on general text that no term trains
    /// on (the last [`PPL_PROBE_TOKENS`] tokens of WikiText-2's training half; windows of 512,
    /// stride 256), logged as `text_ppl` before the step: a model that stops working shows
    /// while it trains, not only in the closing metrics. 0 = never.
    pub ppl_every: usize,
    /// Stop training at the first reading where the forget facts' accuracy (top-1 among the
    /// candidates) is at or below this share; none = run every step.
    pub stop_at_forget_acc: Option<f64>,
    pub optim: OptimConfig,
    pub kuda: KudaConfig,
    pub localized_ft: FtConfig,
    /// GradDiff's retain weight.
    pub graddiff_retain_weight: f64,
    pub npo: PreferenceConfig,
    pub simnpo: PreferenceConfig,
    pub rmu: RmuConfig,
    /// Retain-set variants that were measured and did not earn a place in a preset:
    /// `experimental.*`.
    pub experimental: ForgetExperimental,
}

impl Default for ForgetConfig {
    fn default() -> Self {
        ForgetConfig {
            steps: 30,
            batch_size: 16,
            retain_batch_size: 32,
            text_batch_size: 4,
            text_tokens: 64,
            text_ce_rows: 16,
            corpus_tokens: 256,
            grad_accum: 1,
            seed: 0,
            checkpoint_every: 10,
            max_abs_loss: 1e4,
            diverge_weight_ratio: 10.0,
            diverge_retain_ratio: 100.0,
            retain_facts: 128,
            retain_unknown_facts: 0,
            retain_namesakes: false,
            forget_positions: ForgetPositions::Prompt,
            sink: Sink::Keep,
            corpus_retain: WIKITEXT_RETAIN.into(),
            standing_every: 10,
            ppl_every: 10,
            stop_at_forget_acc: None,
            optim: OptimConfig::default(),
            kuda: KudaConfig::default(),
            localized_ft: FtConfig::default(),
            graddiff_retain_weight: 1.0,
            npo: PreferenceConfig {
                beta: 0.1,
                gamma: 0.0,
                retain_weight: 1.0,
            },
            simnpo: PreferenceConfig {
                beta: 2.5,
                gamma: 0.0,
                retain_weight: 1.0,
            },
            rmu: RmuConfig::default(),
            experimental: ForgetExperimental::default(),
        }
    }
}

impl ForgetConfig {
    /// Defaults for a method (its learning rate).
    pub fn for_method(m: Method) -> ForgetConfig {
        let mut c = ForgetConfig::default();
        c.optim.lr = m.default_lr();
        c
    }

    /// Method defaults, then the TOML file's values, then `key=value` overrides. Each value
    /// is checked against its key on the way in, so an unknown key, a value of the wrong type
    /// or a number that is not finite is an error naming the key and what would be valid.
    pub fn resolve(m: Method, toml_text: Option<&str>, sets: &[String]) -> Result<ForgetConfig> {
        let defaults = serde_json::to_value(ForgetConfig::for_method(m))?;
        let mut v = defaults.clone();
        if let Some(t) = toml_text {
            let parsed: toml::Table = toml::from_str(t).context("config file is not valid TOML")?;
            let mut leaves = Vec::new();
            toml_leaves(&parsed, "", &mut leaves);
            for (key, val) in leaves {
                set_leaf(&mut v, &defaults, &key, val).context("config file")?;
            }
        }
        for s in sets {
            let (k, val) = s
                .split_once('=')
                .with_context(|| format!("--set {s:?}: expected key=value, e.g. kuda.beta=5"))?;
            set_leaf(&mut v, &defaults, k.trim(), Given::Text(val.trim()))
                .with_context(|| format!("--set {s:?}"))?;
        }
        let c: ForgetConfig =
            serde_json::from_value(v).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        for (v, name) in [
            (self.steps, "steps"),
            (self.batch_size, "batch_size"),
            (self.grad_accum, "grad_accum"),
            (self.checkpoint_every, "checkpoint_every"),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.text_tokens < 2 {
            bail!("text_tokens must be at least 2");
        }
        if self.corpus_tokens < 2 {
            bail!("corpus_tokens must be at least 2");
        }
        if self.experimental.retain_known_repeat == 0 {
            bail!("experimental.retain_known_repeat must be at least 1 (1 = each known retain fact once)");
        }
        self.optim.validate()?;
        let k = &self.kuda;
        if k.experimental.moments_per_term && k.experimental.project_update {
            bail!(
                "kuda.experimental.moments_per_term projects the forget terms' own Adam update; it \
                 goes with kuda.experimental.project_update = false (true projects the whole update)"
            );
        }
        if !(k.focus.is_finite() && k.focus >= 0.0) {
            bail!(
                "kuda.focus must be ≥ 0 (got {}; 0 = every forget fact alike)",
                k.focus
            );
        }
        let start = k.experimental.start_perturbation;
        if !(start.is_finite() && (0.0..1.0).contains(&start)) {
            bail!(
                "kuda.experimental.start_perturbation must be in [0, 1) (a share of the \
                 reference's norm; got {start})"
            );
        }
        for (v, name) in [
            (self.diverge_weight_ratio, "diverge_weight_ratio"),
            (self.diverge_retain_ratio, "diverge_retain_ratio"),
        ] {
            if !(v == 0.0 || (v.is_finite() && v > 1.0)) {
                bail!("{name} must be 0 (no check) or a ratio above 1, such as 10 (got {v})");
            }
        }
        if self.standing_every == 0 {
            bail!("standing_every must be at least 1");
        }
        if let Some(x) = self.stop_at_forget_acc {
            if !(0.0..=1.0).contains(&x) {
                bail!("stop_at_forget_acc must be a share in [0, 1] or none (got {x})");
            }
        }
        if !(k.token_ratio > 0.0 && k.token_ratio <= 1.0) {
            bail!("kuda.token_ratio must be in (0, 1] (got {})", k.token_ratio);
        }
        for (v, name) in [
            (k.beta, "kuda.beta"),
            (k.tau, "kuda.tau"),
            (self.npo.beta, "npo.beta"),
            (self.simnpo.beta, "simnpo.beta"),
            (self.rmu.steer_coeff, "rmu.steer_coeff"),
            (self.max_abs_loss, "max_abs_loss"),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number (got {v})");
            }
        }
        for (v, name) in [
            (k.retain_weight, "kuda.retain_weight"),
            (k.text_weight, "kuda.text_weight"),
            (
                k.experimental.retain_ce_weight,
                "kuda.experimental.retain_ce_weight",
            ),
            (
                self.localized_ft.forget_weight,
                "localized_ft.forget_weight",
            ),
            (
                self.localized_ft.retain_weight,
                "localized_ft.retain_weight",
            ),
            (self.localized_ft.text_weight, "localized_ft.text_weight"),
            (self.graddiff_retain_weight, "graddiff_retain_weight"),
            (self.npo.retain_weight, "npo.retain_weight"),
            (self.simnpo.retain_weight, "simnpo.retain_weight"),
            (self.rmu.retain_weight, "rmu.retain_weight"),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be ≥ 0 (got {v})");
            }
        }
        Ok(())
    }

    /// A configuration as a manifest recorded it, with the research settings that moved under
    /// `experimental` read from where older manifests kept them.
    pub fn deserialize_recorded<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<ForgetConfig, D::Error> {
        let mut v = Value::deserialize(d)?;
        for (section, name) in MOVED_TO_EXPERIMENTAL {
            let from = match section {
                Some(s) => v.get_mut(*s).and_then(Value::as_object_mut),
                None => v.as_object_mut(),
            };
            if let Some(old) = from.and_then(|o| o.remove(*name)) {
                let to = match section {
                    Some(s) => &mut v[*s],
                    None => &mut v,
                };
                if to.get("experimental").is_none() {
                    to["experimental"] = Value::Object(Default::default());
                }
                to["experimental"][*name] = old;
            }
        }
        serde_json::from_value(v).map_err(serde::de::Error::custom)
    }

    /// The defaults of every method as TOML (for `--help` and `forget --print-config`).
    pub fn defaults_toml(m: Method) -> String {
        toml::to_string(&ForgetConfig::for_method(m)).unwrap_or_default()
    }
}

/// Settings that moved under `experimental` (section, name), for manifests written before.
const MOVED_TO_EXPERIMENTAL: &[(Option<&str>, &str)] = &[
    (Some("kuda"), "retain_ce_weight"),
    (Some("kuda"), "project_update"),
    (Some("kuda"), "moments_per_term"),
    (Some("kuda"), "start_perturbation"),
    (None, "retain_known_repeat"),
];

/// A value given for a setting: the text after `--set key=`, or a TOML value.
enum Given<'a> {
    Text(&'a str),
    Toml(toml::Value),
}

impl Given<'_> {
    /// As written, for messages.
    fn shown(&self) -> String {
        match self {
            Given::Text(s) => s.to_string(),
            Given::Toml(t) => t.to_string(),
        }
    }

    /// The JSON value; an error for a number that is not finite (JSON has no NaN, and no
    /// setting takes one).
    fn to_json(&self) -> Result<Value> {
        let finite = |f: f64| -> Result<Value> {
            if !f.is_finite() {
                bail!("{} is not a finite number", self.shown());
            }
            Ok(Value::from(f))
        };
        Ok(match self {
            Given::Text(s) => {
                if let Ok(i) = s.parse::<u64>() {
                    Value::from(i)
                } else if let Ok(i) = s.parse::<i64>() {
                    Value::from(i)
                } else if let Ok(f) = s.parse::<f64>() {
                    finite(f)?
                } else {
                    match *s {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        "none" | "null" => Value::Null,
                        _ => Value::String(s.trim_matches('"').to_string()),
                    }
                }
            }
            Given::Toml(toml::Value::Float(f)) => finite(*f)?,
            Given::Toml(t) => serde_json::to_value(t)?,
        })
    }
}

/// The leaves of a TOML table as (dotted key, value); tables are sections.
fn toml_leaves<'a>(t: &toml::Table, prefix: &str, out: &mut Vec<(String, Given<'a>)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => toml_leaves(sub, &key, out),
            other => out.push((key, Given::Toml(other.clone()))),
        }
    }
}

/// What a setting takes, read from its default.
fn expected(default: &Value) -> String {
    match default {
        Value::Bool(b) => format!("true or false; the default is {b}"),
        Value::Number(n) if n.is_u64() => format!("a whole number ≥ 0; the default is {n}"),
        Value::Number(n) => format!("a finite number; the default is {n}"),
        Value::String(s) => format!("a name; the default is {s:?}"),
        _ => "a value or none; the default is none".into(),
    }
}

/// Set `key` (dotted) in `v` to `given`, checked against the setting's default in `defaults`:
/// the key must exist and the value must read as the setting's type.
fn set_leaf(v: &mut Value, defaults: &Value, key: &str, given: Given) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut slot = defaults;
    for (i, p) in parts.iter().enumerate() {
        let Some(obj) = slot.as_object() else {
            bail!(
                "`{}` is a setting, not a section: set it with {0}=VALUE",
                parts[..i].join(".")
            );
        };
        slot = match obj.get(*p) {
            Some(s) => s,
            None => bail!("unknown setting `{key}`{}", suggestion(defaults, key)),
        };
    }
    if slot.is_object() {
        bail!(
            "`{key}` is a section; set one of its keys: {}",
            leaf_keys(slot, key).join(", ")
        );
    }
    let shown = given.shown();
    let val = match (slot, given.to_json()) {
        // `none` is a word for a string setting (kuda.projection=none), not a null.
        (Value::String(_), Ok(Value::Null)) => Value::String("none".into()),
        (_, Ok(x)) => x,
        (_, Err(e)) => bail!("setting `{key}`: {e} (expected {})", expected(slot)),
    };
    // Read the defaults with this one value changed: a type error is then this key's.
    let mut trial = defaults.clone();
    put(&mut trial, &parts, val.clone());
    if let Err(e) = serde_json::from_value::<ForgetConfig>(trial) {
        match slot {
            Value::String(_) | Value::Null => bail!("setting `{key}`: {shown}: {e}"),
            _ => bail!(
                "setting `{key}`: {shown} is not valid (expected {})",
                expected(slot)
            ),
        }
    }
    put(v, &parts, val);
    Ok(())
}

/// Write `val` at the (existing) path `parts` of `v`.
fn put(v: &mut Value, parts: &[&str], val: Value) {
    let mut cur = v;
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = val;
}

/// Every setting under `v` as a dotted key.
fn leaf_keys(v: &Value, prefix: &str) -> Vec<String> {
    match v.as_object() {
        Some(obj) => obj
            .iter()
            .flat_map(|(k, sub)| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(sub, &key)
            })
            .collect(),
        None => vec![prefix.to_string()],
    }
}

/// " (did you mean `x`?)" for the setting closest to `key` in spelling, or the list of
/// settings of its section when none is close.
fn suggestion(defaults: &Value, key: &str) -> String {
    let all = leaf_keys(defaults, "");
    // A research setting that moved under `experimental`.
    let moved = match key.rsplit_once('.') {
        Some((section, name)) => format!("{section}.experimental.{name}"),
        None => format!("experimental.{key}"),
    };
    if all.contains(&moved) {
        return format!(" (it is a research setting now: `{moved}`)");
    }
    let best = all
        .iter()
        .map(|k| (edit_distance(k, key), k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2.max(key.len() / 4) => format!(" (did you mean `{k}`?)"),
        _ => {
            let section = key.rsplit_once('.').map_or("", |(s, _)| s);
            let near: Vec<&String> = all
                .iter()
                .filter(|k| k.rsplit_once('.').map_or("", |(s, _)| s) == section)
                .collect();
            let list: Vec<&str> = if near.is_empty() {
                all.iter().map(|k| k.as_str()).collect()
            } else {
                near.iter().map(|k| k.as_str()).collect()
            };
            format!("; valid keys: {}", list.join(", "))
        }
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_sets_override_method_defaults() {
        let c = ForgetConfig::resolve(
            Method::Kuda,
            Some("steps = 7\n[kuda]\nbeta = 5.0\nprojection = \"strict\"\n"),
            &["optim.lr=0.001".into(), "kuda.rep_layer=4".into()],
        )
        .unwrap();
        assert_eq!(c.steps, 7);
        assert_eq!(c.kuda.beta, 5.0);
        assert_eq!(c.kuda.projection, Projection::Strict);
        assert_eq!(c.kuda.rep_layer, Some(4));
        assert_eq!(c.optim.lr, 0.001);
        assert_eq!(c.kuda.token_ratio, KudaConfig::default().token_ratio);
        let d = ForgetConfig::resolve(Method::Ga, None, &[]).unwrap();
        assert_eq!(d.optim.lr, Method::Ga.default_lr());
        let n =
            ForgetConfig::resolve(Method::Kuda, None, &["kuda.projection=none".into()]).unwrap();
        assert_eq!(n.kuda.projection, Projection::None);
        let r = ForgetConfig::resolve(Method::Kuda, None, &["kuda.rep_layer=none".into()]).unwrap();
        assert_eq!(r.kuda.rep_layer, None);
    }

    #[test]
    fn manifests_with_the_research_settings_at_their_old_places_still_load() {
        let mut v = serde_json::to_value(ForgetConfig::for_method(Method::Kuda)).unwrap();
        let k = v["kuda"].as_object_mut().unwrap();
        k.remove("experimental");
        k.insert("project_update".into(), Value::Bool(false));
        k.insert("start_perturbation".into(), Value::from(0.05));
        let o = v.as_object_mut().unwrap();
        o.remove("experimental");
        o.insert("retain_known_repeat".into(), Value::from(3));
        let c = ForgetConfig::deserialize_recorded(v).unwrap();
        assert!(!c.kuda.experimental.project_update);
        assert_eq!(c.kuda.experimental.start_perturbation, 0.05);
        assert_eq!(c.experimental.retain_known_repeat, 3);
        assert_eq!(c.kuda.experimental.retain_ce_weight, 0.0);
    }

    #[test]
    fn research_settings_live_under_experimental_and_old_keys_say_where() {
        let c = ForgetConfig::resolve(
            Method::Kuda,
            Some("[kuda.experimental]\nproject_update = false\n"),
            &["kuda.experimental.start_perturbation=0.05".into()],
        )
        .unwrap();
        assert!(!c.kuda.experimental.project_update);
        assert_eq!(c.kuda.experimental.start_perturbation, 0.05);
        for (old, new) in [
            (
                "kuda.project_update=false",
                "kuda.experimental.project_update",
            ),
            ("retain_known_repeat=2", "experimental.retain_known_repeat"),
        ] {
            let e = ForgetConfig::resolve(Method::Kuda, None, &[old.into()]).unwrap_err();
            assert!(format!("{e:#}").contains(&format!("`{new}`")), "{e:#}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = ForgetConfig::resolve(Method::Kuda, None, &["kuda.betta=3".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("kuda.betta"), "{e:#}");
        let e = ForgetConfig::resolve(Method::Kuda, Some("[kuda]\nbetta = 3\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("betta"), "{e:#}");
        let e = ForgetConfig::resolve(Method::Kuda, None, &["kuda.token_ratio=1.5".into()])
            .unwrap_err();
        assert!(format!("{e:#}").contains("token_ratio"), "{e:#}");
        let e = ForgetConfig::resolve(Method::Kuda, None, &["kuda.projection=sideways".into()])
            .unwrap_err();
        assert!(format!("{e:#}").contains("sideways"), "{e:#}");
        for bad in ["kuda.focus=-1", "standing_every=0", "stop_at_forget_acc=5"] {
            let e = ForgetConfig::resolve(Method::Kuda, None, &[bad.into()]).unwrap_err();
            let key = bad.split('=').next().unwrap();
            assert!(format!("{e:#}").contains(key), "{e:#}");
        }
        for bad in ["diverge_weight_ratio=0.5", "diverge_retain_ratio=1"] {
            let e = ForgetConfig::resolve(Method::Kuda, None, &[bad.into()]).unwrap_err();
            let key = bad.split('=').next().unwrap();
            assert!(
                format!("{e:#}").contains(&format!("{key} must be 0 (no check)")),
                "{e:#}"
            );
        }
        let off = [
            "diverge_weight_ratio=0".into(),
            "diverge_retain_ratio=0".into(),
        ];
        ForgetConfig::resolve(Method::Kuda, None, &off).unwrap();
        let e = ForgetConfig::resolve(
            Method::Kuda,
            None,
            &["experimental.retain_known_repeat=0".into()],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("retain_known_repeat"), "{e:#}");
    }

    /// The message of resolving `sets` (and `toml`) with KUDA's defaults.
    fn resolve_error(toml_text: Option<&str>, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = ForgetConfig::resolve(Method::Kuda, toml_text, &sets).unwrap_err();
        format!("{e:#}")
    }

    #[test]
    fn values_that_are_not_finite_numbers_name_the_key_and_what_is_valid() {
        for (set, key) in [
            ("kuda.beta=nan", "kuda.beta"),
            ("optim.lr=inf", "optim.lr"),
            ("optim.lr=-inf", "optim.lr"),
            ("stop_at_forget_acc=NaN", "stop_at_forget_acc"),
        ] {
            let e = resolve_error(None, &[set]);
            assert!(
                e.contains(&format!("setting `{key}`")) && e.contains("not a finite number"),
                "{set}: {e}"
            );
            assert!(!e.contains("null"), "{set}: {e}");
        }
        let e = resolve_error(None, &["optim.lr=nan"]);
        assert!(e.contains("the default is 0.001"), "{e}");
        for toml_text in ["[optim]\nlr = nan\n", "[optim]\nlr = inf\n"] {
            let e = resolve_error(Some(toml_text), &[]);
            assert!(
                e.contains("config file") && e.contains("setting `optim.lr`"),
                "{toml_text}: {e}"
            );
            assert!(e.contains("not a finite number"), "{e}");
        }
    }

    #[test]
    fn values_of_the_wrong_type_name_the_key_and_the_type() {
        for set in ["steps=-1", "steps=abc", "steps=2.5"] {
            let e = resolve_error(None, &[set]);
            assert!(
                e.contains("setting `steps`")
                    && e.contains("a whole number ≥ 0; the default is 30"),
                "{set}: {e}"
            );
        }
        let e = resolve_error(None, &["retain_namesakes=1"]);
        assert!(
            e.contains("setting `retain_namesakes`") && e.contains("true or false"),
            "{e}"
        );
        let e = resolve_error(Some("[kuda]\nbeta = \"high\"\n"), &[]);
        assert!(
            e.contains("setting `kuda.beta`") && e.contains("a finite number"),
            "{e}"
        );
        let e = resolve_error(None, &["kuda.rep_layer=-2"]);
        assert!(e.contains("setting `kuda.rep_layer`"), "{e}");
        let e = resolve_error(None, &["kuda=3"]);
        assert!(
            e.contains("`kuda` is a section") && e.contains("kuda.beta"),
            "{e}"
        );
        let e = resolve_error(None, &["steps.x=3"]);
        assert!(e.contains("`steps` is a setting, not a section"), "{e}");
    }

    #[test]
    fn unknown_keys_offer_the_closest_key_or_the_valid_ones() {
        let e = resolve_error(None, &["kuda.betta=3"]);
        assert!(e.contains("did you mean `kuda.beta`?"), "{e}");
        let e = resolve_error(Some("[optim]\nlearning_rate = 1e-4\n"), &[]);
        assert!(
            e.contains("unknown setting `optim.learning_rate`")
                && e.contains("optim.lr")
                && e.contains("optim.clip_norm"),
            "{e}"
        );
        let e = resolve_error(None, &["stepz=3"]);
        assert!(e.contains("did you mean `steps`?"), "{e}");
    }

    #[test]
    fn the_centre_reads_a_name_or_the_old_flag() {
        let centre = |v: &str| {
            ForgetConfig::resolve(Method::Kuda, None, &[format!("kuda.center={v}")])
                .map(|c| c.kuda.center)
        };
        assert_eq!(centre("true").unwrap(), Centre::Mean);
        assert_eq!(centre("false").unwrap(), Centre::None);
        assert_eq!(centre("none").unwrap(), Centre::None);
        assert_eq!(centre("unknown").unwrap(), Centre::Unknown);
        assert_eq!(centre("known").unwrap(), Centre::Known);
        let e = centre("middle").unwrap_err();
        assert!(format!("{e:#}").contains("middle"), "{e:#}");
        let c = ForgetConfig::resolve(Method::Kuda, Some("[kuda]\ncenter = \"mean\"\n"), &[]);
        assert_eq!(c.unwrap().kuda.center, Centre::Mean);
    }

    #[test]
    fn defaults_print_as_toml_and_read_back() {
        for m in Method::ALL {
            let t = ForgetConfig::defaults_toml(m);
            assert_eq!(
                ForgetConfig::resolve(m, Some(&t), &[]).unwrap(),
                ForgetConfig::for_method(m)
            );
        }
    }
}
