//! The `sift-lab` command line: parses arguments and calls the library. Nothing else.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};

use sift_lab::data::{self, Split, Task};
use sift_lab::{
    ablate, analysis_config, bench, eval, figures, grad_stats, hub, landscape, sharpness, train,
};

#[derive(Parser)]
#[command(
    name = "sift-lab",
    version,
    about = "Sparse fine-tuning of pretrained language models: the analyses and experiments of SIFT (Song et al., ICML 2024)"
)]
struct Cli {
    /// Worker threads for tensor kernels, at least 1 (default: all cores).
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
    /// Gradient quasi-sparsity of θ1 vs θ0 (paper Fig. 3) and the first batch's top-x% mask against each batch's own (Fig. 4).
    GradStats(GradStatsArgs),
    /// Fine-tune on a GLUE task: SIFT sparse fine-tuning or a baseline (full, LoRA, random, head).
    Train(TrainArgs),
    /// Loss landscape between θ0 and θ1 (paper Fig. 2): loss and task metric over a 1-D or 2-D grid.
    Landscape(LandscapeArgs),
    /// Join the shard files of a landscape run (`landscape --shard I/N`) into one landscape.parquet,
    /// or of an ablation grid (`ablate --shard I/N`) into one results.parquet.
    Merge(MergeArgs),
    /// A paper ablation grid (Table 2, Table 4, Fig. 6) as a grid of `train` runs, from a config in analyses/.
    Ablate(AblateArgs),
    /// Redraw every figure and table from the Parquet files under --results (no model computation).
    Figures(FiguresArgs),
    /// Memory of fine-tuning a LLaMA-architecture model, row by row (paper Table 1), or what a finished run held.
    Memory(MemoryArgs),
    /// Hessian sharpness along θ0 → θ1: top eigenvalues (Lanczos) and trace (Hutchinson) of the mean loss, per scope.
    Sharpness(SharpnessArgs),
    /// Every selection rule's mask for one model, task and budget, and how much the masks overlap (mask-overlap.parquet).
    Masks(MasksArgs),
    /// Run the command an analysis config names (analyses/*.toml: one per paper figure or table).
    Run {
        /// The config file, e.g. analyses/fig2-landscape-1d-rte.toml.
        config: PathBuf,
    },
}

/// Where the GLUE data is.
#[derive(Args)]
struct DataDirArg {
    /// Folder holding the GLUE task folders (RTE/, MRPC/, ...). Default: ../shared/data/glue where it exists.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataDirArg {
    fn resolve(&self) -> Result<PathBuf> {
        data::glue_dir(self.data_dir.as_deref())
    }
}

/// The data flags every GLUE command shares (the task is each command's own: some make it optional).
#[derive(Args)]
struct DataArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// Maximum tokens per example (pairs are truncated longest-first).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
}

/// `--task`: one of the GLUE task names, checked by clap.
fn task_arg(name: &str) -> Result<Task, String> {
    Task::parse(name).map_err(|e| e.to_string())
}

/// `--split`: train or dev.
fn split_arg(name: &str) -> Result<Split, String> {
    Split::parse(name).map_err(|e| e.to_string())
}

#[derive(Args)]
struct EvalArgs {
    /// Hugging Face Hub id (resolved through the local cache) or a model directory.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// A fine-tuned checkpoint directory (config.json + model.safetensors) to evaluate instead of the pretrained weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli.
    #[arg(long, value_parser = task_arg, required_unless_present_any = ["mmlu", "humaneval"])]
    task: Option<Task>,
    /// Zero-shot MMLU of a decoder instead (default model: the default decoder): a folder of
    /// SUBJECT_test.csv files, or one holding test/ and dev/ folders of them.
    #[arg(long, conflicts_with = "task")]
    mmlu: Option<PathBuf>,
    /// Which MMLU files: test, dev or val.
    #[arg(long, default_value = "test")]
    mmlu_split: String,
    /// HumanEval pass@k of a decoder instead (default model: the default decoder): completions
    /// generated, run against each problem's tests in a sandboxed python3; needs --out.
    #[arg(long, conflicts_with_all = ["task", "mmlu"], requires = "out")]
    humaneval: bool,
    /// The HumanEval problems (.jsonl or .jsonl.gz). Default: openai/human-eval's
    /// HumanEval.jsonl.gz in the hub cache (bash scripts/setup-decoder.sh installs it).
    #[arg(long, requires = "humaneval")]
    humaneval_file: Option<PathBuf>,
    /// HumanEval: completion feeds the raw prompt (the standard protocol); chat wraps it in the
    /// model's chat template and takes the code of the reply's ```python block.
    #[arg(long, value_enum, default_value = "completion")]
    prompt: sift_lab::humaneval::PromptStyle,
    /// HumanEval: completions per problem (pass@k for k = 1, 10, 100, ... up to this).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// HumanEval: sampling temperature; 0 (with --samples 1) is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// HumanEval: nucleus sampling's probability mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// HumanEval: most new tokens per completion.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// HumanEval: seconds (wall clock and CPU) one test program may run.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// HumanEval: the run directory (samples.parquet, summary.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// HumanEval: continue the run in --out, skipping its finished samples.
    #[arg(long, requires = "humaneval")]
    resume: bool,
    #[command(flatten)]
    data: DataArgs,
    /// dev or train.
    #[arg(long, default_value = "dev", value_parser = split_arg)]
    split: Split,
    /// Only the first N examples of the split.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed of the task head when the checkpoint has none; of the sampling for HumanEval.
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
struct TrainArgs {
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli.
    #[arg(long, value_parser = task_arg, required_unless_present = "instructions")]
    task: Option<Task>,
    /// Instruction-tune a decoder instead (default model: the default decoder) on this Alpaca
    /// JSON file (a list of {instruction, input, output}); --modules then takes q, k, v, o, gate, up, down.
    #[arg(long, conflicts_with = "task")]
    instructions: Option<PathBuf>,
    /// Fraction of the instruction records held out for the per-epoch loss (drawn from --seed).
    #[arg(long, default_value_t = 0.1)]
    held_out: f64,
    #[command(flatten)]
    data: DataArgs,
    /// How the pretrained weights are fine-tuned.
    #[arg(long, value_enum, default_value = "sift")]
    method: sift_lab::methods::MethodKind,
    /// Targeted tensors (sift, random, lora), comma-separated: q, k, v, o, attention, ffn, all.
    #[arg(long, default_value = "q,k,v,o")]
    modules: String,
    /// Fraction of each targeted tensor that is trainable (sift, random): k = max(1, floor(rate * numel)).
    #[arg(long, default_value_t = 0.01)]
    rate: f64,
    /// Batches whose gradients (at the pretrained weights) are summed to select SIFT's entries.
    #[arg(long, default_value_t = 1)]
    selection_batches: usize,
    /// Top-k per tensor, or globally across the targeted tensors with the same total budget.
    #[arg(long, value_enum, default_value = "per-tensor")]
    selection: sift_lab::budget::Selection,
    #[command(flatten)]
    selector: SelectorArgs,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (linear warmup, then linear decay to zero).
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// AdamW decoupled weight decay (not on biases and LayerNorm).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.06)]
    warmup_ratio: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train on only the first N examples of the train split.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on only the first N examples of the dev split.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Write a training-loss row to metrics.parquet every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Run directory: metrics.parquet, summary.json, delta.safetensors, state/.
    #[arg(long)]
    out: PathBuf,
    /// Also write the merged fine-tuned model here as a transformers checkpoint.
    #[arg(long)]
    export_hf: Option<PathBuf>,
    /// Continue an interrupted run in --out from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// Record the weights' trajectory every N steps (RUN/trajectory/, trajectory.parquet), for
    /// `sift-lab landscape --trajectory RUN`.
    #[arg(long, value_name = "N")]
    trajectory_every: Option<usize>,
}

/// Which entries `--method sift` trains, and whether it reselects them.
#[derive(Args)]
struct SelectorArgs {
    /// Selection rule: gradient (|sum of G| over --selection-batches, the paper), fisher (sum of
    /// g^2), magnitude-largest / magnitude-smallest (|W|), movement (|theta - theta1| after a
    /// warm-up), random.
    #[arg(long, value_enum, default_value = "gradient")]
    selector: sift_lab::selectors::Selector,
    /// movement: steps of full fine-tuning before the rewind to the pretrained weights.
    #[arg(long, default_value_t = 20)]
    movement_steps: usize,
    /// movement: the warm-up's constant learning rate.
    #[arg(long, default_value_t = 2e-5)]
    movement_lr: f64,
    /// Every N steps drop the selected entries with the smallest |delta| and regrow as many
    /// with the largest accumulated |gradient| (SpIEL-style); logged to selection.parquet.
    #[arg(long)]
    reselect_every: Option<usize>,
    /// The fraction of the selected entries each reselection drops and regrows.
    #[arg(long, default_value_t = 0.1)]
    reselect_fraction: f64,
}

impl SelectorArgs {
    fn config(&self) -> sift_lab::selectors::SelectorConfig {
        sift_lab::selectors::SelectorConfig {
            rule: self.selector,
            movement_steps: self.movement_steps,
            movement_lr: self.movement_lr,
            reselect_every: self.reselect_every,
            reselect_fraction: self.reselect_fraction,
        }
    }
}

#[derive(Args)]
struct MasksArgs {
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// GLUE task whose training batches the gradient rules and the movement warm-up read.
    #[arg(long, value_parser = task_arg)]
    task: Task,
    #[command(flatten)]
    data: DataArgs,
    /// Targeted tensors, comma-separated: q, k, v, o, attention, ffn, all.
    #[arg(long, default_value = "q,k,v,o")]
    modules: String,
    /// Fraction of each targeted tensor selected: k = max(1, floor(rate * numel)).
    #[arg(long, default_value_t = 0.01)]
    rate: f64,
    #[arg(long, value_enum, default_value = "per-tensor")]
    selection: sift_lab::budget::Selection,
    /// s: batches whose gradients (at the pretrained weights) the gradient and fisher rules sum.
    #[arg(long, default_value_t = 1)]
    batches: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// movement: warm-up steps of full fine-tuning.
    #[arg(long, default_value_t = 20)]
    movement_steps: usize,
    /// movement: the warm-up's constant learning rate.
    #[arg(long, default_value_t = 2e-5)]
    movement_lr: f64,
    /// The rules to compare, comma-separated (default: all six).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "gradient,fisher,magnitude-largest,magnitude-smallest,movement,random"
    )]
    rules: Vec<sift_lab::selectors::Selector>,
    /// Use only the first N training examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Output folder: mask-overlap.parquet, mask-overlap.md, masks.safetensors, summary.json.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct MemoryArgs {
    /// llama-7b, llama-13b, llama-33b, llama-65b, or a LLaMA config.json.
    #[arg(long, required_unless_present = "run")]
    config: Option<String>,
    #[arg(long, value_enum, default_value = "full")]
    method: sift_lab::memory::MemoryMethod,
    /// SIFT's fraction of each targeted tensor.
    #[arg(long, default_value_t = 0.05)]
    rate: f64,
    /// Targeted tensors of sift and lora: q, k, v, o, gate, up, down, attention, mlp, all.
    #[arg(long, default_value = "all")]
    modules: String,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Weights, gradients and activations (AdamW's moments are fp32).
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: sift_lab::memory::Dtype,
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Gradient checkpointing: keep only each layer's input.
    #[arg(long)]
    checkpointing: bool,
    /// A finished `sift-lab train` run directory: what it held beside the estimate for its model.
    #[arg(long, conflicts_with = "config")]
    run: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Default: the default encoder, or with --decoder the default decoder.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// Benchmark a decoder (SmolLM2 by default): --arm full, sift, lora (q,k,v,o,gate,up,down;
    /// SIFT at 1 %) or generate (greedy, --seq-len new tokens after a 32-token prompt).
    #[arg(long)]
    decoder: bool,
    /// Measure one arm (one per process, so peak RSS is per arm); default: forward, forward+backward and a full step.
    #[arg(long, value_enum)]
    arm: Option<bench::Arm>,
    /// Use the first --batch-size training examples of this GLUE task, padded to --seq-len (default: random tokens).
    #[arg(long, value_parser = task_arg)]
    task: Option<Task>,
    #[command(flatten)]
    data: DataDirArg,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
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

#[derive(Args)]
struct GradStatsArgs {
    /// GLUE task (its train split): cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli.
    #[arg(long, required_unless_present = "plot_only", value_parser = task_arg)]
    task: Option<Task>,
    #[command(flatten)]
    data: DataArgs,
    /// Hugging Face Hub id (resolved through the local cache) or a model directory.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// Tensors to analyse: comma-separated globs over the tensor names ('*' any characters, '?' one).
    /// Default: every layer's attention query, key, value and output weights.
    #[arg(long)]
    tensors: Option<String>,
    /// The tensor of the histograms (Fig. 3 a-c). Default: the middle layer's attention value weight.
    #[arg(long)]
    figure_tensor: Option<String>,
    /// N: training batches for the mask-overlap curves (at least 2).
    #[arg(long, default_value_t = grad_stats::DEFAULT_BATCHES)]
    batches: usize,
    #[arg(long, default_value_t = grad_stats::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Histogram bins (at least 2).
    #[arg(long, default_value_t = grad_stats::DEFAULT_BINS)]
    bins: usize,
    /// The masks keep the top x % of |g| (in percent).
    #[arg(long, default_value_t = grad_stats::DEFAULT_TOP_PERCENT)]
    top_percent: f64,
    /// frozen: fixed weights (batch-to-batch variation); during-training: gradients along a fine-tuning run (AdamW).
    #[arg(long, value_enum, default_value = "frozen")]
    overlap_mode: grad_stats::OverlapMode,
    /// Learning rate of the during-training run (constant, AdamW, no weight decay).
    #[arg(long, default_value_t = grad_stats::DEFAULT_LR)]
    lr: f64,
    /// During-training only: globs of the tensors that train (default: all, i.e. full fine-tuning).
    #[arg(long)]
    trainable: Option<String>,
    /// Seed of θ0, of the task head (shared by θ1 and θ0) and of the batch shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: hist/topx/overlap/stats.parquet, summary.json and the figures.
    #[arg(long)]
    out: PathBuf,
    /// Only redraw the figures from OUT's Parquet files.
    #[arg(long)]
    plot_only: bool,
    /// Where the figures go (default: OUT).
    #[arg(long)]
    figures_dir: Option<PathBuf>,
}

#[derive(Args)]
struct LandscapeArgs {
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli.
    #[arg(long, required_unless_present = "plot_only", value_parser = task_arg)]
    task: Option<Task>,
    #[command(flatten)]
    data: DataArgs,
    /// Hugging Face Hub id (resolved through the local cache) or a model directory: θ1.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// 1: loss along α (β = 0); 2: loss over the (α, β) plane.
    #[arg(long, required_unless_present = "plot_only")]
    dims: Option<usize>,
    /// α grid START:STOP:COUNT, both ends included [default: -0.5:1.5:41; filter-normalized: -1:1:41].
    #[arg(long, allow_hyphen_values = true)]
    alpha: Option<String>,
    /// β grid START:STOP:COUNT for --dims 2 [default: -1:1:21].
    #[arg(long, allow_hyphen_values = true)]
    beta: Option<String>,
    /// paper: δ1 = θ1 − θ0, δ2 = d ⊙ δ1 around θ0; filter-normalized: Li et al. 2018 random directions around θ1;
    /// checkpoints: δ1 = B − A around A (--from-checkpoint A --to-checkpoint B);
    /// pca: the top two principal directions of the first --trajectory run, around its end.
    #[arg(long, default_value = "paper")]
    directions: String,
    /// Training runs recorded with `train --trajectory-every N`, drawn on the complete 2-D grid
    /// (repeat the flag or separate with commas); writes trajectory.parquet, trajectory.json and
    /// trajectory_2d.png/svg.
    #[arg(long, value_name = "RUN_DIR", value_delimiter = ',')]
    trajectory: Vec<PathBuf>,
    /// Checkpoint A (α = 0) for --directions checkpoints.
    #[arg(long)]
    from_checkpoint: Option<PathBuf>,
    /// Checkpoint B (α = 1) for --directions checkpoints.
    #[arg(long)]
    to_checkpoint: Option<PathBuf>,
    /// A trained task head instead of the seeded one: an --export-hf directory of a `sift-lab
    /// train` run (e.g. --method head); its pooler and classifier become θ1's (and the fixed
    /// classifier of every point).
    #[arg(long)]
    head_from: Option<PathBuf>,
    /// Only these tensors move: comma-separated globs over tensor names ('*' any characters, '?' one),
    /// e.g. 'encoder.layer.*.attention.*'. Default: every tensor but the task head.
    #[arg(long)]
    tensors: Option<String>,
    /// filter-normalized: direction of 1-D tensors (biases, LayerNorm): zero (Li et al.'s default) or weight.
    #[arg(long, default_value = "zero")]
    filter_1d: String,
    /// The evaluation set: the first N examples of --split.
    #[arg(long, default_value_t = 512)]
    eval_examples: usize,
    /// train or dev.
    #[arg(long, default_value = "train", value_parser = split_arg)]
    split: Split,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed of θ0, of the task head (the same in θ0 and θ1) and of the random directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: landscape.parquet (or landscape.shard-I-of-N.parquet), summary.json and the figures.
    #[arg(long, required_unless_present = "benchmark")]
    out: Option<PathBuf>,
    /// Compute only shard I of N (1-based): the grid points whose index mod N is I − 1. Join with `sift-lab merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Continue a run in --out: compute only the points missing from its Parquet file.
    #[arg(long)]
    resume: bool,
    /// Run a grid larger than --max-points.
    #[arg(long)]
    yes: bool,
    /// Grids with more points need --yes.
    #[arg(long, default_value_t = landscape::DEFAULT_MAX_POINTS)]
    max_points: usize,
    /// Grid points evaluated at the same time (each forward already uses every kernel thread).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Only redraw the figures from OUT/landscape.parquet.
    #[arg(long)]
    plot_only: bool,
    /// Where the figures go (default: OUT).
    #[arg(long)]
    figures_dir: Option<PathBuf>,
    /// Do not draw figures.
    #[arg(long)]
    no_plot: bool,
    /// Instead of the grid: time N grid points against plain forward passes of θ1 over the same
    /// evaluation set (and N points with --jobs at once), print the report and exit.
    #[arg(long)]
    benchmark: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// Shard files, or directories holding landscape.shard-*.parquet or results.shard-*.parquet (ablate) [default: --out].
    inputs: Vec<PathBuf>,
    /// Directory of the merged landscape.parquet (and figures).
    #[arg(long)]
    out: PathBuf,
    /// Write the merged file even when points are missing (no figures then).
    #[arg(long)]
    allow_partial: bool,
    /// Do not draw figures.
    #[arg(long)]
    no_plot: bool,
    /// Where the figures go (default: OUT).
    #[arg(long)]
    figures_dir: Option<PathBuf>,
}

#[derive(Args)]
struct AblateArgs {
    /// The grid's config, e.g. analyses/table4-modules.toml.
    config: PathBuf,
    /// quick (minutes), cpu (hours on 2 cores) or paper (Appendix B, for a GPU); default: the config's base settings.
    #[arg(long)]
    preset: Option<String>,
    /// Add a random-selection cell beside every SIFT cell, at the same budget.
    #[arg(long)]
    random: bool,
    /// Use seeds 1..=N instead of the config's seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// Run only shard I of N (1-based): the cells whose index mod N is I − 1. Join with `sift-lab merge --out DIR`.
    #[arg(long)]
    shard: Option<String>,
    /// Continue the grid in --out: skip its finished cells, continue a cell from its last epoch.
    #[arg(long)]
    resume: bool,
    /// Print the grid (cells, matched budgets) and exit.
    #[arg(long)]
    dry_run: bool,
    /// Output directory: results.parquet, table.md, figures, cells/<cell>/.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct FiguresArgs {
    /// The results folder: each subfolder an ablate grid, grad-stats or landscape run.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Where the figures, tables and README.md go.
    #[arg(long, default_value = "figures")]
    out: PathBuf,
    /// The analyses folder (to name the config that produced each result).
    #[arg(long, default_value = "analyses")]
    analyses: PathBuf,
}

#[derive(Args)]
struct SharpnessArgs {
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli.
    #[arg(long, required_unless_present = "plot_only", value_parser = task_arg)]
    task: Option<Task>,
    #[command(flatten)]
    data: DataArgs,
    /// Hugging Face Hub id (resolved through the local cache) or a model directory: θ1.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// α points START:STOP:COUNT of θ(α) = (1 − α)·θ0 + α·θ1, both ends included.
    #[arg(long, allow_hyphen_values = true, default_value = "0:1:3")]
    alpha: String,
    /// Comma-separated scopes: all, per-layer, per-tensor, sift, random, tensors.
    #[arg(long, default_value = "all")]
    scopes: String,
    /// Globs of the `tensors` scope (comma-separated, '*' any characters, '?' one).
    #[arg(long)]
    scope_tensors: Option<String>,
    /// Tensors of the sift and random masks (as train --modules).
    #[arg(long, default_value = "q,k,v,o")]
    mask_modules: String,
    /// The masks' budget: k = max(1, ⌊rate·numel⌋) entries per tensor.
    #[arg(long, default_value_t = 0.01)]
    mask_rate: f64,
    /// lanczos (top-k, algebraically largest) or power (largest |λ|, top-1).
    #[arg(long, value_enum, default_value = "lanczos")]
    method: sharpness::EigenMethod,
    /// Lanczos steps or power iterations (one Hessian-vector product each).
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Eigenvalues reported.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Hutchinson's Rademacher probes (one Hessian-vector product each; at least 2).
    #[arg(long, default_value_t = 10)]
    probes: usize,
    /// Central-difference step h along the unit direction: Hv ≈ ‖v‖·(g(θ+h·v̂) − g(θ−h·v̂))/(2h).
    #[arg(long, default_value_t = 1e-3)]
    fd_step: f64,
    /// f64 (default) or f32 arithmetic for the gradients.
    #[arg(long, default_value = "f64")]
    precision: String,
    /// The evaluation set: the first N examples of --split.
    #[arg(long, default_value_t = 128)]
    eval_examples: usize,
    /// train or dev.
    #[arg(long, default_value = "train", value_parser = split_arg)]
    split: Split,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed of θ0, the task head, the random mask, Lanczos' start and the probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: sharpness.parquet, summary.json and the figures.
    #[arg(long, required_unless_present = "benchmark")]
    out: Option<PathBuf>,
    /// Continue a run in --out: compute only the cells missing from its Parquet file.
    #[arg(long)]
    resume: bool,
    /// Only redraw the figures from OUT/sharpness.parquet.
    #[arg(long)]
    plot_only: bool,
    /// Where the figures go (default: OUT).
    #[arg(long)]
    figures_dir: Option<PathBuf>,
    /// Do not draw figures.
    #[arg(long)]
    no_plot: bool,
    /// Instead of the run: time N gradients and N Hessian-vector products at θ1 over the first scope.
    #[arg(long)]
    benchmark: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn run_sharpness(args: SharpnessArgs) -> Result<()> {
    if args.plot_only {
        let out = args.out.unwrap_or_default();
        let (figures, ends) = sharpness::plot_only(&out, args.figures_dir.as_deref())?;
        figures
            .iter()
            .for_each(|p| eprintln!("wrote {}", p.display()));
        ends.iter().for_each(|e| println!("{e}"));
        return Ok(());
    }
    let task = args.task.context("--task is required")?;
    let mut config = sharpness::SharpnessConfig::new(task, &args.data.dir.resolve()?);
    config.model = args.model;
    config.alpha = landscape::Range::parse(&args.alpha).context("--alpha")?;
    config.scopes = args
        .scopes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    config.scope_tensors = args.scope_tensors;
    config.mask_modules = args.mask_modules;
    config.mask_rate = args.mask_rate;
    config.method = args.method;
    config.iterations = args.iterations;
    config.top_k = args.top_k;
    config.probes = args.probes;
    config.fd_step = args.fd_step;
    config.precision = args.precision;
    config.eval_examples = args.eval_examples;
    config.split = args.split;
    config.batch_size = args.batch_size;
    config.max_len = args.data.max_len;
    config.seed = args.seed;
    if let Some(n) = args.benchmark {
        let report = sharpness::benchmark(&config, n)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut options = sharpness::RunOptions::new(&args.out.unwrap_or_default());
    options.resume = args.resume;
    options.progress = !args.json;
    options.plot = !args.no_plot;
    options.figures_dir = args.figures_dir;
    let report = sharpness::run(&config, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} of {} cells ({} computed now, {} already there; {:.0} s)",
            report.file.display(),
            report.already_done + report.computed,
            report.cells,
            report.computed,
            report.already_done,
            report.seconds
        );
        report
            .figures
            .iter()
            .for_each(|p| println!("wrote {}", p.display()));
        report.end_points.iter().for_each(|e| println!("{e}"));
    }
    if report.interrupted {
        eprintln!(
            "interrupted: the finished cells are saved; rerun with --resume to compute the rest"
        );
        std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
    }
    Ok(())
}

/// mimalloc's `mi_option_purge_delay` (v3 enum value).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> Result<()> {
    // Keep freed pages instead of returning them to the OS after 10 ms: a training step frees
    // and reallocates gigabytes, and re-faulting (zeroing) those pages cost a quarter of it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Every command exits 130 on Ctrl-C (see progress.rs).
    sift_lab::progress::install_interrupt_handler();
    let cli = Cli::parse();
    let Command::Run { config } = &cli.command else {
        return run(cli);
    };
    let config = config.clone();
    // The config stands for a command line: parse it exactly as if it had been typed.
    let mut line = vec!["sift-lab".to_string()];
    if let Some(threads) = cli.threads {
        line.extend(["--threads".to_string(), threads.to_string()]);
    }
    line.extend(analysis_config::command_line(&config)?);
    eprintln!("{}: {}", config.display(), line[1..].join(" "));
    // An error about a flag names the config line that set it.
    let lines = analysis_config::flag_lines(&config)?;
    let located = |e: anyhow::Error| analysis_config::locate_error(e, &config, &lines);
    let cli = Cli::try_parse_from(&line).map_err(|e| located(anyhow::anyhow!("{e}")))?;
    if matches!(cli.command, Command::Run { .. }) {
        bail!("{}: a config cannot run another config", config.display());
    }
    run(cli).map_err(located)
}

/// Runs one parsed command.
fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        if threads == 0 {
            bail!("--threads 0: give at least 1, or leave --threads out to use every core");
        }
        // candle's kernels and rayon both read this; set before either starts a thread.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    match cli.command {
        Command::Eval(args) => {
            if args.humaneval {
                let model = match (&args.checkpoint, args.model.as_str()) {
                    (Some(ckpt), _) => ckpt.to_string_lossy().into_owned(),
                    (None, hub::DEFAULT_MODEL) => hub::DEFAULT_DECODER.to_string(),
                    (None, other) => other.to_string(),
                };
                let problems = match args.humaneval_file {
                    Some(path) => path,
                    None => sift_lab::data::humaneval::default_file()?,
                };
                let config = sift_lab::humaneval::HumanEvalConfig {
                    model,
                    problems,
                    prompt: args.prompt,
                    samples: args.samples,
                    temperature: args.temperature,
                    top_p: args.top_p,
                    max_new_tokens: args.max_new_tokens,
                    timeout_seconds: args.timeout,
                    limit: args.limit,
                    seed: args.seed,
                };
                let options = sift_lab::humaneval::HumanEvalOptions {
                    out: args.out.context("--humaneval needs --out DIR")?,
                    resume: args.resume,
                    progress: !args.json,
                };
                let report = sift_lab::humaneval::run(&config, &options)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.render());
                }
                if report.status == "interrupted" {
                    eprintln!("interrupted: the finished samples are saved; rerun with --resume to compute the rest");
                    std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
                }
                return Ok(());
            }
            if let Some(dir) = args.mmlu {
                let model = match (&args.checkpoint, args.model.as_str()) {
                    (Some(ckpt), _) => ckpt.to_string_lossy().into_owned(),
                    (None, hub::DEFAULT_MODEL) => hub::DEFAULT_DECODER.to_string(),
                    (None, other) => other.to_string(),
                };
                let config = sift_lab::mmlu::MmluConfig {
                    model,
                    dir,
                    split: args.mmlu_split,
                    limit: args.limit,
                    batch_size: args.batch_size,
                };
                let options = sift_lab::mmlu::MmluOptions {
                    predictions: args.predictions,
                    progress: !args.json,
                };
                let report = sift_lab::mmlu::run(&config, &options)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.render());
                }
                return Ok(());
            }
            let config = eval::EvalConfig {
                model: args.model,
                checkpoint: args.checkpoint,
                task: args.task.context("--task is required")?,
                data_dir: args.data.dir.resolve()?,
                split: args.split,
                limit: args.limit,
                batch_size: args.batch_size,
                max_len: args.data.max_len,
                seed: args.seed,
            };
            let options = eval::EvalOptions {
                predictions: args.predictions,
                progress: !args.json,
            };
            let report = eval::run(&config, &options)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
        }
        Command::Bench(args) => {
            let task = match args.task {
                Some(task) => Some((task, args.data.resolve()?)),
                None => None,
            };
            let model = match (args.decoder, args.model.as_str()) {
                (true, hub::DEFAULT_MODEL) => hub::DEFAULT_DECODER.to_string(),
                _ => args.model,
            };
            let config = bench::BenchConfig {
                model,
                decoder: args.decoder,
                arm: args.arm,
                task,
                lora_rank: args.lora_rank,
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
        Command::Masks(args) => {
            let config = sift_lab::masks::MasksConfig {
                model: args.model,
                task: args.task,
                data_dir: args.data.dir.resolve()?,
                modules: args.modules,
                rate: args.rate,
                selection: args.selection,
                batches: args.batches,
                batch_size: args.batch_size,
                max_len: args.data.max_len,
                seed: args.seed,
                movement_steps: args.movement_steps,
                movement_lr: args.movement_lr,
                rules: args.rules,
                train_limit: args.train_limit,
            };
            let report = match sift_lab::masks::run(&config, &args.out) {
                Err(e) if sift_lab::progress::interrupted() => {
                    eprintln!("{e:#}");
                    std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
                }
                other => other?,
            };
            print!("{}", sift_lab::masks::table(&report.pooled, &config));
        }
        Command::Train(args) => {
            if let Some(instructions) = args.instructions {
                ensure!(
                    args.trajectory_every.is_none(),
                    "--trajectory-every records encoder runs only (the landscape is an encoder \
                     analysis); drop it for --instructions"
                );
                if args.selector.config() != sift_lab::selectors::SelectorConfig::default() {
                    bail!("--selector, --movement-*, --reselect-*: apply to GLUE training (--task); --instructions selects by the gradient rule only");
                }
                let model = match args.model.as_str() {
                    hub::DEFAULT_MODEL => hub::DEFAULT_DECODER.to_string(),
                    other => other.to_string(),
                };
                let config = sift_lab::train_lm::LmTrainConfig {
                    model,
                    instructions,
                    method: args.method,
                    modules: args.modules,
                    rate: args.rate,
                    lora_rank: args.lora_rank,
                    lora_alpha: args.lora_alpha,
                    epochs: args.epochs,
                    lr: args.lr,
                    batch_size: args.batch_size,
                    max_len: args.data.max_len,
                    held_out: args.held_out,
                    weight_decay: args.weight_decay,
                    warmup_ratio: args.warmup_ratio,
                    max_grad_norm: args.max_grad_norm,
                    seed: args.seed,
                    train_limit: args.train_limit,
                    eval_limit: args.eval_limit,
                };
                let options = sift_lab::train_lm::LmTrainOptions {
                    out: args.out,
                    export_hf: args.export_hf,
                    resume: args.resume,
                };
                let summary = sift_lab::train_lm::run(&config, &options)?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                if summary.status == "interrupted" {
                    eprintln!(
                        "interrupted: completed epochs are saved; rerun with --resume to continue"
                    );
                    std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
                }
                return Ok(());
            }
            let config = train::TrainConfig {
                model: args.model,
                task: args.task.context("--task is required")?,
                data_dir: args.data.dir.resolve()?,
                method: args.method,
                modules: args.modules,
                rate: args.rate,
                selection_batches: args.selection_batches,
                selection: args.selection,
                lora_rank: args.lora_rank,
                lora_alpha: args.lora_alpha,
                epochs: args.epochs,
                lr: args.lr,
                batch_size: args.batch_size,
                max_len: args.data.max_len,
                weight_decay: args.weight_decay,
                warmup_ratio: args.warmup_ratio,
                max_grad_norm: args.max_grad_norm,
                seed: args.seed,
                train_limit: args.train_limit,
                eval_limit: args.eval_limit,
                log_every: args.log_every,
                selector: args.selector.config(),
            };
            let options = train::TrainOptions {
                out: args.out,
                export_hf: args.export_hf,
                resume: args.resume,
                trajectory_every: args.trajectory_every,
            };
            let report = train::run(&config, &options)?;
            println!("{}", serde_json::to_string_pretty(&report.summary)?);
            if report.summary.status == "interrupted" {
                eprintln!(
                    "interrupted: completed epochs are saved; rerun with --resume to continue"
                );
                std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
            }
        }
        Command::GradStats(args) => {
            let figures_dir = args.figures_dir.unwrap_or_else(|| args.out.clone());
            if args.plot_only {
                // Not while a run is writing the tables.
                let _lock = match args.out.is_dir() {
                    true => Some(sift_lab::run_lock::RunLock::dir(&args.out)?),
                    false => None,
                };
                for path in grad_stats::draw_figures(&args.out, &figures_dir)? {
                    eprintln!("wrote {}", path.display());
                }
                return Ok(());
            }
            {
                let task = args.task.context("--task is required")?;
                let mut config = grad_stats::GradStatsConfig::new(
                    &args.model,
                    task,
                    &args.data.dir.resolve()?,
                    &args.out,
                );
                config.max_len = args.data.max_len;
                config.tensors = args.tensors;
                config.figure_tensor = args.figure_tensor;
                config.batches = args.batches;
                config.batch_size = args.batch_size;
                config.bins = args.bins;
                config.top_percent = args.top_percent;
                config.overlap_mode = args.overlap_mode;
                config.lr = args.lr;
                config.trainable = args.trainable;
                config.seed = args.seed;
                let options = grad_stats::GradStatsOptions {
                    figures_dir: Some(figures_dir),
                    progress: true,
                };
                let (report, files) = grad_stats::run(&config, &options)?;
                for path in files {
                    eprintln!("wrote {}", path.display());
                }
                println!("{}", report.summary.render());
                if report.summary.interrupted {
                    eprintln!("interrupted: the tables hold the batches finished before Ctrl-C");
                    std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
                }
            }
        }
        Command::Landscape(args) => {
            if args.plot_only {
                let (figures, hoods) = landscape::plot_only(
                    &args.out.unwrap_or_default(),
                    args.figures_dir.as_deref(),
                )?;
                for path in figures {
                    eprintln!("wrote {}", path.display());
                }
                for hood in hoods {
                    println!("{hood}");
                }
                return Ok(());
            }
            let task = args.task.context("--task is required")?;
            let dims = args.dims.unwrap_or(1);
            let mut config = landscape::LandscapeConfig::new(task, &args.data.dir.resolve()?, dims);
            config.model = args.model;
            let alpha = args.alpha.as_deref().map(landscape::Range::parse);
            let beta = args.beta.as_deref().map(landscape::Range::parse);
            config.set_grid(
                landscape::Directions::parse(&args.directions)?,
                alpha.transpose().context("--alpha")?,
                beta.transpose().context("--beta")?,
            );
            config.from_checkpoint = args.from_checkpoint;
            config.to_checkpoint = args.to_checkpoint;
            config.head_from = args.head_from;
            if config.directions == landscape::Directions::Pca {
                config.pca_run = args.trajectory.first().cloned();
            }
            config.tensors = args.tensors;
            config.filter_1d = landscape::Filter1d::parse(&args.filter_1d)?;
            config.seed = args.seed;
            config.split = args.split;
            config.eval_examples = args.eval_examples;
            config.max_len = args.data.max_len;
            config.batch_size = args.batch_size;
            if let Some(points) = args.benchmark {
                config.validate()?;
                let report = landscape::benchmark(&config, points, args.jobs)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let mut options = landscape::RunOptions::new(&args.out.unwrap_or_default());
            if let Some(shard) = &args.shard {
                options.shard = landscape::Shard::parse(shard)?;
            }
            options.resume = args.resume;
            options.yes = args.yes;
            options.max_points = args.max_points;
            options.jobs = args.jobs;
            options.progress = !args.json;
            options.plot = !args.no_plot;
            options.figures_dir = args.figures_dir;
            options.trajectories = args.trajectory;
            let report = landscape::run(&config, &options)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: shard {} holds {} of its {} points ({} computed now, {} already there; grid {} points)",
                    report.file.display(),
                    report.shard,
                    report.already_done + report.computed,
                    report.shard_points,
                    report.computed,
                    report.already_done,
                    report.grid_points
                );
                for path in &report.figures {
                    println!("wrote {}", path.display());
                }
                for hood in &report.neighbourhoods {
                    println!("{hood}");
                }
                if let Some(placed) = &report.trajectory {
                    if let Some([d1, d2]) = placed.explained_variance {
                        println!(
                            "PCA plane: {:.1} % + {:.1} % of the trajectory's variance",
                            100.0 * d1,
                            100.0 * d2
                        );
                    }
                    for run in &placed.runs {
                        println!(
                            "{} ({}): {} snapshots from ({:.4}, {:.4}) to ({:.4}, {:.4}); at most {:.4} off the plane; ‖θ_end − θ_start‖ {:.4}",
                            run.run, run.method, run.snapshots, run.start.0, run.start.1,
                            run.end.0, run.end.1, run.max_off_plane, run.final_distance
                        );
                    }
                }
            }
            if report.interrupted {
                eprintln!("interrupted: the finished points are saved; rerun with --resume to compute the rest");
                std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
            }
        }
        Command::Ablate(args) => {
            let mut config = ablate::config::load(&args.config, args.preset.as_deref())?;
            config.random = args.random;
            if let Some(n) = args.seeds {
                if n == 0 {
                    bail!("--seeds 0: at least one seed");
                }
                config.axes.seeds = (1..=n).collect();
            }
            if args.dry_run {
                let grid = ablate::cells::expand(&config)?;
                for note in &grid.notes {
                    println!("note: {note}");
                }
                for cell in &grid.cells {
                    println!(
                        "{}  achieved {}{}",
                        sift_lab::grid::Cell::id(cell),
                        cell.achieved,
                        cell.budget_gap()
                            .map(|g| format!(" ({:+.2} % of the target)", 100.0 * g))
                            .unwrap_or_default()
                    );
                }
                println!("{} cells", grid.cells.len());
                return Ok(());
            }
            let mut options = ablate::AblateOptions::new(&args.out);
            if let Some(shard) = &args.shard {
                options.shard = sift_lab::grid::Shard::parse(shard)?;
            }
            options.resume = args.resume;
            options.command = std::env::args().collect::<Vec<_>>().join(" ");
            let report = ablate::run(&config, &options)?;
            println!(
                "{}: {} of this shard's {} cells ({} computed now, {} already there, {} diverged; grid {} cells)",
                report.file.display(),
                report.already_done + report.computed,
                report.shard_cells,
                report.computed,
                report.already_done,
                report.diverged,
                report.grid_cells
            );
            for path in &report.drawn {
                println!("wrote {}", path.display());
            }
            if report.interrupted {
                eprintln!("interrupted: the finished cells are saved; rerun with --resume to compute the rest");
                std::process::exit(sift_lab::progress::INTERRUPTED_EXIT_CODE);
            }
        }
        Command::Figures(args) => {
            let config = figures::FiguresConfig {
                results: args.results,
                out: args.out,
                analyses: args.analyses,
            };
            let report = figures::run(&config)?;
            for path in &report.written {
                println!("wrote {}", path.display());
            }
        }
        Command::Merge(args) => {
            let ablate_inputs = if args.inputs.is_empty() {
                vec![args.out.clone()]
            } else {
                args.inputs.clone()
            };
            if ablate_inputs.iter().any(|p| {
                ablate::has_shards(p)
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("results.shard-"))
            }) {
                let report = ablate::merge(&args.inputs, &args.out, args.allow_partial)?;
                println!(
                    "{}: {} of {} cells from {} files",
                    report.file.display(),
                    report.cells,
                    report.grid_cells,
                    report.inputs.len()
                );
                for path in &report.drawn {
                    println!("wrote {}", path.display());
                }
                return Ok(());
            }
            let report = landscape::merge(
                &args.inputs,
                &args.out,
                args.allow_partial,
                !args.no_plot,
                args.figures_dir.as_deref(),
            )?;
            println!(
                "{}: {} of {} points from {} files",
                report.file.display(),
                report.points,
                report.grid_points,
                report.inputs.len()
            );
            for path in &report.figures {
                println!("wrote {}", path.display());
            }
            for hood in &report.neighbourhoods {
                println!("{hood}");
            }
        }
        Command::Memory(args) => {
            if let Some(run) = &args.run {
                let report = sift_lab::memory::measure_run(run)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.render());
                }
                return Ok(());
            }
            let spec = args.config.context("--config is required")?;
            let config = sift_lab::memory::MemoryConfig {
                model: sift_lab::memory::MemoryConfig::model_from(&spec)?,
                model_name: spec,
                method: args.method,
                modules: args.modules,
                rate: args.rate,
                lora_rank: args.lora_rank,
                dtype: args.dtype,
                seq: args.seq,
                batch: args.batch,
                checkpointing: args.checkpointing,
            };
            let report = sift_lab::memory::run(&config)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Sharpness(args) => run_sharpness(args)?,
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
