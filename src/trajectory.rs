//! Training trajectories: what `train --trajectory-every N` records, and the geometry that puts
//! a trajectory on a landscape's plane.
//!
//! Recording: at step 0 (θ1 and the initial head), every N steps and at the last step, the
//! increment θ_t − θ_start of every tensor the method trains (the head included; SIFT's Δ and
//! LoRA's (α/r)·B·A as dense tensors) goes to `RUN/trajectory/step-NNNNNN.safetensors`, and
//! `RUN/trajectory.parquet` lists the snapshots (step, epoch, train loss, ‖θ_t − θ_start‖).
//!
//! Geometry (pure functions on flat vectors, tested against hand-worked cases):
//! - [`Projection`]: the point (a, b) of a plane origin + a·d1 + b·d2 nearest to x, by least
//!   squares over every coordinate (d1, d2 need not be orthogonal: the paper's δ1 and δ2 = d ⊙ δ1
//!   are not), with the distance from x to the plane;
//! - [`pca_plane`]: the plane of a trajectory's own two principal directions (Li et al. 2018's
//!   `plot_trajectory`): the snapshots centred on their mean, the top two eigenvectors of their
//!   Gram matrix turned into unit directions, the plane through the last snapshot; coordinates of
//!   every snapshot and the share of the variance the plane holds.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use polars::prelude::DataFrame;
use rayon::prelude::*;

use crate::output;
use crate::sharpness::eigen::symmetric_eigen;

/// The table of a run's snapshots, in the run directory.
pub const TABLE_FILE: &str = "trajectory.parquet";
/// The folder of the snapshots, in the run directory.
pub const SNAPSHOT_DIR: &str = "trajectory";

/// One recorded snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub step: usize,
    pub epoch: usize,
    /// Mean training loss of the epoch so far (NaN at step 0).
    pub train_loss: f64,
    /// ‖θ_t − θ_start‖ over every trained tensor.
    pub distance: f64,
    /// File name inside `RUN/trajectory/`.
    pub file: String,
}

fn snapshot_name(step: usize) -> String {
    format!("step-{step:06}.safetensors")
}

fn norm(tensors: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut sum = 0.0;
    for t in tensors.values() {
        sum += t
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Writes snapshots of one run as it trains.
pub struct Recorder {
    run_dir: PathBuf,
    pub every: usize,
    rows: Vec<SnapshotRow>,
}

impl Recorder {
    /// Starts recording into `run_dir`; on resume, keeps the snapshots up to `resumed_step` (the
    /// ones after it are recorded again, with the same values).
    pub fn new(run_dir: &Path, every: usize, resumed_step: Option<usize>) -> Result<Recorder> {
        ensure!(every > 0, "--trajectory-every must be at least 1");
        let mut rows = Vec::new();
        if let Some(step) = resumed_step {
            if run_dir.join(TABLE_FILE).exists() {
                rows = read_table(run_dir)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .collect();
            }
        }
        Ok(Recorder {
            run_dir: run_dir.to_path_buf(),
            every,
            rows,
        })
    }

    /// Whether `step` (after `step` optimizer steps) is one to record.
    pub fn due(&self, step: usize, last_step: usize) -> bool {
        step.is_multiple_of(self.every) || step == last_step
    }

    /// Records the increments after `step` steps.
    pub fn record(
        &mut self,
        step: usize,
        epoch: usize,
        train_loss: f64,
        increments: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        if self.rows.iter().any(|r| r.step == step) {
            return Ok(());
        }
        let file = snapshot_name(step);
        let tensors: HashMap<String, Tensor> = increments
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        output::write_safetensors(
            &tensors,
            HashMap::new(),
            &self.run_dir.join(SNAPSHOT_DIR).join(&file),
        )?;
        self.rows.push(SnapshotRow {
            step,
            epoch,
            train_loss,
            distance: norm(increments)?,
            file,
        });
        write_table(&self.run_dir, &self.rows)
    }
}

fn write_table(run_dir: &Path, rows: &[SnapshotRow]) -> Result<()> {
    let mut df = DataFrame::new_infer_height(vec![
        output::column_of("step", rows, |r| r.step as u64),
        output::column_of("epoch", rows, |r| r.epoch as u64),
        output::column_of("train_loss", rows, |r| r.train_loss),
        output::column_of("distance", rows, |r| r.distance),
        output::column_of("file", rows, |r| r.file.clone()),
    ])?;
    output::write_parquet(&mut df, &run_dir.join(TABLE_FILE), &[])
}

/// The snapshot table of a run recorded with `--trajectory-every`.
pub fn read_table(run_dir: &Path) -> Result<Vec<SnapshotRow>> {
    let path = run_dir.join(TABLE_FILE);
    ensure!(
        path.is_file(),
        "{} not found: {} holds no trajectory. Train it with `sift-lab train ... \
         --trajectory-every N` (e.g. 25) to record one",
        path.display(),
        run_dir.display()
    );
    let df = output::read_parquet(&path)?;
    let steps = output::column::u64s(&df, "step")?;
    let epochs = output::column::u64s(&df, "epoch")?;
    let losses = output::column::f64s_or_nan(&df, "train_loss")?;
    let distances = output::column::f64s(&df, "distance")?;
    let files = output::column::strings(&df, "file")?;
    Ok((0..steps.len())
        .map(|i| SnapshotRow {
            step: steps[i] as usize,
            epoch: epochs[i] as usize,
            train_loss: losses[i],
            distance: distances[i],
            file: files[i].clone(),
        })
        .collect())
}

/// One snapshot's increments, by tensor name.
pub fn read_snapshot(run_dir: &Path, row: &SnapshotRow) -> Result<BTreeMap<String, Tensor>> {
    let path = run_dir.join(SNAPSHOT_DIR).join(&row.file);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("reading the trajectory snapshot {}", path.display()))?;
    Ok(tensors.into_iter().collect())
}

/// Every snapshot of a run, flattened in the order of `names` (a tensor a snapshot lacks
/// counts as zero), with its row.
pub fn read_flat(
    run_dir: &Path,
    names: &[(String, usize)],
) -> Result<Vec<(SnapshotRow, Vec<f32>)>> {
    read_table(run_dir)?
        .into_iter()
        .map(|row| {
            let snapshot = read_snapshot(run_dir, &row)?;
            let flat = flatten(&snapshot, names)?;
            Ok((row, flat))
        })
        .collect()
}

/// The tensors of `snapshot` named in `names` (name, element count), concatenated; missing
/// ones as zeros.
pub fn flatten(snapshot: &BTreeMap<String, Tensor>, names: &[(String, usize)]) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(names.iter().map(|(_, n)| n).sum());
    for (name, count) in names {
        match snapshot.get(name) {
            Some(t) => {
                ensure!(
                    t.elem_count() == *count,
                    "snapshot tensor {name} has {} entries, expected {count}",
                    t.elem_count()
                );
                flat.extend(t.flatten_all()?.to_vec1::<f32>()?);
            }
            None => flat.resize(flat.len() + count, 0.0),
        }
    }
    Ok(flat)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.par_chunks(1 << 16)
        .zip(b.par_chunks(1 << 16))
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum::<f64>()
        })
        .sum()
}

/// The sums a least-squares projection onto a plane needs, accumulated tensor by tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Projection {
    d1d1: f64,
    d1d2: f64,
    d2d2: f64,
    d1r: f64,
    d2r: f64,
    rr: f64,
}

impl Projection {
    /// Adds one block of coordinates: the plane's origin, its directions and the point x.
    pub fn add(&mut self, origin: &[f32], d1: &[f32], d2: &[f32], x: &[f32]) {
        let r: Vec<f32> = x.iter().zip(origin).map(|(a, b)| a - b).collect();
        self.d1d1 += dot(d1, d1);
        self.d1d2 += dot(d1, d2);
        self.d2d2 += dot(d2, d2);
        self.d1r += dot(d1, &r);
        self.d2r += dot(d2, &r);
        self.rr += dot(&r, &r);
    }

    /// (a, b) minimising ‖origin + a·d1 + b·d2 − x‖, and that distance.
    pub fn solve(&self) -> Result<(f64, f64, f64)> {
        let det = self.d1d1 * self.d2d2 - self.d1d2 * self.d1d2;
        ensure!(
            det > 1e-12 * self.d1d1 * self.d2d2 && det.is_finite(),
            "the plane's two directions are (nearly) parallel or zero: no unique projection"
        );
        let a = (self.d2d2 * self.d1r - self.d1d2 * self.d2r) / det;
        let b = (self.d1d1 * self.d2r - self.d1d2 * self.d1r) / det;
        // ‖r − a d1 − b d2‖² = ‖r‖² − (a·d1r + b·d2r) at the least-squares solution.
        let residual = (self.rr - a * self.d1r - b * self.d2r).max(0.0).sqrt();
        Ok((a, b, residual))
    }
}

/// A trajectory's own plane (Li et al. 2018).
#[derive(Debug, Clone)]
pub struct PcaPlane {
    /// Unit directions (first and second principal component).
    pub d1: Vec<f32>,
    pub d2: Vec<f32>,
    /// Share of the snapshots' variance along d1 and along d2.
    pub explained: [f64; 2],
    /// Coordinates of every snapshot: (⟨x − x_last, d1⟩, ⟨x − x_last, d2⟩).
    pub coordinates: Vec<(f64, f64)>,
}

/// The plane of the top two principal directions of `points` (at least 3, not all equal),
/// through the last point. The directions come from the T × T Gram matrix of the centred points
/// (T snapshots of D ≫ T coordinates): d_k = Σ_i u_ki (x_i − x̄) / √λ_k.
pub fn pca_plane(points: &[Vec<f32>]) -> Result<PcaPlane> {
    let t = points.len();
    ensure!(
        t >= 3,
        "a trajectory needs at least 3 snapshots for its PCA plane, it has {t}: record more \
         often (--trajectory-every) or train longer"
    );
    let dims = points[0].len();
    ensure!(
        points.iter().all(|p| p.len() == dims),
        "snapshots of different sizes"
    );
    let mean: Vec<f32> = (0..dims)
        .into_par_iter()
        .map(|j| (points.iter().map(|p| p[j] as f64).sum::<f64>() / t as f64) as f32)
        .collect();
    let centred: Vec<Vec<f32>> = points
        .iter()
        .map(|p| p.iter().zip(&mean).map(|(a, b)| a - b).collect())
        .collect();
    let mut gram = vec![0.0; t * t];
    for i in 0..t {
        for j in i..t {
            let g = dot(&centred[i], &centred[j]);
            gram[i * t + j] = g;
            gram[j * t + i] = g;
        }
    }
    let (values, vectors) = symmetric_eigen(&gram, t);
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    ensure!(
        total > 0.0 && values[1] > 1e-12 * total,
        "the trajectory does not span a plane (it stays on one line or one point): no PCA plane"
    );
    let direction = |k: usize| -> Vec<f32> {
        let u = &vectors[k];
        let scale = 1.0 / values[k].sqrt();
        (0..dims)
            .into_par_iter()
            .map(|j| {
                (centred
                    .iter()
                    .zip(u)
                    .map(|(c, w)| c[j] as f64 * w)
                    .sum::<f64>()
                    * scale) as f32
            })
            .collect()
    };
    let (d1, d2) = (direction(0), direction(1));
    let last = &points[t - 1];
    let coordinates = points
        .iter()
        .map(|p| {
            let r: Vec<f32> = p.iter().zip(last).map(|(a, b)| a - b).collect();
            (dot(&r, &d1), dot(&r, &d2))
        })
        .collect();
    Ok(PcaPlane {
        d1,
        d2,
        explained: [values[0] / total, values[1] / total],
        coordinates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_on_a_skew_plane_projects_to_its_coefficients() {
        // Hand-made, non-orthogonal directions (like δ1 and δ2 = d ⊙ δ1).
        let origin = [1.0f32, -2.0, 0.5, 3.0];
        let d1 = [1.0f32, 1.0, 0.0, 2.0];
        let d2 = [0.5f32, -1.0, 1.0, 1.0];
        let (a, b) = (0.75, -1.5);
        let x: Vec<f32> = (0..4)
            .map(|i| origin[i] + a as f32 * d1[i] + b as f32 * d2[i])
            .collect();
        // Split over two "tensors", as the landscape accumulates it.
        let mut p = Projection::default();
        p.add(&origin[..2], &d1[..2], &d2[..2], &x[..2]);
        p.add(&origin[2..], &d1[2..], &d2[2..], &x[2..]);
        let (pa, pb, residual) = p.solve().unwrap();
        assert!((pa - a).abs() < 1e-6 && (pb - b).abs() < 1e-6, "{pa} {pb}");
        assert!(residual < 1e-5, "{residual}");

        // Moved off the plane: the residual must be the distance to the best fit, and the fit
        // a least-squares optimum (residual orthogonal to both directions).
        let off: Vec<f32> = x
            .iter()
            .zip([0.3f32, -0.1, 0.2, 0.4])
            .map(|(v, e)| v + e)
            .collect();
        let mut q = Projection::default();
        q.add(&origin, &d1, &d2, &off);
        let (qa, qb, qres) = q.solve().unwrap();
        let direct: f64 = (0..4)
            .map(|i| {
                let fit = origin[i] as f64 + qa * d1[i] as f64 + qb * d2[i] as f64;
                (off[i] as f64 - fit).powi(2)
            })
            .sum::<f64>()
            .sqrt();
        assert!((qres - direct).abs() < 1e-5, "{qres} vs {direct}");
        let resid: Vec<f64> = (0..4)
            .map(|i| off[i] as f64 - (origin[i] as f64 + qa * d1[i] as f64 + qb * d2[i] as f64))
            .collect();
        let along = |d: &[f32]| (0..4).map(|i| resid[i] * d[i] as f64).sum::<f64>();
        assert!(along(&d1).abs() < 1e-5 && along(&d2).abs() < 1e-5);
    }

    #[test]
    fn parallel_directions_are_refused() {
        let mut p = Projection::default();
        p.add(&[0.0, 0.0], &[1.0, 2.0], &[2.0, 4.0], &[1.0, 1.0]);
        assert!(p.solve().is_err());
    }

    #[test]
    fn the_pca_plane_of_points_on_a_plane_holds_all_their_variance_and_their_coordinates() {
        // Points x_i = c + s_i·e1 + t_i·e2 with orthonormal e1, e2 in 5-D, s spread wider than t:
        // PCA must find span{e1, e2}, 100 % of the variance, and coordinates equal to
        // (s_i − s_last, t_i − t_last) up to each direction's sign.
        let r = 1.0 / 2f32.sqrt();
        let e1 = [r, r, 0.0, 0.0, 0.0];
        let e2 = [0.0, 0.0, 0.0, 1.0, 0.0];
        let c = [0.2f32, -0.4, 1.0, 0.0, 3.0];
        let st = [(0.0, 0.0), (3.0, 0.5), (5.0, -0.5), (6.0, 1.0), (9.0, 0.2)];
        let points: Vec<Vec<f32>> = st
            .iter()
            .map(|&(s, t)| (0..5).map(|j| c[j] + s * e1[j] + t * e2[j]).collect())
            .collect();
        let plane = pca_plane(&points).unwrap();
        // Closed form: the variances along the principal axes are the eigenvalues of the 2 × 2
        // covariance of (s, t).
        let n = st.len() as f64;
        let (ms, mt) = (
            st.iter().map(|p| p.0 as f64).sum::<f64>() / n,
            st.iter().map(|p| p.1 as f64).sum::<f64>() / n,
        );
        let c = |f: &dyn Fn(&(f32, f32)) -> f64| st.iter().map(f).sum::<f64>();
        let css = c(&|p| (p.0 as f64 - ms).powi(2));
        let ctt = c(&|p| (p.1 as f64 - mt).powi(2));
        let cst = c(&|p| (p.0 as f64 - ms) * (p.1 as f64 - mt));
        let (tr, det) = (css + ctt, css * ctt - cst * cst);
        let l1 = (tr + (tr * tr - 4.0 * det).sqrt()) / 2.0;
        assert!(
            (plane.explained[0] - l1 / tr).abs() < 1e-5,
            "{:?}",
            plane.explained
        );
        assert!((plane.explained[0] + plane.explained[1] - 1.0).abs() < 1e-5);
        // d1, d2 are orthonormal and lie in span{e1, e2}.
        for d in [&plane.d1, &plane.d2] {
            let in_span = dot(d, &e1).powi(2) + dot(d, &e2).powi(2);
            assert!((in_span - 1.0).abs() < 1e-5 && (dot(d, d) - 1.0).abs() < 1e-5);
        }
        assert!(dot(&plane.d1, &plane.d2).abs() < 1e-5);
        // Every point is rebuilt from its coordinates: x_i = x_last + a·d1 + b·d2.
        let last = &points[points.len() - 1];
        for (p, &(a, b)) in points.iter().zip(&plane.coordinates) {
            for j in 0..5 {
                let rebuilt = last[j] as f64 + a * plane.d1[j] as f64 + b * plane.d2[j] as f64;
                assert!(
                    (rebuilt - p[j] as f64).abs() < 1e-4,
                    "{rebuilt} vs {}",
                    p[j]
                );
            }
        }
        // The last point is the origin.
        assert_eq!(plane.coordinates[4], (0.0, 0.0));
    }

    #[test]
    fn a_trajectory_on_a_line_or_a_point_has_no_pca_plane() {
        let line: Vec<Vec<f32>> = (0..4)
            .map(|i| vec![i as f32, 2.0 * i as f32, 0.0])
            .collect();
        assert!(pca_plane(&line).is_err());
        let still = vec![vec![1.0f32, 2.0]; 4];
        assert!(pca_plane(&still).is_err());
    }
}
