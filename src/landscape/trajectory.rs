//! `landscape --trajectory RUN...`: training runs on a complete 2-D landscape.
//!
//! Every snapshot a run recorded (`train --trajectory-every N`; `crate::trajectory`) is the point
//! x = start + (θ_t − θ_start). It is placed on the landscape's plane at the (α, β) of the
//! nearest plane point, by least squares over the tensors that move on the plane
//! ([`super::Surface::project`]), with its distance from the plane; the loss there is evaluated
//! like any grid point. On the paper's plane (θ0 + α·δ1 + β·δ2) θ1 itself is (1, 0), and a head
//! trained by the run is left out (the plane's head is fixed). On a `pca` plane (the top two
//! principal directions of one run's trajectory, through its last snapshot) that run lies on
//! the plane up to the variance the two directions miss, reported in `trajectory.json`.
//!
//! Writes `trajectory.parquet` (run, method, step, epoch, train loss, α, β, distance from the
//! plane, ‖θ_t − θ_start‖, loss and metric at the projected point), `trajectory.json` and the
//! figure `trajectory_2d` (the heatmap with one path per run).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::Serialize;

use super::config::{LandscapeConfig, Point};
use super::figures::figures;
use super::prepare::Prepared;
use super::rows::Row;
use crate::plot::landscape::PlanePath;
use crate::train::{self, TrainSummary};
use crate::{output, plot, progress, trajectory};

/// Files written beside the landscape.
pub const TABLE_FILE: &str = "trajectory.parquet";
pub const SUMMARY_FILE: &str = "trajectory.json";
pub const FIGURE_STEM: &str = "trajectory_2d";

/// One snapshot of one run, placed on the plane.
#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryRow {
    pub run: String,
    pub method: String,
    pub step: usize,
    pub epoch: usize,
    pub train_loss: f64,
    pub alpha: f64,
    pub beta: f64,
    /// Distance from the snapshot to the plane.
    pub off_plane: f64,
    /// ‖θ_t − θ_start‖ over every tensor the run trains.
    pub distance: f64,
    /// Loss and primary metric at the projected point (α, β).
    pub loss: f64,
    pub metric: f64,
}

/// Per run: where it starts and ends on the plane, and how far it leaves it.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlacement {
    pub run: String,
    pub method: String,
    pub snapshots: usize,
    pub start: (f64, f64),
    pub end: (f64, f64),
    pub max_off_plane: f64,
    pub final_distance: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrajectorySummary {
    pub directions: String,
    /// `pca`: the share of the spanning run's variance along d1 and d2.
    pub explained_variance: Option<[f64; 2]>,
    pub runs: Vec<RunPlacement>,
}

/// A run's summary, after checking it trained this landscape's model on its task.
pub fn run_summary(run: &Path, config: &LandscapeConfig) -> Result<TrainSummary> {
    let summary = train::read_summary(run).with_context(|| {
        format!(
            "--trajectory {}: not a finished `sift-lab train` run directory",
            run.display()
        )
    })?;
    ensure!(
        summary.config.model == config.model && summary.config.task == config.task,
        "--trajectory {}: the run trained {} on {}, but the landscape is {} on {}; give a run \
         of the landscape's model and task",
        run.display(),
        summary.config.model,
        summary.config.task.name(),
        config.model,
        config.task.name()
    );
    Ok(summary)
}

/// Places every snapshot of `runs` on the prepared plane and evaluates the loss there.
pub fn place_runs(prepared: &Prepared, runs: &[PathBuf]) -> Result<Vec<TrajectoryRow>> {
    let mut tables = Vec::new();
    for run in runs {
        let summary = run_summary(run, &prepared.config)?;
        tables.push((run, summary, trajectory::read_table(run)?));
    }
    let total: usize = tables.iter().map(|(_, _, t)| t.len()).sum();
    let bar = progress::bar(total as u64, "snapshots");
    let mut rows = Vec::with_capacity(total);
    for (run, summary, table) in tables {
        let method = format!("{:?}", summary.config.method).to_lowercase();
        for snapshot in table {
            if progress::interrupted() {
                anyhow::bail!("interrupted: no trajectory file written; rerun to place the runs");
            }
            let increments = trajectory::read_snapshot(run, &snapshot)?;
            let (alpha, beta, off_plane) = prepared.surface.project(&increments)?;
            let at = prepared.evaluate(&Point {
                index: 0,
                alpha_index: 0,
                beta_index: 0,
                alpha,
                beta,
            })?;
            rows.push(TrajectoryRow {
                run: run.display().to_string(),
                method: method.clone(),
                step: snapshot.step,
                epoch: snapshot.epoch,
                train_loss: snapshot.train_loss,
                alpha,
                beta,
                off_plane,
                distance: snapshot.distance,
                loss: at.loss,
                metric: at.metric,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Per-run placement summary.
pub fn summarize(prepared: &Prepared, rows: &[TrajectoryRow]) -> TrajectorySummary {
    let mut runs: Vec<RunPlacement> = Vec::new();
    for row in rows {
        match runs.iter_mut().find(|r| r.run == row.run) {
            Some(r) => {
                r.snapshots += 1;
                r.end = (row.alpha, row.beta);
                r.max_off_plane = r.max_off_plane.max(row.off_plane);
                r.final_distance = row.distance;
            }
            None => runs.push(RunPlacement {
                run: row.run.clone(),
                method: row.method.clone(),
                snapshots: 1,
                start: (row.alpha, row.beta),
                end: (row.alpha, row.beta),
                max_off_plane: row.off_plane,
                final_distance: row.distance,
            }),
        }
    }
    TrajectorySummary {
        directions: prepared.config.directions.name().to_string(),
        explained_variance: prepared.surface.explained,
        runs,
    }
}

/// Writes `trajectory.parquet` and `trajectory.json` into `dir`.
pub fn write(dir: &Path, summary: &TrajectorySummary, rows: &[TrajectoryRow]) -> Result<()> {
    let f64s = |f: fn(&TrajectoryRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let mut df = DataFrame::new_infer_height(vec![
        output::column_of("run", rows, |r| r.run.clone()),
        output::column_of("method", rows, |r| r.method.clone()),
        output::column_of("step", rows, |r| r.step as u64),
        output::column_of("epoch", rows, |r| r.epoch as u64),
        Column::new("train_loss".into(), f64s(|r| r.train_loss)),
        Column::new("alpha".into(), f64s(|r| r.alpha)),
        Column::new("beta".into(), f64s(|r| r.beta)),
        Column::new("off_plane".into(), f64s(|r| r.off_plane)),
        Column::new("distance".into(), f64s(|r| r.distance)),
        Column::new("loss".into(), f64s(|r| r.loss)),
        Column::new("metric".into(), f64s(|r| r.metric)),
    ])?;
    output::write_parquet(&mut df, &dir.join(TABLE_FILE), &[])?;
    output::write_json(&dir.join(SUMMARY_FILE), summary)
}

/// Reads `dir/trajectory.parquet` back (for redrawing without the model).
pub fn read(dir: &Path) -> Result<Vec<TrajectoryRow>> {
    use crate::output::column;
    let df = output::read_parquet(&dir.join(TABLE_FILE))?;
    let runs = column::strings(&df, "run")?;
    let methods = column::strings(&df, "method")?;
    let steps = column::u64s(&df, "step")?;
    let epochs = column::u64s(&df, "epoch")?;
    let f = |name: &str| column::f64s_or_nan(&df, name);
    let (train_loss, alpha, beta) = (f("train_loss")?, f("alpha")?, f("beta")?);
    let (off_plane, distance, loss, metric) =
        (f("off_plane")?, f("distance")?, f("loss")?, f("metric")?);
    Ok((0..runs.len())
        .map(|i| TrajectoryRow {
            run: runs[i].clone(),
            method: methods[i].clone(),
            step: steps[i] as usize,
            epoch: epochs[i] as usize,
            train_loss: train_loss[i],
            alpha: alpha[i],
            beta: beta[i],
            off_plane: off_plane[i],
            distance: distance[i],
            loss: loss[i],
            metric: metric[i],
        })
        .collect())
}

/// The landscape's heatmap with one path per run, written as `trajectory_2d.png` / `.svg`.
pub fn draw(
    config: &LandscapeConfig,
    grid: &[Row],
    rows: &[TrajectoryRow],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut heatmap = figures(config, grid)?
        .heatmap
        .context("trajectories are drawn on a 2-D landscape (--dims 2)")?;
    let mut paths: Vec<PlanePath> = Vec::new();
    for row in rows {
        let label = format!(
            "{} ({})",
            row.method,
            Path::new(&row.run)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        );
        match paths.iter_mut().find(|p| p.label == label) {
            Some(p) => p.points.push((row.alpha, row.beta)),
            None => paths.push(PlanePath {
                label,
                points: vec![(row.alpha, row.beta)],
            }),
        }
    }
    heatmap.texts.title = format!("{}, with training trajectories", heatmap.texts.title);
    heatmap.paths = paths;
    plot::save(&heatmap, &dir.join(FIGURE_STEM))
}
