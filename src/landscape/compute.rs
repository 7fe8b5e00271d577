//! Evaluating grid points and writing them as they finish. One writer thread (outside any rayon
//! pool) owns the rows and rewrites the shard file (atomically) after every finished point, so a
//! killed run loses at most the points in flight. Workers never hold a lock across rayon work: a
//! rayon thread waiting inside a lock can steal the next grid point and deadlock on that lock.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::config::{LandscapeConfig, Point};
use super::prepare::Prepared;
use super::rows::{write_rows, Row};
use super::RunOptions;
use crate::{metrics, progress};

/// What [`compute()`] leaves.
pub struct Computed {
    /// The rows found on disk followed by the new ones.
    pub rows: Vec<Row>,
    /// Points computed now.
    pub computed: usize,
    /// Ctrl-C stopped the run before every point was done.
    pub interrupted: bool,
}

/// Evaluates `todo` (with `options.jobs` points at once), appending each finished row to `rows`
/// and rewriting `path` after each one.
pub fn compute(
    prepared: &Prepared,
    todo: &[Point],
    rows: Vec<Row>,
    path: &Path,
    options: &RunOptions,
) -> Result<Computed> {
    let config: &LandscapeConfig = &prepared.config;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    progress::interrupted(); // installs the Ctrl-C handler
    let bar = if options.progress {
        progress::bar(todo.len() as u64, "points")
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!(
        "landscape {} {}-D{}",
        config.task,
        config.dims,
        if options.shard.is_whole() {
            String::new()
        } else {
            format!(" shard {}", options.shard)
        }
    ));
    let shard = options.shard;
    let bar_ref = &bar;
    // Without a terminal (a batch job's log) the bar is hidden: print one line per point.
    let log_lines = options.progress && !std::io::stderr().is_terminal();
    let (total, started) = (todo.len(), Instant::now());
    let metric_name = metrics::primary_metric(config.task);
    let (result, written) = std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Row>();
        let writer = scope.spawn(move || -> Result<(Vec<Row>, usize)> {
            let mut rows = rows;
            let mut n = 0;
            for row in rx {
                rows.push(row);
                n += 1;
                write_rows(path, config, shard, &rows)?;
                bar_ref.inc(1);
                if log_lines {
                    let r = rows.last().unwrap();
                    let per = started.elapsed().as_secs_f64() / n as f64;
                    eprintln!(
                        "[{n}/{total}] point {} α = {:.4} β = {:.4}: loss {:.5}, {metric_name} {:.4} \
                         ({:.1} s; ETA {:.0} min)",
                        r.point,
                        r.alpha,
                        r.beta,
                        r.loss,
                        r.metric,
                        r.seconds,
                        per * (total - n) as f64 / 60.0
                    );
                }
            }
            Ok((rows, n))
        });
        let result = {
            let tx = tx;
            let work = |point: &Point| -> Result<()> {
                if progress::interrupted() {
                    return Ok(());
                }
                let row = prepared.evaluate(point)?;
                tx.send(row)
                    .map_err(|_| anyhow::anyhow!("the writer of {} stopped", path.display()))
            };
            if options.jobs == 1 {
                todo.iter().try_for_each(work)
            } else {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(options.jobs)
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|pool| pool.install(|| todo.par_iter().try_for_each(work)))
            }
        }; // the sender drops here, so the writer finishes
        let written = writer.join().expect("the writer thread panicked");
        (result, written)
    });
    bar.finish_and_clear();
    let (rows, computed) = written?;
    result?;
    Ok(Computed {
        rows,
        computed,
        interrupted: progress::interrupted(),
    })
}
