//! The named parameter sets of a run: `all`, each layer, each tensor, SIFT's top-k mask, a
//! random mask of the same size, a set of tensors.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};

use super::config::{layer_of, SharpnessConfig};
use super::hvp::{Block, Objective, Scope};
use crate::{budget, select};

/// Expands the config's scope kinds into named scopes over `moving` (the tensors the landscape
/// moves, in architecture order). `theta1` gives the gradient SIFT's mask is chosen from; it is
/// only evaluated when a `sift` scope is asked for.
pub fn resolve(
    config: &SharpnessConfig,
    moving: &[String],
    shapes: &BTreeMap<String, Vec<usize>>,
    encoder: &crate::model::EncoderConfig,
    theta1: impl FnOnce(&Scope) -> Result<Vec<f64>>,
) -> Result<Vec<(String, Scope)>> {
    let mut theta1 = Some(theta1);
    let mut out: Vec<(String, Scope)> = Vec::new();
    let mask_targets = || -> Result<Vec<String>> {
        let targets: Vec<String> = select::target_names(&config.mask_modules, encoder)?
            .into_iter()
            .filter(|n| moving.contains(n))
            .collect();
        ensure!(
            !targets.is_empty(),
            "--mask-modules {}: no moving tensor to mask",
            config.mask_modules
        );
        Ok(targets)
    };
    for kind in &config.scopes {
        match kind.as_str() {
            "all" => out.push(("all".into(), Scope::tensors(moving))),
            "per-layer" => {
                let mut layers: Vec<(String, Vec<String>)> = Vec::new();
                for n in moving {
                    let l = layer_of(n);
                    match layers.iter_mut().find(|(name, _)| *name == l) {
                        Some((_, names)) => names.push(n.clone()),
                        None => layers.push((l, vec![n.clone()])),
                    }
                }
                for (l, names) in layers {
                    out.push((format!("layer:{l}"), Scope::tensors(&names)));
                }
            }
            "per-tensor" => {
                for n in moving {
                    out.push((
                        format!("tensor:{n}"),
                        Scope::tensors(std::slice::from_ref(n)),
                    ));
                }
            }
            "tensors" => {
                let globs = config.scope_tensors.as_deref().unwrap_or_default();
                let names = select::select_tensors(moving, globs, "--scope-tensors")?;
                out.push(("tensors".into(), Scope::tensors(&names)));
            }
            "sift" => {
                let targets = mask_targets()?;
                let scope = Scope::tensors(&targets);
                let g = (theta1.take().expect("one sift scope"))(&scope)?;
                let mut grads = BTreeMap::new();
                let mut offset = 0;
                for n in &targets {
                    let numel: usize = shapes[n].iter().product();
                    let part: Vec<f32> = g[offset..offset + numel]
                        .iter()
                        .map(|&x| x as f32)
                        .collect();
                    grads.insert(n.clone(), part);
                    offset += numel;
                }
                let mask = budget::select_by_gradient(
                    &grads,
                    config.mask_rate,
                    budget::Selection::PerTensor,
                );
                out.push(("sift".into(), masked(&targets, mask)));
            }
            "random" => {
                let targets = mask_targets()?;
                let named: Vec<(String, Vec<usize>)> = targets
                    .iter()
                    .map(|n| (n.clone(), shapes[n].clone()))
                    .collect();
                let mask = budget::select_random(&named, config.mask_rate, config.seed);
                out.push(("random".into(), masked(&targets, mask)));
            }
            other => anyhow::bail!("unknown scope {other:?}"),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|(name, _)| seen.insert(name.clone()));
    Ok(out)
}

fn masked(targets: &[String], mut mask: BTreeMap<String, Vec<u32>>) -> Scope {
    Scope {
        blocks: targets
            .iter()
            .map(|n| Block {
                name: n.clone(),
                indices: Some(mask.remove(n).unwrap_or_default()),
            })
            .collect(),
    }
}

/// The gradient at θ1 over `scope` (for SIFT's mask).
pub fn gradient_at(objective: &Objective, scope: &Scope) -> Result<Vec<f64>> {
    Ok(objective.gradient(scope, None)?.values)
}
