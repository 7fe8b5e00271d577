//! The directions of a landscape's plane and the weights at any of its points.
//!
//! - `paper`: δ1 = θ1 − θ0 and δ2 = d ⊙ δ1 ([`paper_delta2`], d ~ N(0, 1) per scalar);
//! - `filter-normalized`: Gaussian d1, d2 with every filter rescaled to θ1's ([`filter_normalize`]);
//! - `checkpoints`: as `paper` between checkpoints A and B.
//!
//! [`prepare_surface`] builds a [`Surface`] from the model(s); [`Surface::weights_at`] gives the
//! effective weights of (α, β).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use super::config::{Directions, Filter1d, LandscapeConfig};
use crate::model::{self, init, Pretrained, WeightMap};
use crate::select;
use crate::trajectory::{self, Projection};

/// δ2 = d ⊙ δ1 (paper §3.2): one Gaussian factor per scalar.
pub fn paper_delta2(delta1: &Tensor, d: &Tensor) -> Result<Tensor> {
    ensure!(
        delta1.dims() == d.dims(),
        "δ1 has shape {:?} but d has {:?}",
        delta1.dims(),
        d.dims()
    );
    Ok((delta1 * d)?)
}

/// Li et al. 2018 filter normalisation of a random direction `d` against weights `w`: every
/// filter (row along dimension 0, i.e. the weights of one output unit or one embedding vector)
/// is rescaled to the norm of the same row of `w`: d_i ← d_i · ‖w_i‖ / (‖d_i‖ + 1e-10).
/// 1-D tensors (biases, LayerNorm) get 0 or `w` itself, per `one_d`.
pub fn filter_normalize(d: &Tensor, w: &Tensor, one_d: Filter1d) -> Result<Tensor> {
    ensure!(
        d.dims() == w.dims(),
        "direction has shape {:?} but the weight has {:?}",
        d.dims(),
        w.dims()
    );
    if d.rank() <= 1 {
        return Ok(match one_d {
            Filter1d::Zero => d.zeros_like()?,
            Filter1d::Weight => w.clone(),
        });
    }
    let rows = d.dim(0)?;
    let d2 = d.reshape((rows, ()))?;
    let w2 = w.reshape((rows, ()))?;
    let d_norm = d2.sqr()?.sum_keepdim(1)?.sqrt()?;
    let w_norm = w2.sqr()?.sum_keepdim(1)?.sqrt()?;
    let scale = w_norm.broadcast_div(&(d_norm + 1e-10)?)?;
    Ok(d2.broadcast_mul(&scale)?.reshape(d.shape())?)
}

/// A standard-normal tensor from the stream of (`seed`, `purpose`, `name`): independent of
/// θ0's draws and of every other tensor's.
pub fn gaussian(
    purpose: &str,
    name: &str,
    shape: &[usize],
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    Ok(init::draw(
        &format!("landscape/{purpose}/{name}"),
        shape,
        init::Init::Normal {
            std: 1.0,
            zero_row: None,
        },
        seed,
        device,
    )?)
}

/// How one moving tensor depends on α.
enum Along {
    /// (1 − α)·start + α·end.
    Interpolate { start: Tensor, end: Tensor },
    /// origin + α·d1.
    Offset { origin: Tensor, d1: Tensor },
}

struct Moving {
    name: String,
    along: Along,
    /// The β direction (2-D only).
    d2: Option<Tensor>,
}

/// The plane (or line) of a landscape: builds the weights of any (α, β).
pub struct Surface {
    /// The value of every tensor that does not move (and, for moving ones, a placeholder).
    fixed: WeightMap,
    moving: Vec<Moving>,
    /// The weights a training run's increments are added to when it is projected: θ1 (or
    /// checkpoint B); for `pca`, the weights the run started from.
    start: WeightMap,
    /// `pca`: the share of the trajectory's variance along d1 and d2.
    pub explained: Option<[f64; 2]>,
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl Surface {
    /// Names of the tensors that move, in architecture order.
    pub fn moving_names(&self) -> Vec<&str> {
        self.moving.iter().map(|m| m.name.as_str()).collect()
    }

    /// Where `start + increments` (a trajectory snapshot) lies on the plane: the (α, β) of the
    /// nearest point by least squares over the moving tensors, and its distance from the plane.
    /// Increments of tensors that do not move here (e.g. a trained head on the paper's plane)
    /// are left out.
    pub fn project(&self, increments: &BTreeMap<String, Tensor>) -> Result<(f64, f64, f64)> {
        let mut projection = Projection::default();
        for m in &self.moving {
            let (origin, d1) = match &m.along {
                Along::Interpolate { start, end } => (start.clone(), (end - start)?),
                Along::Offset { origin, d1 } => (origin.clone(), d1.clone()),
            };
            let d2 =
                m.d2.as_ref()
                    .context("a trajectory is projected onto a 2-D landscape's plane (--dims 2)")?;
            let start = &self.start[&m.name];
            let x = match increments.get(&m.name) {
                Some(inc) => (start + inc)?,
                None => start.clone(),
            };
            projection.add(&flat(&origin)?, &flat(&d1)?, &flat(d2)?, &flat(&x)?);
        }
        projection.solve()
    }

    /// The effective weights at (α, β). Tensors that do not move are shared, not copied.
    pub fn weights_at(&self, alpha: f64, beta: f64) -> Result<WeightMap> {
        let mut weights = self.fixed.clone();
        for m in &self.moving {
            let t = match &m.along {
                Along::Interpolate { start, end } => {
                    if alpha == 0.0 {
                        start.clone()
                    } else if alpha == 1.0 {
                        end.clone()
                    } else {
                        (start.affine(1.0 - alpha, 0.0)? + end.affine(alpha, 0.0)?)?
                    }
                }
                Along::Offset { origin, d1 } => {
                    if alpha == 0.0 {
                        origin.clone()
                    } else {
                        (origin + d1.affine(alpha, 0.0)?)?
                    }
                }
            };
            let t = match &m.d2 {
                Some(d2) if beta != 0.0 => (t + d2.affine(beta, 0.0)?)?,
                _ => t,
            };
            weights.insert(m.name.clone(), t);
        }
        Ok(weights)
    }
}

/// Whether `name` stays fixed over the grid: the classifier, and any tensor drawn from the seed
/// (the same in θ0 and θ1, so there is no direction to move it along). A pretrained pooler moves.
fn fixed_on_the_grid(pretrained: &Pretrained, name: &str) -> bool {
    pretrained.seeded_head.contains(name) || model::weights::is_classifier(name)
}

/// Builds the directions of `config` for `theta1` (and, for `checkpoints`, the start model).
/// `start` is A for `checkpoints`, unused otherwise.
pub fn prepare_surface(
    config: &LandscapeConfig,
    theta1: &Pretrained,
    start: Option<&Pretrained>,
) -> Result<Surface> {
    if config.directions == Directions::Pca {
        let run = config
            .pca_run
            .as_deref()
            .context("--directions pca needs the run whose trajectory spans the plane")?;
        return pca_surface(&theta1.weights, run);
    }
    let device = theta1.device();
    let names: Vec<String> = model::weights::expected_shapes(&theta1.config, theta1.num_labels)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let candidates: Vec<String> = match config.directions {
        Directions::Checkpoints => {
            let a = start.context("checkpoints directions need the start checkpoint")?;
            // Tensors drawn from the seed in both are identical: nothing to move.
            names
                .iter()
                .filter(|n| !(a.seeded_head.contains(*n) && theta1.seeded_head.contains(*n)))
                .cloned()
                .collect()
        }
        _ => names
            .iter()
            .filter(|n| !fixed_on_the_grid(theta1, n))
            .cloned()
            .collect(),
    };
    let selected = match config.tensors.as_deref() {
        Some(patterns) => select::select_tensors(&candidates, patterns, "--tensors")?,
        None => candidates,
    };
    let theta0 = match config.directions {
        Directions::Paper => Some(theta1.theta0(config.seed)?),
        _ => None,
    };
    let two_d = config.dims == 2;
    let mut moving = Vec::with_capacity(selected.len());
    for name in selected {
        let end = theta1.weights[&name].clone();
        let (along, d2) = match config.directions {
            Directions::Paper | Directions::Checkpoints => {
                let begin = match &theta0 {
                    Some(t0) => t0[&name].clone(),
                    None => start.unwrap().weights[&name].clone(),
                };
                ensure!(
                    begin.dims() == end.dims(),
                    "tensor {name}: shape {:?} at the start but {:?} at the end",
                    begin.dims(),
                    end.dims()
                );
                let d2 = if two_d {
                    let delta1 = (&end - &begin)?;
                    let d = gaussian("d", &name, end.dims(), config.seed, &device)?;
                    Some(paper_delta2(&delta1, &d)?)
                } else {
                    None
                };
                (Along::Interpolate { start: begin, end }, d2)
            }
            Directions::Pca => anyhow::bail!("pca planes are built by pca_surface"),
            Directions::FilterNormalized => {
                let d1 = filter_normalize(
                    &gaussian("filter1", &name, end.dims(), config.seed, &device)?,
                    &end,
                    config.filter_1d,
                )?;
                let d2 = if two_d {
                    Some(filter_normalize(
                        &gaussian("filter2", &name, end.dims(), config.seed, &device)?,
                        &end,
                        config.filter_1d,
                    )?)
                } else {
                    None
                };
                (Along::Offset { origin: end, d1 }, d2)
            }
        };
        moving.push(Moving { name, along, d2 });
    }
    Ok(Surface {
        fixed: theta1.weights.clone(),
        moving,
        start: theta1.weights.clone(),
        explained: None,
    })
}

/// `pca`: the plane of `run`'s recorded trajectory (its top two principal directions, unit
/// norm) through its last snapshot. `base` holds the weights the run started from; the tensors
/// the run trained move (its head included), everything else stays at `base`.
pub fn pca_surface(base: &WeightMap, run: &Path) -> Result<Surface> {
    let rows = trajectory::read_table(run)?;
    let last_row = rows
        .last()
        .with_context(|| format!("{}: the trajectory is empty", run.display()))?;
    let names: Vec<(String, usize)> = trajectory::read_snapshot(run, last_row)?
        .iter()
        .map(|(n, t)| (n.clone(), t.elem_count()))
        .collect();
    for (name, count) in &names {
        let w = base.get(name).with_context(|| {
            format!(
                "{}: the trajectory has a tensor {name} the model does not",
                run.display()
            )
        })?;
        ensure!(
            w.elem_count() == *count,
            "{}: tensor {name} has {count} entries in the trajectory but {} in the model",
            run.display(),
            w.elem_count()
        );
    }
    let points: Vec<Vec<f32>> = trajectory::read_flat(run, &names)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let plane = trajectory::pca_plane(&points)
        .with_context(|| format!("the PCA plane of {}", run.display()))?;
    let last = &points[points.len() - 1];
    let (mut fixed, mut moving, mut offset) = (base.clone(), Vec::new(), 0);
    for (name, count) in names {
        let w = &base[&name];
        let piece =
            |v: &[f32]| Tensor::from_slice(&v[offset..offset + count], w.shape(), w.device());
        let origin = (w + piece(last)?)?;
        fixed.insert(name.clone(), origin.clone());
        moving.push(Moving {
            name,
            along: Along::Offset {
                origin,
                d1: piece(&plane.d1)?,
            },
            d2: Some(piece(&plane.d2)?),
        });
        offset += count;
    }
    Ok(Surface {
        fixed,
        moving,
        start: base.clone(),
        explained: Some(plane.explained),
    })
}
