//! A training run's resumable state in `RUN/state/`, shared by `train` (encoders) and
//! `train --instructions` (decoders): `state.safetensors` holds every trainable value (the Δ
//! entries, LoRA factors or full weights, whatever the method trains), the AdamW moments and step
//! count, and SIFT/random selections; `checkpoint.json` holds the command's own record (settings,
//! epochs done, rows so far). Both are written after every epoch, the JSON last, so a checkpoint
//! exists only once both files are complete.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::methods::FineTuning;
use crate::model;
use crate::optim::AdamW;

/// The state folder of a run directory.
pub const STATE_DIR: &str = "state";
/// The record that marks a complete checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const STATE_FILE: &str = "state.safetensors";

/// Saves the trainable values, optimizer state and selection of `method`, then `checkpoint`.
pub fn write_checkpoint<T: Serialize>(
    dir: &Path,
    checkpoint: &T,
    method: &FineTuning,
    optimizer: &AdamW,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (first, second, _) = optimizer.state()?;
    for (i, param) in optimizer.params().iter().enumerate() {
        tensors.insert(
            format!("value/{}", param.name),
            param.var.as_tensor().detach(),
        );
        tensors.insert(format!("adam_m/{}", param.name), first[i].clone());
        tensors.insert(format!("adam_v/{}", param.name), second[i].clone());
    }
    for (name, indices) in method.selected_indices()? {
        let n = indices.len();
        tensors.insert(
            format!("indices/{name}"),
            Tensor::from_vec(indices, n, &Device::Cpu)?,
        );
    }
    let meta = HashMap::from([("adam_steps".to_string(), optimizer.steps().to_string())]);
    crate::output::write_safetensors(&tensors, meta, &dir.join(STATE_FILE))?;
    let tmp = dir.join("checkpoint.json.partial");
    std::fs::write(&tmp, serde_json::to_string(checkpoint)?)?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    Ok(())
}

/// The checkpoint record in `dir`, if a complete checkpoint is there.
pub fn read_checkpoint<T: DeserializeOwned>(dir: &Path) -> Result<Option<T>> {
    let path = dir.join(CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: unreadable checkpoint; remove {} to start over",
            path.display(),
            dir.display()
        )
    })?))
}

fn load_state(dir: &Path) -> Result<HashMap<String, Tensor>> {
    model::weights::read_safetensors(&dir.join(STATE_FILE), &Device::Cpu)
}

/// The saved SIFT/random selection of each of `targets`.
pub fn saved_selection(dir: &Path, targets: &[String]) -> Result<BTreeMap<String, Vec<u32>>> {
    let state = load_state(dir)?;
    targets
        .iter()
        .map(|name| {
            let t = state
                .get(&format!("indices/{name}"))
                .with_context(|| format!("{}: no saved selection for {name}", dir.display()))?;
            Ok((name.clone(), t.to_vec1::<u32>()?))
        })
        .collect()
}

/// Sets every trainable value of `method` to the saved one.
pub fn restore_values(method: &FineTuning, dir: &Path) -> Result<()> {
    let state = load_state(dir)?;
    for param in method.params()? {
        let saved = state
            .get(&format!("value/{}", param.name))
            .with_context(|| format!("{}: no saved value for {}", dir.display(), param.name))?;
        param.var.set(saved)?;
    }
    Ok(())
}

/// Restores the AdamW moments and step count.
pub fn restore_optimizer(optimizer: &mut AdamW, dir: &Path) -> Result<()> {
    let state = load_state(dir)?;
    let get = |kind: &str, name: &str| -> Result<Tensor> {
        state
            .get(&format!("{kind}/{name}"))
            .cloned()
            .with_context(|| format!("{}: no saved {kind} for {name}", dir.display()))
    };
    let names: Vec<String> = optimizer.params().iter().map(|p| p.name.clone()).collect();
    let first = names
        .iter()
        .map(|n| get("adam_m", n))
        .collect::<Result<_>>()?;
    let second = names
        .iter()
        .map(|n| get("adam_v", n))
        .collect::<Result<_>>()?;
    let steps = safetensors_metadata(&dir.join(STATE_FILE))?
        .get("adam_steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    optimizer.restore(first, second, steps)
}

fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
