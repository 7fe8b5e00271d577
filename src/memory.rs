//! `sift-lab memory`: the bytes fine-tuning a LLaMA-architecture decoder holds, row by row as in
//! the paper's Table 1 (parameters, gradients, optimizer states, activations), from the shapes
//! alone; and, for a finished sift-lab run (`--run DIR`), what that run held beside the estimate
//! for its model.
//!
//! The rules (SPEC, "Memory"): parameters N × bytes(dtype); gradients N_t × bytes(dtype), N_t the
//! trainable count (SIFT: Σ k = max(1, ⌊rate · numel⌋) over the targeted tensors, `budget.rs`);
//! AdamW 2 × N_t × 4 (fp32 moments). GiB = 2^30 bytes. Activations: [`activations`] counts the
//! tensors PyTorch's eager transformers `LlamaForCausalLM` saves for backward.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::budget::budget;
use crate::model::config::{EncoderConfig, LlamaConfig, LLAMA_PRESETS};
use crate::model::weights::{expected_shapes, head_shapes};
use crate::select;

pub const GIB: f64 = (1u64 << 30) as f64;

/// The number type of weights, gradients and activations (AdamW's moments are always fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

/// The methods of Table 1 (and LoRA beside them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMethod {
    Full,
    Sift,
    Lora,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryConfig {
    /// A preset name (`llama-7b`, ...) or the config.json the shapes came from.
    pub model_name: String,
    pub model: LlamaConfig,
    pub method: MemoryMethod,
    /// Targeted tensors of SIFT and LoRA (`select::decoder_target_names`).
    pub modules: String,
    pub rate: f64,
    pub lora_rank: usize,
    pub dtype: Dtype,
    pub seq: usize,
    pub batch: usize,
    pub checkpointing: bool,
}

impl MemoryConfig {
    /// `--config`: a preset name or a LLaMA config.json.
    pub fn model_from(spec: &str) -> Result<LlamaConfig> {
        if let Some(preset) = LlamaConfig::preset(spec) {
            return Ok(preset);
        }
        let path = Path::new(spec);
        if path.is_file() {
            return LlamaConfig::load(path);
        }
        let names: Vec<&str> = LLAMA_PRESETS.iter().map(|p| p.0).collect();
        bail!(
            "--config {spec}: not a preset ({}) and no such file; pass a LLaMA config.json",
            names.join(", ")
        )
    }

    fn validate(&self) -> Result<()> {
        if self.method == MemoryMethod::Sift && !(self.rate > 0.0 && self.rate <= 1.0) {
            bail!("--rate {}: must be in (0, 1]", self.rate);
        }
        if self.method == MemoryMethod::Lora && self.lora_rank == 0 {
            bail!("--lora-rank 0: the rank must be at least 1");
        }
        if self.seq == 0 || self.batch == 0 {
            bail!("--seq and --batch must be at least 1");
        }
        Ok(())
    }
}

/// One row of Table 1.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub item: String,
    pub bytes: u64,
    pub gib: f64,
}

impl Row {
    fn new(item: &str, bytes: u64) -> Self {
        Self {
            item: item.into(),
            bytes,
            gib: bytes as f64 / GIB,
        }
    }
}

/// The activation estimate and its parts.
#[derive(Debug, Clone, Serialize)]
pub struct Activations {
    /// Saved for backward inside one decoder layer.
    pub per_layer: u64,
    /// After the last layer: final norm, logits, fp32 logits and log-softmax.
    pub head: u64,
    /// With checkpointing: the layer inputs kept (one per layer); 0 without.
    pub checkpoints: u64,
    /// What the row counts: all layers without checkpointing; with it, the checkpoints, the head
    /// and the one layer recomputed during backward.
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub config: MemoryConfig,
    pub parameters: u64,
    pub trainable: u64,
    pub activations: Activations,
    pub rows: Vec<Row>,
}

/// Trainable scalars N_t of a method on a decoder.
pub fn trainable(config: &MemoryConfig) -> Result<u64> {
    let shapes = config.model.tensor_shapes();
    let names: Vec<String> = shapes.iter().map(|(n, _)| n.clone()).collect();
    let numel = |name: &str| -> Vec<usize> {
        shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    Ok(match config.method {
        MemoryMethod::Full => config.model.parameters(),
        MemoryMethod::Sift => select::decoder_target_names(&config.modules, &names)?
            .iter()
            .map(|n| budget(config.rate, numel(n).iter().product()) as u64)
            .sum(),
        // A·(r × in) and B·(out × r) on each targeted projection (not embeddings or norms).
        MemoryMethod::Lora => select::decoder_target_names(&config.modules, &names)?
            .iter()
            .filter(|n| n.starts_with("model.layers.") && n.ends_with("_proj.weight"))
            .map(|n| {
                let s = numel(n);
                (config.lora_rank * (s[0] + s[1])) as u64
            })
            .sum(),
    })
}

/// Activations saved for backward by PyTorch's eager transformers `LlamaForCausalLM` in a
/// 16-bit dtype (p bytes), T = batch · seq tokens, h hidden, i intermediate, a heads, V vocab:
///
/// per layer  T·(2·(4 + p)·h + 4·p·h + 4·p·i) + (4 + p)·batch·a·seq²
///   - each RMSNorm keeps its input upcast to fp32 (4·T·h, for the square) and the normalised
///     output before the weight (p·T·h): 2 norms → 2·(4 + p)·T·h;
///   - attention: q and k after rotary (and k, v repeated to all heads, as eager attention
///     does), v, and o_proj's input: 4·p·T·h; the softmax output in fp32 and its cast to the
///     dtype for the product with v: (4 + p)·batch·a·seq²;
///   - SwiGLU: gate, SiLU(gate), up and their product (down_proj's input): 4·p·T·i;
///
/// head  (4 + p)·T·h (final norm) + (p + 4 + 4)·T·V (logits, fp32 logits, log-softmax).
///
/// Checkpointing keeps each layer's input (p·T·h per layer) and the head, and recomputes one
/// layer at a time in backward, so its peak adds one layer's activations.
pub fn activations(
    model: &LlamaConfig,
    dtype: Dtype,
    seq: usize,
    batch: usize,
    gc: bool,
) -> Activations {
    let p = dtype.bytes();
    let t = (seq * batch) as u64;
    let (h, i, v) = (
        model.hidden_size as u64,
        model.intermediate_size as u64,
        model.vocab_size as u64,
    );
    let a = model.num_attention_heads as u64;
    let s = seq as u64;
    let per_layer =
        t * (2 * (4 + p) * h + 4 * p * h + 4 * p * i) + (4 + p) * batch as u64 * a * s * s;
    let head = (4 + p) * t * h + (p + 8) * t * v;
    let layers = model.num_hidden_layers as u64;
    let (checkpoints, total) = if gc {
        let kept = layers * p * t * h;
        (kept, kept + head + per_layer)
    } else {
        (0, layers * per_layer + head)
    };
    Activations {
        per_layer,
        head,
        checkpoints,
        total,
    }
}

/// The Table 1 rows of one configuration.
pub fn run(config: &MemoryConfig) -> Result<MemoryReport> {
    config.validate()?;
    config.model.check()?;
    let parameters = config.model.parameters();
    let trainable = trainable(config)?;
    let p = config.dtype.bytes();
    let activations = activations(
        &config.model,
        config.dtype,
        config.seq,
        config.batch,
        config.checkpointing,
    );
    let mut rows = vec![
        Row::new("parameters", parameters * p),
        Row::new("gradients", trainable * p),
        Row::new("optimizer states", 2 * trainable * 4),
        Row::new("activations", activations.total),
    ];
    let total = rows.iter().map(|r| r.bytes).sum();
    rows.push(Row::new("total", total));
    Ok(MemoryReport {
        config: config.clone(),
        parameters,
        trainable,
        activations,
        rows,
    })
}

impl MemoryReport {
    /// The table as printed by the CLI.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{} ({} parameters), {}{}, {} weights and gradients, fp32 AdamW, seq {} × batch {}, checkpointing {}\n",
            c.model_name,
            thousands(self.parameters),
            format!("{:?}", c.method).to_lowercase(),
            match c.method {
                MemoryMethod::Full => String::new(),
                MemoryMethod::Sift => format!(" rate {} of {}", c.rate, c.modules),
                MemoryMethod::Lora => format!(" rank {} on {}", c.lora_rank, c.modules),
            },
            format!("{:?}", c.dtype).to_lowercase(),
            c.seq,
            c.batch,
            if c.checkpointing { "on" } else { "off" },
        );
        out += &format!("trainable {}\n", thousands(self.trainable));
        out += &format!("{:<18} {:>16} {:>10}\n", "", "bytes", "GiB");
        for row in &self.rows {
            out += &format!(
                "{:<18} {:>16} {:>10.3}\n",
                row.item,
                thousands(row.bytes),
                row.gib
            );
        }
        let a = &self.activations;
        out += &format!(
            "activations: {:.3} GiB per layer, {:.3} GiB head (final norm, logits, fp32 logits, log-softmax){}\n",
            a.per_layer as f64 / GIB,
            a.head as f64 / GIB,
            if c.checkpointing {
                format!(
                    ", {:.3} GiB layer inputs kept; the row is those + head + one layer recomputed",
                    a.checkpoints as f64 / GIB
                )
            } else {
                String::new()
            }
        );
        out
    }
}

/// 6738415616 → "6,738,415,616".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// One row of a finished run: what it held, beside the estimate for its model.
#[derive(Debug, Clone, Serialize)]
pub struct MeasuredRow {
    pub item: String,
    /// From the run (summary.json) or, for parameters, from the model files' tensor sizes.
    pub measured_bytes: Option<u64>,
    /// From the model's config.json and the method's rule.
    pub estimate_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunMemory {
    pub run: PathBuf,
    pub model: String,
    pub method: String,
    pub rows: Vec<MeasuredRow>,
}

impl RunMemory {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} ({} on {}); sift-lab holds weights, gradients and moments in f32\n",
            self.run.display(),
            self.method,
            self.model
        );
        out += &format!("{:<34} {:>14} {:>14}\n", "", "measured MiB", "estimate MiB");
        let gib = |b: Option<u64>| match b {
            Some(b) => format!("{:.3}", b as f64 / (1u64 << 20) as f64),
            None => "-".into(),
        };
        for row in &self.rows {
            out += &format!(
                "{:<34} {:>14} {:>14}\n",
                row.item,
                gib(row.measured_bytes),
                gib(row.estimate_bytes)
            );
        }
        out
    }
}

/// A finished `sift-lab train` run of an encoder (`--run DIR`): its summary.json's trainable
/// count, gradient and AdamW bytes and peak RSS, beside the same rows computed from the model's
/// config.json and the method's budget rule.
pub fn measure_run(run: &Path) -> Result<RunMemory> {
    let summary_path = run.join(crate::output::SUMMARY_FILE);
    let text = std::fs::read_to_string(&summary_path).with_context(|| {
        format!(
            "--run {}: no {} (pass the --out directory of a sift-lab train run)",
            run.display(),
            crate::output::SUMMARY_FILE
        )
    })?;
    let summary: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON", summary_path.display()))?;
    let field = |path: &[&str]| -> Result<&serde_json::Value> {
        let mut v = &summary;
        for key in path {
            v = v.get(key).with_context(|| {
                format!("{}: no field {}", summary_path.display(), path.join("."))
            })?;
        }
        Ok(v)
    };
    let as_u64 = |path: &[&str]| -> Result<u64> {
        field(path)?.as_u64().with_context(|| {
            format!(
                "{}: {} is not a count",
                summary_path.display(),
                path.join(".")
            )
        })
    };
    let as_str = |path: &[&str]| -> Result<String> {
        Ok(field(path)?
            .as_str()
            .with_context(|| format!("{}: {} is not text", summary_path.display(), path.join(".")))?
            .to_string())
    };
    let model = as_str(&["config", "model"])?;
    let method = as_str(&["config", "method"])?;
    let task = crate::data::Task::parse(&as_str(&["config", "task"])?)?;
    let modules = as_str(&["config", "modules"])?;
    let rate = field(&["config", "rate"])?.as_f64().unwrap_or(0.0);
    let rank = as_u64(&["config", "lora_rank"])? as usize;

    let files = crate::hub::resolve(&model)?;
    let encoder = EncoderConfig::load(&files.config)?;
    let num_labels = task.num_labels();
    let shapes = expected_shapes(&encoder, num_labels)?;
    let numel = |s: &Vec<usize>| s.iter().product::<usize>() as u64;
    let all: u64 = shapes.iter().map(|(_, s)| numel(s)).sum();
    let head: u64 = head_shapes(encoder.family()?, encoder.hidden_size, num_labels)
        .iter()
        .map(|(_, s)| numel(s))
        .sum();
    let shape_of = |name: &str| {
        shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    };
    let targets = select::target_names(&modules, &encoder)?;
    let estimate_trainable = match method.as_str() {
        "full" => all,
        "head" => head,
        "sift" | "random" => {
            head + targets
                .iter()
                .filter_map(|n| shape_of(n))
                .map(|s| budget(rate, s.iter().product()) as u64)
                .sum::<u64>()
        }
        "lora" => {
            head + targets
                .iter()
                .filter_map(|n| shape_of(n))
                .filter(|s| s.len() == 2)
                .map(|s| (rank * (s[0] + s[1])) as u64)
                .sum::<u64>()
        }
        other => bail!("{}: unknown method {other:?}", summary_path.display()),
    };

    // Parameters as held: every tensor of the checkpoint files in f32, plus the head.
    // (The head is seeded when the checkpoint lacks it, so it is counted from its shapes.)
    let head_names: Vec<String> = head_shapes(encoder.family()?, encoder.hidden_size, num_labels)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut file_params = 0u64;
    for path in &files.weights {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not safetensors", path.display()))?;
        for (name, info) in meta.tensors() {
            let is = |n: &String| name == *n || name.ends_with(&format!(".{n}"));
            if shapes.iter().any(|(n, _)| is(n)) && !head_names.iter().any(is) {
                file_params += info.shape.iter().product::<usize>() as u64;
            }
        }
    }
    let held_params = file_params + head;
    let measured_trainable = as_u64(&["trainable_params"])?;
    let peak = field(&["peak_rss_mib"])?
        .as_f64()
        .map(|mib| (mib * 1024.0 * 1024.0) as u64);
    let grads = as_u64(&["gradient_state_bytes"])?;
    let optim = as_u64(&["optimizer_state_bytes"])?;
    let rows = vec![
        MeasuredRow {
            item: "parameters".into(),
            measured_bytes: Some(held_params * 4),
            estimate_bytes: Some(all * 4),
        },
        MeasuredRow {
            item: format!("gradients ({} trainable)", thousands(measured_trainable)),
            measured_bytes: Some(grads),
            estimate_bytes: Some(estimate_trainable * 4),
        },
        MeasuredRow {
            item: "optimizer states".into(),
            measured_bytes: Some(optim),
            estimate_bytes: Some(estimate_trainable * 8),
        },
        MeasuredRow {
            item: "peak RSS (whole process)".into(),
            measured_bytes: peak,
            estimate_bytes: None,
        },
    ];
    Ok(RunMemory {
        run: run.to_path_buf(),
        model,
        method,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama7b(method: MemoryMethod, gc: bool) -> MemoryReport {
        run(&MemoryConfig {
            model_name: "llama-7b".into(),
            model: LlamaConfig::preset("llama-7b").unwrap(),
            method,
            modules: "all".into(),
            rate: 0.05,
            lora_rank: 8,
            dtype: Dtype::Bf16,
            seq: 2048,
            batch: 1,
            checkpointing: gc,
        })
        .unwrap()
    }

    fn gib(report: &MemoryReport, item: &str) -> f64 {
        report.rows.iter().find(|r| r.item == item).unwrap().gib
    }

    /// Table 1's parameter, gradient and optimizer columns, by hand: N = 6,738,415,616
    /// (embeddings 32000·4096 twice, 32 layers of 4·4096² + 3·4096·11008 + 2·4096, a norm).
    #[test]
    fn table1_columns_of_llama_7b() {
        let n: u64 = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096;
        assert_eq!(n, 6_738_415_616);
        let full = llama7b(MemoryMethod::Full, false);
        assert_eq!(full.parameters, n);
        assert_eq!(full.trainable, n);
        // 6,738,415,616 × 2 B / 2^30 = 12.5513…; × 8 B / 2^30 = 50.2053…
        assert_eq!(format!("{:.2}", gib(&full, "parameters")), "12.55");
        assert_eq!(format!("{:.2}", gib(&full, "gradients")), "12.55");
        assert_eq!(format!("{:.2}", gib(&full, "optimizer states")), "50.21");
        let sift = llama7b(MemoryMethod::Sift, false);
        // Per tensor ⌊0.05 · numel⌋ = ⌊numel / 20⌋: N / 20 = 336,920,780.8, and the floors lose
        // under one entry per tensor (192.8 over the 291 tensors).
        let exact: u64 = LlamaConfig::preset("llama-7b")
            .unwrap()
            .tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64 / 20)
            .sum();
        assert_eq!(sift.trainable, exact);
        assert!((n as f64 / 20.0 - exact as f64 - 192.8).abs() < 1e-6);
        // 0.05 · 12.5513 = 0.6276 (the paper prints 0.626); 0.05 · 50.2053 = 2.5103 → 2.51.
        assert_eq!(format!("{:.3}", gib(&sift, "gradients")), "0.628");
        assert_eq!(format!("{:.2}", gib(&sift, "optimizer states")), "2.51");
        assert_eq!(format!("{:.2}", gib(&sift, "parameters")), "12.55");
    }

    /// The activation formula against its terms for LLaMA-7B, worked by hand:
    /// per layer 2048·(12·4096 + 8·4096 + 8·11008) + 6·32·2048² = 1,153,433,600 B;
    /// head 6·2048·4096 + 10·2048·32000 = 705,691,648 B.
    #[test]
    fn activations_of_llama_7b() {
        let model = LlamaConfig::preset("llama-7b").unwrap();
        let a = activations(&model, Dtype::Bf16, 2048, 1, false);
        assert_eq!(a.per_layer, 1_153_433_600);
        assert_eq!(a.head, 705_691_648);
        assert_eq!(a.total, 32 * 1_153_433_600 + 705_691_648);
        // 35.03 GiB against the paper's 35.72.
        assert_eq!(format!("{:.2}", a.total as f64 / GIB), "35.03");
        let gc = activations(&model, Dtype::Bf16, 2048, 1, true);
        assert_eq!(gc.checkpoints, 32 * 2 * 2048 * 4096);
        assert_eq!(gc.total, gc.checkpoints + 705_691_648 + 1_153_433_600);
        // Doubling the batch doubles every term.
        let b2 = activations(&model, Dtype::Bf16, 2048, 2, false);
        assert_eq!(b2.total, 2 * a.total);
    }

    #[test]
    fn lora_counts_rank_times_sides() {
        let report = run(&MemoryConfig {
            model_name: "llama-7b".into(),
            model: LlamaConfig::preset("llama-7b").unwrap(),
            method: MemoryMethod::Lora,
            modules: "q,v".into(),
            rate: 0.05,
            lora_rank: 8,
            dtype: Dtype::Bf16,
            seq: 2048,
            batch: 1,
            checkpointing: false,
        })
        .unwrap();
        // 32 layers × 2 matrices × 8 · (4096 + 4096) = 4,194,304 (the LoRA paper's 4.2 M).
        assert_eq!(report.trainable, 4_194_304);
    }

    #[test]
    fn presets_have_published_sizes() {
        let n = |name: &str| LlamaConfig::preset(name).unwrap().parameters();
        assert_eq!(n("llama-13b"), 13_015_864_320);
        assert_eq!(n("llama-33b"), 32_528_943_616);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(6_738_415_616), "6,738,415,616");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
