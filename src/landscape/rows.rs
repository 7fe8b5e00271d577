//! The Parquet schema of a landscape: one row per grid point (`point`, `alpha_index`,
//! `beta_index`, `task`, `model`, `directions`, `alpha`, `beta`, `loss`, `metric_name`,
//! `metric`, `n_examples`, `seconds`, then one column per task metric), with the configuration
//! (`landscape_config`), the shard (`landscape_shard`) and the grid size in the metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame};

use super::config::LandscapeConfig;
use crate::grid::{Cell, Outcome, Shard};
use crate::metrics;
use crate::output::{self, column};

/// Parquet metadata key of the run configuration (JSON of [`LandscapeConfig`]).
pub const CONFIG_KEY: &str = "landscape_config";
/// Parquet metadata key of the shard a file holds ("I/N"; "1/1" for a whole grid).
pub const SHARD_KEY: &str = "landscape_shard";
/// Parquet metadata key of the number of points in the whole grid.
pub const GRID_POINTS_KEY: &str = "landscape_grid_points";

/// One finished grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub point: usize,
    pub alpha_index: usize,
    pub beta_index: usize,
    pub alpha: f64,
    pub beta: f64,
    pub loss: f64,
    /// The task's primary metric (`metrics::primary_metric`).
    pub metric: f64,
    /// Every metric of the task (e.g. MRPC accuracy and F1).
    pub metrics: BTreeMap<String, f64>,
    pub n_examples: usize,
    /// Wall-clock seconds of this point (weights, classifier, evaluation).
    pub seconds: f64,
}

impl Row {
    /// The row without its timing, for comparing runs.
    pub fn values(&self) -> Row {
        Row {
            seconds: 0.0,
            ..self.clone()
        }
    }
}

impl Cell for Row {
    fn id(&self) -> String {
        self.point.to_string()
    }
}

impl Outcome for Row {
    /// Equal values; the timing may differ.
    fn agrees_with(&self, other: &Row) -> bool {
        self.values() == other.values()
    }

    fn describe(&self) -> String {
        format!(
            "point {} (α = {}, β = {}) with loss {}",
            self.point, self.alpha, self.beta, self.loss
        )
    }
}

const FIXED_COLUMNS: [&str; 13] = [
    "point",
    "alpha_index",
    "beta_index",
    "task",
    "model",
    "directions",
    "alpha",
    "beta",
    "loss",
    "metric_name",
    "metric",
    "n_examples",
    "seconds",
];

/// The rows as a table, sorted by point; one extra column per task metric.
pub fn rows_frame(config: &LandscapeConfig, rows: &[Row]) -> Result<DataFrame> {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| r.point);
    let n = rows.len();
    let metric_name = metrics::primary_metric(config.task);
    let u32s = |f: &dyn Fn(&Row) -> usize| rows.iter().map(|r| f(r) as u32).collect::<Vec<u32>>();
    let f64s = |f: &dyn Fn(&Row) -> f64| rows.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let strs = |s: &str| vec![s.to_string(); n];
    let mut columns = vec![
        Column::new("point".into(), u32s(&|r| r.point)),
        Column::new("alpha_index".into(), u32s(&|r| r.alpha_index)),
        Column::new("beta_index".into(), u32s(&|r| r.beta_index)),
        Column::new("task".into(), strs(config.task.name())),
        Column::new("model".into(), strs(&config.model)),
        Column::new("directions".into(), strs(config.directions.name())),
        Column::new("alpha".into(), f64s(&|r| r.alpha)),
        Column::new("beta".into(), f64s(&|r| r.beta)),
        Column::new("loss".into(), f64s(&|r| r.loss)),
        Column::new("metric_name".into(), strs(metric_name)),
        Column::new("metric".into(), f64s(&|r| r.metric)),
        Column::new("n_examples".into(), u32s(&|r| r.n_examples)),
        Column::new("seconds".into(), f64s(&|r| r.seconds)),
    ];
    let metric_names: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    for name in metric_names {
        if FIXED_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        columns.push(Column::new(
            name.as_str().into(),
            f64s(&|r| r.metrics.get(name).copied().unwrap_or(f64::NAN)),
        ));
    }
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Writes `rows` to `path` with the configuration and shard in the metadata.
pub fn write_rows(path: &Path, config: &LandscapeConfig, shard: Shard, rows: &[Row]) -> Result<()> {
    let mut df = rows_frame(config, rows)?;
    let metadata = vec![
        (CONFIG_KEY.to_string(), config.to_json()?),
        (SHARD_KEY.to_string(), shard.to_string()),
        (GRID_POINTS_KEY.to_string(), config.num_points().to_string()),
    ];
    output::write_parquet(&mut df, path, &metadata)
}

/// A landscape file: its configuration, shard and rows.
#[derive(Debug, Clone)]
pub struct LandscapeFile {
    pub path: PathBuf,
    pub config: LandscapeConfig,
    pub shard: Shard,
    pub rows: Vec<Row>,
}

/// Reads a file written by [`write_rows`].
pub fn read_file(path: &Path) -> Result<LandscapeFile> {
    let metadata = output::read_metadata(path)?;
    let config: LandscapeConfig =
        serde_json::from_str(&output::metadata_value(&metadata, CONFIG_KEY, path)?)
            .with_context(|| format!("{}: reading its {CONFIG_KEY}", path.display()))?;
    let shard = match metadata.iter().find(|(k, _)| k == SHARD_KEY) {
        Some((_, s)) => {
            Shard::parse(s).with_context(|| format!("{}: its {SHARD_KEY}", path.display()))?
        }
        None => Shard::WHOLE,
    };
    let df = output::read_parquet(path)?;
    let rows = rows_of(&df).with_context(|| format!("reading {}", path.display()))?;
    Ok(LandscapeFile {
        path: path.to_path_buf(),
        config,
        shard,
        rows,
    })
}

/// The rows of a table written by [`rows_frame`].
fn rows_of(df: &DataFrame) -> Result<Vec<Row>> {
    let indices = |name: &str| -> Result<Vec<usize>> {
        Ok(column::u32s(df, name)?
            .into_iter()
            .map(|x| x as usize)
            .collect())
    };
    let (point, ia, ib, n) = (
        indices("point")?,
        indices("alpha_index")?,
        indices("beta_index")?,
        indices("n_examples")?,
    );
    let f64s = |name: &str| column::f64s(df, name);
    let (alpha, beta, loss, metric, seconds) = (
        f64s("alpha")?,
        f64s("beta")?,
        f64s("loss")?,
        f64s("metric")?,
        f64s("seconds")?,
    );
    let extra: Vec<(String, Vec<f64>)> = df
        .get_column_names()
        .into_iter()
        .filter(|c| !FIXED_COLUMNS.contains(&c.as_str()))
        .map(|c| Ok((c.to_string(), f64s(c.as_str())?)))
        .collect::<Result<_>>()?;
    Ok((0..df.height())
        .map(|i| Row {
            point: point[i],
            alpha_index: ia[i],
            beta_index: ib[i],
            alpha: alpha[i],
            beta: beta[i],
            loss: loss[i],
            metric: metric[i],
            metrics: extra.iter().map(|(k, v)| (k.clone(), v[i])).collect(),
            n_examples: n[i],
            seconds: seconds[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Task;
    use crate::landscape::Range;

    /// Rows with two task metrics survive a write and a read, with the configuration and the
    /// shard in the metadata; the table is sorted by point whatever the order of the rows.
    #[test]
    fn rows_round_trip_through_parquet_with_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("landscape.shard-2-of-3.parquet");
        let mut config = LandscapeConfig::new(Task::Mrpc, Path::new("glue"), 1);
        config.alpha = Range::parse("0:1:5").unwrap();
        let shard = Shard::parse("2/3").unwrap();
        let row = |point: usize, loss: f64| Row {
            point,
            alpha_index: point,
            beta_index: 0,
            alpha: point as f64 / 4.0,
            beta: 0.0,
            loss,
            metric: 0.75,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.75), ("f1".to_string(), 0.8)]),
            n_examples: 16,
            seconds: 1.5,
        };
        let rows = vec![row(4, 0.25), row(1, f64::NAN)];
        write_rows(&path, &config, shard, &rows).unwrap();
        let file = read_file(&path).unwrap();
        assert_eq!(file.config, config);
        assert_eq!(file.shard, shard);
        assert_eq!(file.rows.len(), 2);
        assert_eq!(file.rows[0].point, 1);
        assert!(file.rows[0].loss.is_nan());
        assert_eq!(file.rows[1], rows[0]);
        let meta = output::read_metadata(&path).unwrap();
        assert_eq!(
            output::metadata_value(&meta, SHARD_KEY, &path).unwrap(),
            "2/3"
        );
        assert_eq!(
            output::metadata_value(&meta, GRID_POINTS_KEY, &path).unwrap(),
            "5"
        );
        let df = output::read_parquet(&path).unwrap();
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut want: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
        want.extend(["accuracy".to_string(), "f1".to_string()]);
        assert_eq!(names, want);
        assert_eq!(
            column::strings(&df, "metric_name").unwrap(),
            vec!["accuracy", "accuracy"]
        );
        assert_eq!(
            column::strings(&df, "directions").unwrap(),
            vec!["paper", "paper"]
        );
    }
}
