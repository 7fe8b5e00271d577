//! The `sift-lab` command line: parses arguments and calls the library. Nothing else.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use sift_lab::data::{Split, Task};
use sift_lab::{analysis_config, bench, eval, hub, table};

#[derive(Parser)]
#[command(
    name = "sift-lab",
    version,
    about = "Sparse fine-tuning of pretrained language models: the analyses and experiments of SIFT (Song et al., ICML 2024)"
)]
struct Cli {
    /// Worker threads for tensor kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mean loss and task metrics of a model on a GLUE split.
    Eval(EvalArgs),
    /// Seconds per forward batch and per training step on fixed shapes (compare with scripts/bench_torch.py).
    Bench(BenchArgs),
    /// Run the command an analysis config names (analyses/*.toml: one per paper figure or table).
    Run {
        /// The config file, e.g. analyses/fig2_landscape_1d_rte.toml.
        config: PathBuf,
    },
}

#[derive(Args)]
struct DataArgs {
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli.
    #[arg(long)]
    task: String,
    /// Folder holding the GLUE task folders (RTE/, MRPC/, ...). Default: ../shared/data/glue where it exists.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Maximum tokens per example (pairs are truncated longest-first).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// Hugging Face Hub id (resolved through the local cache) or a model directory.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// A fine-tuned checkpoint directory (config.json + model.safetensors) to evaluate instead of the pretrained weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// dev or train.
    #[arg(long, default_value = "dev")]
    split: String,
    /// Only the first N examples of the split.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed of the task head when the checkpoint has none.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write per-example logits, prediction and label to this Parquet file.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

/// `--data-dir`, or the shared GLUE copy next to the repository.
fn data_dir(arg: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = arg {
        if !dir.is_dir() {
            bail!("--data-dir {}: no such directory", dir.display());
        }
        return Ok(dir.clone());
    }
    let default = PathBuf::from("../shared/data/glue");
    if default.is_dir() {
        return Ok(default);
    }
    bail!(
        "no --data-dir given and ../shared/data/glue does not exist. Download GLUE (for example with the \
         GLUE download script, https://gluebenchmark.com/tasks, or `datasets` exported to TSV) so that \
         DIR/RTE/train.tsv etc. exist, and pass --data-dir DIR"
    )
}

fn parse_task(name: &str) -> Result<Task> {
    Task::parse(name).with_context(|| format!("--task {name}"))
}

fn main() -> Result<()> {
    let mut cli = Cli::parse();
    if let Command::Run { config } = &cli.command {
        let config = config.clone();
        // The config stands for a command line: parse it exactly as if it had been typed.
        let mut line = vec!["sift-lab".to_string()];
        if let Some(threads) = cli.threads {
            line.extend(["--threads".to_string(), threads.to_string()]);
        }
        line.extend(analysis_config::command_line(&config)?);
        eprintln!("{}: {}", config.display(), line[1..].join(" "));
        cli = Cli::try_parse_from(&line).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
        if matches!(cli.command, Command::Run { .. }) {
            bail!("{}: a config cannot run another config", config.display());
        }
    }
    if let Some(threads) = cli.threads {
        // candle's kernels and rayon both read this; set before either starts a thread.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    match cli.command {
        Command::Eval(args) => {
            let config = eval::EvalConfig {
                model: args.model,
                checkpoint: args.checkpoint,
                task: parse_task(&args.data.task)?,
                data_dir: data_dir(&args.data.data_dir)?,
                split: Split::parse(&args.split)
                    .with_context(|| format!("--split {}", args.split))?,
                limit: args.limit,
                batch_size: args.batch_size,
                max_len: args.data.max_len,
                seed: args.seed,
            };
            let (report, predictions) = eval::run(&config, !args.json)?;
            if let Some(path) = &args.predictions {
                let metadata = vec![("eval_report".to_string(), serde_json::to_string(&report)?)];
                table::write_parquet(&mut predictions.to_frame()?, path, &metadata)?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
        }
        Command::Bench(args) => {
            let config = bench::BenchConfig {
                model: args.model,
                batch_size: args.batch_size,
                seq_len: args.seq_len,
                warmup: args.warmup,
                iters: args.iters,
            };
            let report = bench::run(&config)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report:#?}");
            }
        }
        Command::Run { .. } => unreachable!("replaced by the config's command above"),
    }
    Ok(())
}

fn print_report(report: &eval::EvalReport) {
    let model = match &report.checkpoint {
        Some(ckpt) => format!("{} (checkpoint {ckpt})", report.model),
        None => report.model.clone(),
    };
    println!(
        "{model} on {} {} ({} examples, {:.1} s)",
        report.task, report.split, report.scores.n_examples, report.seconds
    );
    println!("  loss      {:.4}", report.scores.mean_loss);
    for (name, value) in &report.scores.metrics {
        println!("  {name:<9} {value:.4}");
    }
}

// candle allocates a fresh buffer for every op; mimalloc reuses freed pages instead of taking
// a page fault on each new one (about 15% of a training step with the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
