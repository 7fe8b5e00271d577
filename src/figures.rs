//! `sift-lab figures`: every figure and table redrawn from the Parquet files under `results/`,
//! with no model computation, and `figures/README.md` saying what produced each one.
//!
//! Each subfolder of `results/` is recognised by what it holds: `results.parquet` with an
//! ablation config (an `ablate` grid: table.md, Fig. 6), `hist.parquet` (grad-stats: Fig. 3, 4)
//! `landscape.parquet` (Fig. 2) or `sharpness.parquet` (Hessian sharpness along θ0 → θ1). Its figures go to `OUT/<subfolder>/`. Drawing the same files
//! twice gives the same bytes: nothing depends on the clock or on the order of a directory
//! listing. A `NOTES.md` beside a result is copied into the README under it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ablate;
use crate::grad_stats;
use crate::landscape;
use crate::output;
use crate::sharpness;

#[derive(Debug, Clone)]
pub struct FiguresConfig {
    pub results: PathBuf,
    pub out: PathBuf,
    /// The analyses folder: its configs name the results they write (`out = "results/X"`).
    pub analyses: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct FiguresReport {
    pub written: Vec<PathBuf>,
}

/// What kind of result a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ablate,
    GradStats,
    Landscape,
    Sharpness,
}

fn kind_of(dir: &Path) -> Option<Kind> {
    if dir.join("results.parquet").is_file() {
        Some(Kind::Ablate)
    } else if dir.join(grad_stats::HIST_FILE).is_file() {
        Some(Kind::GradStats)
    } else if dir.join("landscape.parquet").is_file() {
        Some(Kind::Landscape)
    } else if dir.join(sharpness::RESULT_FILE).is_file() {
        Some(Kind::Sharpness)
    } else {
        None
    }
}

/// One README entry.
struct Entry {
    name: String,
    item: String,
    files: Vec<PathBuf>,
    command: String,
    preset: String,
    model: String,
    data: String,
    revision: String,
    compute: String,
    table: Option<String>,
    notes: Option<String>,
}

pub fn run(config: &FiguresConfig) -> Result<FiguresReport> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&config.results)
        .with_context(|| format!("reading --results {}", config.results.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut entries = Vec::new();
    let mut written = Vec::new();
    for dir in dirs {
        let Some(kind) = kind_of(&dir) else { continue };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = config.out.join(&name);
        let entry = match kind {
            Kind::Ablate => {
                let file = ablate::results::read(&dir.join("results.parquet"))?;
                let files = ablate::draw(
                    &file.config,
                    &file.rows,
                    file.provenance.grid_cells,
                    &target,
                )?;
                let seconds: f64 = file.rows.iter().map(|r| r.wall_seconds).sum();
                let c = &file.config;
                Entry {
                    name: name.clone(),
                    item: format!("{:?}: {}", c.item, c.title),
                    command: trim_program(&file.provenance.command),
                    preset: c.preset.clone(),
                    model: c
                        .train
                        .model
                        .clone()
                        .unwrap_or_else(|| crate::hub::DEFAULT_MODEL.into()),
                    data: data_text(c),
                    revision: file.provenance.git_revision.clone(),
                    compute: format!(
                        "{} over {} of the grid's {} cells (sum of cell wall times)",
                        duration(seconds),
                        file.rows.len(),
                        file.provenance.grid_cells
                    ),
                    table: Some(std::fs::read_to_string(&files[0])?),
                    files,
                    notes: None,
                }
            }
            Kind::GradStats => {
                let files = grad_stats::draw_figures(&dir, &target)?;
                let summary = grad_stats::read_summary(&dir.join(grad_stats::HIST_FILE))?;
                let c = &summary.config;
                Entry {
                    name: name.clone(),
                    item: "Fig. 3 (gradient quasi-sparsity), Fig. 4 (mask overlap)".into(),
                    command: analysis_command(&config.analyses, &name),
                    preset: "–".into(),
                    model: c.model.clone(),
                    data: format!(
                        "{} train, {} batches of {}, max_len {}",
                        c.task.name(),
                        c.batches,
                        c.batch_size,
                        c.max_len
                    ),
                    revision: committed_in(&dir),
                    compute: duration(summary.seconds),
                    table: None,
                    files,
                    notes: None,
                }
            }
            Kind::Landscape => {
                // Drawn from the rows alone (plot_only would also rewrite the run's summary.json).
                let file = landscape::rows::read_file(&dir.join("landscape.parquet"))?;
                let mut files = landscape::draw_all(&file.config, &file.rows, &target)?;
                if dir.join(landscape::trajectory::TABLE_FILE).is_file() {
                    let placed = landscape::trajectory::read(&dir)?;
                    files.extend(landscape::trajectory::draw(
                        &file.config,
                        &file.rows,
                        &placed,
                        &target,
                    )?);
                }
                let c = &file.config;
                let seconds: f64 = file.rows.iter().map(|r| r.seconds).sum();
                Entry {
                    name: name.clone(),
                    item: "Fig. 2 (loss landscape)".into(),
                    command: analysis_command(&config.analyses, &name),
                    preset: "–".into(),
                    model: c.model.clone(),
                    data: format!(
                        "{} {}, first {} examples",
                        c.task.name(),
                        c.split.name(),
                        c.eval_examples
                    ),
                    revision: committed_in(&dir),
                    compute: format!("{} (sum over points)", duration(seconds)),
                    table: None,
                    files,
                    notes: None,
                }
            }
            Kind::Sharpness => {
                let (c, rows) = sharpness::read_file(&dir.join(sharpness::RESULT_FILE))?;
                let files = sharpness::figures::draw_all(&c, &rows, &target)?;
                let seconds: f64 = rows.iter().map(|r| r.seconds).sum();
                Entry {
                    name: name.clone(),
                    item:
                        "Sharpness (beyond the paper): λ_max and trace of the Hessian along θ0 → θ1"
                            .into(),
                    command: analysis_command(&config.analyses, &name),
                    preset: "–".into(),
                    model: c.model.clone(),
                    data: format!(
                        "{} {}, first {} examples, max_len {}",
                        c.task.name(),
                        c.split.name(),
                        c.eval_examples,
                        c.max_len
                    ),
                    revision: committed_in(&dir),
                    compute: format!("{} (sum over cells)", duration(seconds)),
                    table: None,
                    files,
                    notes: None,
                }
            }
        };
        let notes = std::fs::read_to_string(dir.join("NOTES.md")).ok();
        written.extend(entry.files.iter().cloned());
        entries.push(Entry { notes, ..entry });
    }
    let readme = config.out.join("README.md");
    output::write_atomic(&readme, render(config, &entries).as_bytes())?;
    written.push(readme);
    Ok(FiguresReport { written })
}

fn data_text(c: &ablate::AblateConfig) -> String {
    let mut parts = vec![format!(
        "{}; train limit {}, dev limit {}, max_len {}, {} epoch(s), batch {}",
        c.axes
            .tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        c.train
            .train_limit
            .map_or("none".to_string(), |n| n.to_string()),
        c.train
            .eval_limit
            .map_or("none".to_string(), |n| n.to_string()),
        c.train.max_len.unwrap_or(128),
        c.train.epochs.unwrap_or(3),
        c.train.batch_size.unwrap_or(32)
    )];
    for (task, s) in &c.per_task {
        if let Some(n) = s.train_limit {
            parts.push(format!("{}: train limit {n}", task.name()));
        }
    }
    parts.join("; ")
}

/// The command line without the program's path.
/// Shows the program as `sift-lab` whatever path or copy it ran from (e.g. a grid run from
/// `/work/bin/sift-lab-grid3` so that rebuilding the checkout does not swap its binary).
fn trim_program(command: &str) -> String {
    match command.split_once(' ') {
        Some((program, rest)) if is_sift_lab(program) => format!("sift-lab {rest}"),
        _ => command.to_string(),
    }
}

fn is_sift_lab(program: &str) -> bool {
    Path::new(program)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("sift-lab"))
}

/// `sift-lab run analyses/X.toml` for the config whose `out` is `results/<name>`.
fn analysis_command(analyses: &Path, name: &str) -> String {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(analyses)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    configs.sort();
    let wanted = format!("out = \"results/{name}\"");
    for path in configs {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if text.lines().any(|l| l.trim() == wanted) {
                return format!(
                    "sift-lab run analyses/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                );
            }
        }
    }
    "not recorded (no config in analyses/ writes it)".into()
}

/// The commit that last changed `dir`, for results whose files do not record the revision that
/// computed them.
fn committed_in(dir: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["log", "-1", "--format=%h"])
        .arg("--")
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => format!(
            "not recorded in the files; committed in {}",
            String::from_utf8_lossy(&o.stdout).trim()
        ),
        _ => "not recorded".into(),
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else if seconds >= 60.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.1} s")
    }
}

fn render(config: &FiguresConfig, entries: &[Entry]) -> String {
    let mut out = String::new();
    out.push_str("# Figures and tables\n\n");
    out.push_str(&format!(
        "Written by `sift-lab figures --results {} --out {}` from the Parquet files alone (no \
         model computation; the same files give the same bytes). Each section names what \
         produced its results.\n\n",
        config.results.display(),
        config.out.display()
    ));
    for e in entries {
        out.push_str(&format!("## {}\n\n", e.name));
        out.push_str(&format!("- Paper item: {}\n", e.item));
        out.push_str(&format!("- Command: `{}`\n", e.command));
        out.push_str(&format!("- Preset: {}\n", e.preset));
        out.push_str(&format!("- Model: {}\n", e.model));
        out.push_str(&format!("- Data: {}\n", e.data));
        out.push_str(&format!("- Git revision: {}\n", e.revision));
        out.push_str(&format!("- Compute: {}\n\n", e.compute));
        for f in &e.files {
            let rel = f.strip_prefix(&config.out).unwrap_or(f);
            if rel.extension().is_some_and(|x| x == "png") {
                out.push_str(&format!("![{}]({})\n\n", e.name, rel.display()));
            }
        }
        if let Some(t) = &e.table {
            // The table's own heading becomes a subsection.
            out.push_str(&t.replacen("# ", "### ", 1).replace("\n## ", "\n#### "));
            out.push('\n');
        }
        if let Some(n) = &e.notes {
            out.push_str(n.trim_end());
            out.push_str("\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::trim_program;

    #[test]
    fn a_command_shows_sift_lab_whatever_binary_ran_it() {
        assert_eq!(
            trim_program("/work/bin/sift-lab-grid3 ablate a.toml --out results/x"),
            "sift-lab ablate a.toml --out results/x"
        );
        assert_eq!(
            trim_program("target/release/sift-lab figures"),
            "sift-lab figures"
        );
        assert_eq!(trim_program("python3 make.py --x"), "python3 make.py --x");
        assert_eq!(
            trim_program("/usr/bin/not-sift-lab run"),
            "/usr/bin/not-sift-lab run"
        );
    }
}
