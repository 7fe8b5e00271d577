//! The configuration of a landscape: the grid (α and β [`Range`]s), the [`Directions`] of the
//! plane, and everything else that determines its numbers ([`LandscapeConfig`], stored in every
//! landscape file); the grid's [`Point`]s and the points it marks (θ0, θ1, or A and B).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::{Split, Task};
use crate::grid::Cell;
use crate::hub;

/// `start:stop:count`: `count` evenly spaced values from `start` to `stop`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Range {
    pub start: f64,
    pub stop: f64,
    pub count: usize,
}

impl Range {
    pub fn new(start: f64, stop: f64, count: usize) -> Result<Range> {
        let text = format!("{start}:{stop}:{count}");
        ensure!(
            start.is_finite() && stop.is_finite(),
            "range {text}: start and stop must be finite numbers"
        );
        ensure!(
            count > 0,
            "range {text} is empty: the count (third number) must be at least 1"
        );
        ensure!(
            start <= stop,
            "range {text} is reversed: start {start} is greater than stop {stop} (write {stop}:{start}:{count})"
        );
        ensure!(
            count == 1 || start < stop,
            "range {text} is empty: {count} points between {start} and itself (use {start}:{start}:1 for one point)"
        );
        ensure!(
            count > 1 || start == stop,
            "range {text}: one point cannot span {start} to {stop} (give a count of at least 2, or {start}:{start}:1)"
        );
        Ok(Range { start, stop, count })
    }

    /// Parses `start:stop:count`.
    pub fn parse(text: &str) -> Result<Range> {
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        ensure!(
            parts.len() == 3,
            "range '{text}': expected START:STOP:COUNT, e.g. -0.5:1.5:41"
        );
        let number = |s: &str, what: &str| -> Result<f64> {
            s.parse::<f64>()
                .with_context(|| format!("range '{text}': {what} '{s}' is not a number"))
        };
        let count: usize = parts[2].parse().with_context(|| {
            format!(
                "range '{text}': the count '{}' is not a whole number",
                parts[2]
            )
        })?;
        Range::new(number(parts[0], "start")?, number(parts[1], "stop")?, count)
    }

    /// The values, in increasing order; the last one is `stop` exactly.
    pub fn values(&self) -> Vec<f64> {
        if self.count == 1 {
            return vec![self.start];
        }
        let span = self.stop - self.start;
        let last = (self.count - 1) as f64;
        (0..self.count)
            .map(|i| {
                if i + 1 == self.count {
                    self.stop
                } else {
                    // Multiply before dividing: -0.5 + 2·30/40 is exactly 1.
                    self.start + span * i as f64 / last
                }
            })
            .collect()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.stop, self.count)
    }
}

impl From<Range> for String {
    fn from(r: Range) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for Range {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Range> {
        Range::parse(&s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Directions {
    /// δ1 = θ1 − θ0, δ2 = d ⊙ δ1, around θ0 (paper §3.2).
    Paper,
    /// Li et al. 2018 filter-normalised Gaussian directions around θ1.
    FilterNormalized,
    /// δ1 = B − A around checkpoint A, δ2 = d ⊙ δ1.
    Checkpoints,
    /// The top two principal directions of a training run's trajectory, around its last
    /// snapshot (Li et al. 2018; `crate::trajectory`).
    Pca,
}

impl Directions {
    pub fn parse(text: &str) -> Result<Directions> {
        match text.trim().to_ascii_lowercase().as_str() {
            "paper" => Ok(Directions::Paper),
            "filter-normalized" | "filter-normalised" | "filter" => {
                Ok(Directions::FilterNormalized)
            }
            "checkpoints" => Ok(Directions::Checkpoints),
            "pca" => Ok(Directions::Pca),
            _ => bail!(
                "--directions '{text}': valid values are paper, filter-normalized, checkpoints, pca"
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Directions::Paper => "paper",
            Directions::FilterNormalized => "filter-normalized",
            Directions::Checkpoints => "checkpoints",
            Directions::Pca => "pca",
        }
    }

    /// The α grid when none is given: the paper's [−0.5, 1.5] spans θ0 and θ1 (or A and B);
    /// around θ1 Li et al. look at [−1, 1].
    pub fn default_alpha(self) -> Range {
        match self {
            Directions::FilterNormalized | Directions::Pca => Range {
                start: -1.0,
                stop: 1.0,
                count: 41,
            },
            _ => Range {
                start: -0.5,
                stop: 1.5,
                count: 41,
            },
        }
    }

    pub fn default_beta(self) -> Range {
        Range {
            start: -1.0,
            stop: 1.0,
            count: 21,
        }
    }
}

/// What filter normalisation does with 1-D tensors (biases, LayerNorm weights and biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter1d {
    /// Direction 0: the tensor stays at θ1 (Li et al.'s `ignore='biasbn'`, their plots' setting).
    Zero,
    /// Direction = the tensor itself (Li et al.'s code without `biasbn`).
    Weight,
}

impl Filter1d {
    pub fn parse(text: &str) -> Result<Filter1d> {
        match text.trim().to_ascii_lowercase().as_str() {
            "zero" => Ok(Filter1d::Zero),
            "weight" => Ok(Filter1d::Weight),
            _ => bail!("--filter-1d '{text}': valid values are zero, weight"),
        }
    }
}

/// Everything that determines the numbers of a landscape (and nothing that does not: jobs,
/// shard and output location are [`super::RunOptions`]). Stored as JSON in the Parquet metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandscapeConfig {
    pub task: Task,
    pub model: String,
    /// Hub snapshot of the model (None for a local directory); filled in by [`super::run`].
    pub model_revision: Option<String>,
    pub directions: Directions,
    pub from_checkpoint: Option<PathBuf>,
    pub to_checkpoint: Option<PathBuf>,
    /// A trained head (pooler + classifier from this checkpoint) instead of the seeded one.
    #[serde(default)]
    pub head_from: Option<PathBuf>,
    /// `pca` directions: the run (recorded with `train --trajectory-every`) whose trajectory
    /// spans the plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca_run: Option<PathBuf>,
    pub dims: usize,
    pub alpha: Range,
    /// Only for `dims = 2`.
    pub beta: Option<Range>,
    /// Comma-separated glob patterns (`*`, `?`) of the tensors that move; None: all but the head.
    pub tensors: Option<String>,
    pub filter_1d: Filter1d,
    /// Seed of θ0, of the task head and of the random directions.
    pub seed: u64,
    pub data_dir: PathBuf,
    pub split: Split,
    pub eval_examples: usize,
    pub max_len: usize,
    pub batch_size: usize,
}

impl LandscapeConfig {
    /// A configuration with the defaults of the CLI for `task` and `dims`.
    pub fn new(task: Task, data_dir: &Path, dims: usize) -> LandscapeConfig {
        let directions = Directions::Paper;
        LandscapeConfig {
            task,
            model: hub::DEFAULT_MODEL.to_string(),
            model_revision: None,
            directions,
            from_checkpoint: None,
            to_checkpoint: None,
            head_from: None,
            pca_run: None,
            dims,
            alpha: directions.default_alpha(),
            beta: (dims == 2).then(|| directions.default_beta()),
            tensors: None,
            filter_1d: Filter1d::Zero,
            seed: 0,
            data_dir: data_dir.to_path_buf(),
            split: Split::Train,
            eval_examples: 512,
            max_len: 128,
            batch_size: 32,
        }
    }

    /// Sets the directions and the grid: `alpha` and `beta` where given, else the directions'
    /// defaults (β only for a 2-D grid).
    pub fn set_grid(&mut self, directions: Directions, alpha: Option<Range>, beta: Option<Range>) {
        self.directions = directions;
        self.alpha = alpha.unwrap_or_else(|| directions.default_alpha());
        self.beta = match beta {
            Some(beta) => Some(beta),
            None => (self.dims == 2).then(|| directions.default_beta()),
        };
    }

    /// Checks everything that can be checked without loading the model.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.dims == 1 || self.dims == 2,
            "--dims {}: must be 1 or 2",
            self.dims
        );
        match (self.dims, &self.beta) {
            (2, None) => bail!("--dims 2 needs a β range (--beta START:STOP:COUNT)"),
            (1, Some(_)) => bail!("--beta is for --dims 2; a 1-D landscape varies α only"),
            _ => {}
        }
        ensure!(self.eval_examples > 0, "--eval-examples must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.max_len >= 8, "--max-len must be at least 8");
        match self.directions {
            Directions::Checkpoints => ensure!(
                self.from_checkpoint.is_some() && self.to_checkpoint.is_some(),
                "--directions checkpoints needs --from-checkpoint A and --to-checkpoint B (δ1 = B − A, around A)"
            ),
            _ => ensure!(
                self.from_checkpoint.is_none() && self.to_checkpoint.is_none(),
                "--from-checkpoint / --to-checkpoint only apply to --directions checkpoints"
            ),
        }
        match self.directions {
            Directions::Pca => {
                ensure!(
                    self.dims == 2 && self.pca_run.is_some(),
                    "--directions pca needs --dims 2 and a run (--trajectory RUN, recorded with \
                     `train --trajectory-every N`) whose trajectory spans the plane"
                );
                ensure!(
                    self.head_from.is_none() && self.tensors.is_none(),
                    "--directions pca moves what the run trained (its head included): drop \
                     --head-from and --tensors"
                );
            }
            _ => ensure!(
                self.pca_run.is_none(),
                "a PCA run only applies to --directions pca"
            ),
        }
        ensure!(
            !(self.head_from.is_some() && self.directions == Directions::Checkpoints),
            "--head-from does not apply to --directions checkpoints (the head is checkpoint B's)"
        );
        if let Some(pattern) = &self.tensors {
            ensure!(
                pattern.split(',').any(|p| !p.trim().is_empty()),
                "--tensors is empty"
            );
        }
        Ok(())
    }

    pub fn alphas(&self) -> Vec<f64> {
        self.alpha.values()
    }

    /// β values; a 1-D grid has the single value 0.
    pub fn betas(&self) -> Vec<f64> {
        match &self.beta {
            Some(b) if self.dims == 2 => b.values(),
            _ => vec![0.0],
        }
    }

    pub fn num_points(&self) -> usize {
        self.alpha.count * self.betas().len()
    }

    /// Every grid point, numbered row-major over (α, β).
    pub fn points(&self) -> Vec<Point> {
        let (alphas, betas) = (self.alphas(), self.betas());
        let mut points = Vec::with_capacity(alphas.len() * betas.len());
        for (ia, &alpha) in alphas.iter().enumerate() {
            for (ib, &beta) in betas.iter().enumerate() {
                points.push(Point {
                    index: ia * betas.len() + ib,
                    alpha_index: ia,
                    beta_index: ib,
                    alpha,
                    beta,
                });
            }
        }
        points
    }

    /// The short model name for titles (`all-MiniLM-L6-v2`).
    pub fn model_short(&self) -> String {
        let m = self.model.trim_end_matches('/');
        m.rsplit('/').next().unwrap_or(m).to_string()
    }

    pub(crate) fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

/// One grid point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub index: usize,
    pub alpha_index: usize,
    pub beta_index: usize,
    pub alpha: f64,
    pub beta: f64,
}

impl Cell for Point {
    /// The point number: the key of resume and merge.
    fn id(&self) -> String {
        self.index.to_string()
    }
}

/// A labelled point of the plane: θ0 and θ1 (or checkpoints A and B).
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedPoint {
    pub label: String,
    pub alpha: f64,
    pub beta: f64,
}

impl LandscapeConfig {
    /// Where the plane's named models lie: for `paper` θ0 at α = 0 and θ1 at α = 1; for
    /// `filter-normalized` θ1 at the origin; for `checkpoints` A at α = 0 and B at α = 1; for
    /// `pca` the run's last snapshot at the origin.
    pub fn marked_points(&self) -> Vec<MarkedPoint> {
        let m = |alpha: f64, label: &str| MarkedPoint {
            label: label.to_string(),
            alpha,
            beta: 0.0,
        };
        match self.directions {
            Directions::Paper => vec![m(0.0, "θ0 (random)"), m(1.0, "θ1 (pretrained)")],
            Directions::FilterNormalized => vec![m(0.0, "θ1 (pretrained)")],
            Directions::Checkpoints => vec![m(0.0, "A"), m(1.0, "B")],
            Directions::Pca => vec![m(0.0, "end of the run")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_include_both_ends() {
        let r = Range::parse("-0.5:1.5:41").unwrap();
        let v = r.values();
        assert_eq!(v.len(), 41);
        assert_eq!(v[0], -0.5);
        assert_eq!(v[10], 0.0);
        assert_eq!(v[30], 1.0);
        assert_eq!(v[40], 1.5);
        let r = Range::parse("-0.5:1.5:21").unwrap();
        assert_eq!(r.values()[5], 0.0);
        assert_eq!(r.values()[15], 1.0);
        assert_eq!(Range::parse("0:0:1").unwrap().values(), vec![0.0]);
        assert_eq!(r.to_string(), "-0.5:1.5:21");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"-0.5:1.5:21\"");
        assert_eq!(serde_json::from_str::<Range>(&json).unwrap(), r);
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        let err = |s: &str| format!("{:#}", Range::parse(s).unwrap_err());
        assert!(err("1:0:5").contains("reversed"), "{}", err("1:0:5"));
        assert!(err("0:1:0").contains("empty"));
        assert!(err("1:1:5").contains("empty"));
        assert!(err("0:1").contains("START:STOP:COUNT"));
        assert!(err("a:1:3").contains("not a number"));
        assert!(err("0:1:1").contains("one point"));
        assert!(err("0:inf:3").contains("finite"));
    }

    #[test]
    fn grid_points_are_row_major() {
        let mut c = LandscapeConfig::new(Task::Rte, Path::new("."), 2);
        c.alpha = Range::parse("0:1:3").unwrap();
        c.beta = Some(Range::parse("-1:1:2").unwrap());
        let p = c.points();
        assert_eq!(p.len(), 6);
        assert_eq!((p[3].index, p[3].alpha, p[3].beta), (3, 0.5, 1.0));
        assert_eq!((p[3].alpha_index, p[3].beta_index), (1, 1));
        let mut c1 = LandscapeConfig::new(Task::Rte, Path::new("."), 1);
        c1.alpha = Range::parse("0:1:3").unwrap();
        assert!(c1.points().iter().all(|p| p.beta == 0.0));
    }
}
