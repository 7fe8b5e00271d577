//! The Parquet schema of `sharpness.parquet`: one row per cell (α point × scope):
//! `cell`, `alpha_index`, `alpha`, `scope`, `task`, `model`, `params`, `loss`, `grad_norm`,
//! `lambda_max`, `lambda_max_residual`, `lambda_2`… and `residual_2`… (top-k), `trace`,
//! `trace_se`, `trace_per_param`, `probes`, `hvps`, `fd_step`, `seconds`; the configuration in
//! the metadata (`sharpness_config`).

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame};

use super::config::{cell_id, SharpnessConfig};
use crate::grid::Cell;
use crate::output::{self, column};

/// Parquet metadata key of the configuration (JSON of [`SharpnessConfig`]).
pub const CONFIG_KEY: &str = "sharpness_config";

/// The measurements of one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub alpha_index: usize,
    pub alpha: f64,
    pub scope: String,
    /// Parameters in the scope (the Hessian's dimension).
    pub params: usize,
    /// Mean evaluation loss at the point, and the norm of its gradient over the scope.
    pub loss: f64,
    pub grad_norm: f64,
    /// Top eigenvalues, largest first, and their Ritz residuals.
    pub eigenvalues: Vec<f64>,
    pub residuals: Vec<f64>,
    /// Hutchinson's estimate and its standard error.
    pub trace: f64,
    pub trace_se: f64,
    pub probes: usize,
    /// Hessian-vector products spent (eigenvalues + trace).
    pub hvps: usize,
    pub seconds: f64,
}

impl Cell for Row {
    fn id(&self) -> String {
        cell_id(self.alpha_index, &self.scope)
    }
}

/// The rows as a table, in cell order (α, then the order of `scope_order`).
pub fn rows_frame(
    config: &SharpnessConfig,
    rows: &[Row],
    scope_order: &[String],
) -> Result<DataFrame> {
    let position = |s: &str| {
        scope_order
            .iter()
            .position(|x| x == s)
            .unwrap_or(usize::MAX)
    };
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| (r.alpha_index, position(&r.scope), r.scope.clone()));
    let n = rows.len();
    let strs = |s: &str| vec![s.to_string(); n];
    let mut columns = vec![
        output::column_of("cell", &rows, |r| r.id()),
        output::column_of("alpha_index", &rows, |r| r.alpha_index as u32),
        output::column_of("alpha", &rows, |r| r.alpha),
        output::column_of("scope", &rows, |r| r.scope.clone()),
        Column::new("task".into(), strs(config.task.name())),
        Column::new("model".into(), strs(&config.model)),
        output::column_of("params", &rows, |r| r.params as u64),
        output::column_of("loss", &rows, |r| r.loss),
        output::column_of("grad_norm", &rows, |r| r.grad_norm),
        output::column_of("lambda_max", &rows, |r| r.eigenvalues[0]),
        output::column_of("lambda_max_residual", &rows, |r| r.residuals[0]),
    ];
    let k = rows.iter().map(|r| r.eigenvalues.len()).min().unwrap_or(0);
    for i in 1..k {
        columns.push(output::column_of(
            &format!("lambda_{}", i + 1),
            &rows,
            |r| r.eigenvalues[i],
        ));
        columns.push(output::column_of(
            &format!("residual_{}", i + 1),
            &rows,
            |r| r.residuals[i],
        ));
    }
    columns.extend([
        output::column_of("trace", &rows, |r| r.trace),
        output::column_of("trace_se", &rows, |r| r.trace_se),
        output::column_of("trace_per_param", &rows, |r| r.trace / r.params as f64),
        output::column_of("probes", &rows, |r| r.probes as u32),
        output::column_of("hvps", &rows, |r| r.hvps as u32),
        Column::new("fd_step".into(), vec![config.fd_step; n]),
        output::column_of("seconds", &rows, |r| r.seconds),
    ]);
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Writes `rows` (atomically) with the configuration in the metadata.
pub fn write_rows(
    path: &Path,
    config: &SharpnessConfig,
    rows: &[Row],
    scope_order: &[String],
) -> Result<()> {
    let mut df = rows_frame(config, rows, scope_order)?;
    let metadata = vec![(CONFIG_KEY.to_string(), serde_json::to_string(config)?)];
    output::write_parquet(&mut df, path, &metadata)
}

/// Reads a file written by [`write_rows`]: its configuration and rows.
pub fn read_file(path: &Path) -> Result<(SharpnessConfig, Vec<Row>)> {
    let metadata = output::read_metadata(path)?;
    let config: SharpnessConfig =
        serde_json::from_str(&output::metadata_value(&metadata, CONFIG_KEY, path)?)
            .with_context(|| format!("{}: reading its {CONFIG_KEY}", path.display()))?;
    let df = output::read_parquet(path)?;
    let rows = rows_of(&df, config.top_k).with_context(|| format!("reading {}", path.display()))?;
    Ok((config, rows))
}

fn rows_of(df: &DataFrame, top_k: usize) -> Result<Vec<Row>> {
    let f = |name: &str| column::f64s(df, name);
    let u = |name: &str| -> Result<Vec<usize>> {
        Ok(column::u32s(df, name)?
            .into_iter()
            .map(|x| x as usize)
            .collect())
    };
    let (alpha_index, probes, hvps) = (u("alpha_index")?, u("probes")?, u("hvps")?);
    let params = column::u64s(df, "params")?;
    let scope = column::strings(df, "scope")?;
    let (alpha, loss, grad_norm, trace, trace_se, seconds) = (
        f("alpha")?,
        f("loss")?,
        f("grad_norm")?,
        f("trace")?,
        f("trace_se")?,
        f("seconds")?,
    );
    let mut lambdas = vec![f("lambda_max")?];
    let mut residuals = vec![f("lambda_max_residual")?];
    for i in 2..=top_k {
        if df.column(&format!("lambda_{i}")).is_err() {
            break; // fewer Ritz values than asked (a scope smaller than k)
        }
        lambdas.push(f(&format!("lambda_{i}"))?);
        residuals.push(f(&format!("residual_{i}"))?);
    }
    Ok((0..df.height())
        .map(|i| Row {
            alpha_index: alpha_index[i],
            alpha: alpha[i],
            scope: scope[i].clone(),
            params: params[i] as usize,
            loss: loss[i],
            grad_norm: grad_norm[i],
            eigenvalues: lambdas.iter().map(|c| c[i]).collect(),
            residuals: residuals.iter().map(|c| c[i]).collect(),
            trace: trace[i],
            trace_se: trace_se[i],
            probes: probes[i],
            hvps: hvps[i],
            seconds: seconds[i],
        })
        .collect())
}
