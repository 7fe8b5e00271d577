//! `sift-lab bench`: seconds per forward batch and per training step of the encoder on fixed
//! shapes, for side-by-side comparison with PyTorch (scripts/bench_torch.py measures the same).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::model::{self, Mode, WeightMap};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub warmup: usize,
    pub iters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub framework: &'static str,
    pub threads: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Median seconds of one inference forward pass.
    pub forward_s: f64,
    /// Median seconds of forward + loss + backward over every parameter.
    pub forward_backward_s: f64,
    /// Median seconds of forward + backward + AdamW update of every parameter.
    pub train_step_s: f64,
    pub peak_rss_mib: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(warmup: usize, iters: usize, mut f: F) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut seconds = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    Ok(median(seconds))
}

pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    let device = Device::Cpu;
    let pretrained = model::load_pretrained(&config.model, None, 2, 0, &device)?;
    let (b, t) = (config.batch_size, config.seq_len);

    // Full-length rows of random word pieces between [CLS] and [SEP]: no padding.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| match i % t {
            0 => 101,
            p if p == t - 1 => 102,
            _ => rng.random_range(1000..30000),
        })
        .collect();
    let input_ids = Tensor::from_vec(ids, (b, t), &device)?;
    let token_types = Tensor::zeros((b, t), candle_core::DType::U32, &device)?;
    let mask = Tensor::ones((b, t), candle_core::DType::U32, &device)?;
    let labels = Tensor::from_vec((0..b as u32).map(|i| i % 2).collect::<Vec<_>>(), b, &device)?;

    let classifier = pretrained.build(&pretrained.weights)?;
    let forward_s = time(config.warmup, config.iters, || {
        classifier.forward(&input_ids, &token_types, &mask, Mode::Inference)?;
        Ok(())
    })?;

    // Every tensor a Var: full fine-tuning.
    let vars: Vec<(String, Var)> = pretrained
        .weights
        .iter()
        .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
        .collect::<Result<_>>()?;
    let weights: WeightMap = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let trainable = pretrained.build(&weights)?;
    let forward_backward_s = time(config.warmup, config.iters, || {
        let logits = trainable.forward(&input_ids, &token_types, &mask, Mode::Training)?;
        model::mean_loss(&logits, &labels)?.backward()?;
        Ok(())
    })?;
    let mut optimizer = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: 1e-5,
            ..Default::default()
        },
    )?;
    let train_step_s = time(config.warmup, config.iters, || {
        let logits = trainable.forward(&input_ids, &token_types, &mask, Mode::Training)?;
        optimizer.backward_step(&model::mean_loss(&logits, &labels)?)?;
        Ok(())
    })?;

    Ok(BenchReport {
        framework: "sift-lab (candle)",
        threads: candle_core::utils::get_num_threads(),
        batch_size: b,
        seq_len: t,
        forward_s,
        forward_backward_s,
        train_step_s,
        peak_rss_mib: crate::memory::peak_rss_mib(),
    })
}
