//! The typed contents of the metrics.json files with a before/after table: `unlearn eval`'s
//! ([`EvalMetrics`]) and `unlearn muse`'s ([`MuseMetrics`]). The commands write these types and
//! the report, the demo and the experiment tables read them back as the same types, so a field
//! renamed on one side does not compile on the other.

use crate::data::splits::SplitLabels;
use crate::eval::latent::LatentCurve;
use crate::eval::muse::{MuseOpts, Sample};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One row of the before/after table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub metric: String,
    pub n: usize,
    pub original: f64,
    pub unlearned: Option<f64>,
    /// Whether larger is better for the user of an unlearned model (forget: lower is better).
    pub lower_is_better: bool,
    /// A yardstick, not a goal (the know-nothing floor): neither direction is better.
    pub reference: bool,
}

/// A metric the facts cannot support, left out of the table with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub metric: String,
    pub why: String,
}

/// A value for the original model and (when one was given) the unlearned one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BeforeAfter<T> {
    pub original: T,
    pub unlearned: Option<T>,
}

/// What every before/after table has: what was compared, on what, and the rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableHead {
    /// The tool and code that wrote it.
    pub tool: String,
    pub model: String,
    pub unlearned: Option<PathBuf>,
    pub task: String,
    /// quick or full (`unlearn eval`), muse.
    pub suite: String,
    /// Forget and held-out facts (or texts) measured.
    pub forget_facts: usize,
    pub held_out_facts: usize,
    /// The unlearning run's manifest, when one was evaluated.
    pub manifest: Option<Value>,
    pub rows: Vec<Row>,
}

/// `unlearn eval`'s metrics.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalMetrics {
    #[serde(flatten)]
    pub head: TableHead,
    /// Which split each set of facts comes from.
    pub splits: SplitLabels,
    pub skipped: Vec<Skipped>,
    /// Probe accuracy by layer.
    pub latent: Vec<LatentCurve>,
    pub latent_probe_facts: usize,
    /// The first layer index the latent summary rows read (layers below the first updated
    /// block are the same in both models).
    pub latent_summary_from_index: usize,
    /// Seconds per section of the evaluation.
    pub section_seconds: BeforeAfter<BTreeMap<String, f64>>,
    pub latent_seconds: f64,
    /// (prompt, answer) of the fluency generations.
    pub fluency_samples: BeforeAfter<Vec<(String, String)>>,
    pub seconds: f64,
}

impl EvalMetrics {
    /// A document with these rows and nothing measured besides (tests of its readers).
    pub fn with_rows(rows: Vec<Row>) -> EvalMetrics {
        EvalMetrics {
            head: TableHead {
                tool: crate::util::tool_id(),
                model: "gemma3-270m".into(),
                unlearned: None,
                task: "sports".into(),
                suite: "quick".into(),
                forget_facts: 16,
                held_out_facts: 74,
                manifest: None,
                rows,
            },
            splits: crate::data::splits::labels("test:first-16"),
            skipped: Vec::new(),
            latent: Vec::new(),
            latent_probe_facts: 0,
            latent_summary_from_index: 0,
            section_seconds: BeforeAfter::default(),
            latent_seconds: 0.0,
            fluency_samples: BeforeAfter::default(),
            seconds: 0.0,
        }
    }
}

/// `unlearn muse`'s metrics.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MuseMetrics {
    #[serde(flatten)]
    pub head: TableHead,
    pub options: MuseOpts,
    pub privleak_note: String,
    pub privleak_vs_half: BeforeAfter<f64>,
    pub retrained: Option<String>,
    pub auc_retrained: Option<f64>,
    pub privleak: BeforeAfter<Option<f64>>,
    pub samples: BeforeAfter<Vec<Sample>>,
    pub seconds: f64,
}

/// A metrics.json with a before/after table, whichever command wrote it.
#[derive(Clone, Debug)]
pub enum Table {
    Eval(Box<EvalMetrics>),
    Muse(Box<MuseMetrics>),
}

impl Table {
    /// Read `path`: `None` when it holds another kind of metrics.json (a forget run's own
    /// numbers, TOFU); an error when it claims to be a table and does not parse as one.
    pub fn from_value(v: &Value, path: &Path) -> Result<Option<Table>> {
        if !v["rows"].is_array() {
            return Ok(None);
        }
        let what = || {
            format!(
                "{}: not a metrics.json of unlearn eval/muse",
                path.display()
            )
        };
        Ok(Some(if v["suite"] == "muse" {
            Table::Muse(Box::new(
                serde_json::from_value(v.clone()).with_context(what)?,
            ))
        } else {
            Table::Eval(Box::new(
                serde_json::from_value(v.clone()).with_context(what)?,
            ))
        }))
    }

    pub fn head(&self) -> &TableHead {
        match self {
            Table::Eval(m) => &m.head,
            Table::Muse(m) => &m.head,
        }
    }

    /// The row of `metric`.
    pub fn row(&self, metric: &str) -> Option<&Row> {
        self.head().rows.iter().find(|r| r.metric == metric)
    }

    /// The unlearning run's manifest, when one was evaluated.
    pub fn manifest(&self) -> Option<&Value> {
        self.head().manifest.as_ref().filter(|m| !m.is_null())
    }

    /// `unlearn eval`'s metrics, if these are.
    pub fn eval(&self) -> Option<&EvalMetrics> {
        match self {
            Table::Eval(m) => Some(m),
            Table::Muse(_) => None,
        }
    }
}
