//! `analyses/*.toml`: one file per paper figure or table, naming a subcommand and its flags.
//!
//! ```toml
//! # Paper Fig. 2 (1-D): loss between θ0 and θ1 on RTE
//! command = "landscape"
//! [args]
//! task = "rte"
//! dims = 1
//! yes = true        # a bare flag
//! ```
//! becomes `sift-lab landscape --task rte --dims 1 --yes`, parsed by the same CLI as typed flags,
//! so a config can hold exactly what the command line can and nothing else.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The command line (without the program name) that a config file stands for.
pub fn command_line(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let command = doc
        .get("command")
        .and_then(|c| c.as_str())
        .with_context(|| {
            if doc.contains_key("item") {
                format!(
                    "{}: an ablation grid config; run it with `sift-lab ablate {} --preset quick|cpu|paper --out DIR`",
                    path.display(),
                    path.display()
                )
            } else {
                format!(
                    "{}: no `command = \"...\"` line naming the subcommand",
                    path.display()
                )
            }
        })?;
    let mut line = vec![command.to_string()];
    if let Some(args) = doc.get("args") {
        let args = args
            .as_table()
            .with_context(|| format!("{}: [args] must be a table", path.display()))?;
        for (key, value) in args {
            let flag = format!("--{}", key.replace('_', "-"));
            match value {
                toml::Value::Boolean(true) => line.push(flag),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => line.extend([flag, s.clone()]),
                toml::Value::Integer(i) => line.extend([flag, i.to_string()]),
                toml::Value::Float(f) => line.extend([flag, f.to_string()]),
                toml::Value::Array(items) => {
                    // A list becomes one comma-separated value (e.g. modules = ["q", "k"]).
                    let parts: Vec<String> = items
                        .iter()
                        .map(|v| match v {
                            toml::Value::String(s) => Ok(s.clone()),
                            toml::Value::Integer(_) | toml::Value::Float(_) => Ok(v.to_string()),
                            _ => bail!(
                                "{}: [args] {key}: list items must be strings or numbers",
                                path.display()
                            ),
                        })
                        .collect::<Result<_>>()?;
                    line.extend([flag, parts.join(",")]);
                }
                _ => bail!(
                    "{}: [args] {key}: use a string, number, boolean or list",
                    path.display()
                ),
            }
        }
    }
    for key in doc.keys() {
        if key != "command" && key != "args" {
            bail!(
                "{}: unknown key `{key}` (a config has `command` and an [args] table)",
                path.display()
            );
        }
    }
    Ok(line)
}

/// Where an `[args]` key sits in a config: the flag it becomes, its 1-based line, the line's text.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagLine {
    pub flag: String,
    pub line: usize,
    pub text: String,
}

/// Every `[args]` key of the config with its line: errors about a flag can then name the line
/// that set it.
pub fn flag_lines(path: &Path) -> Result<Vec<FlagLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut in_args = false;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            in_args = line.trim_start_matches('[').trim_end_matches(']').trim() == "args";
            continue;
        }
        if !in_args || line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if !key.is_empty() {
                lines.push(FlagLine {
                    flag: format!("--{}", key.replace('_', "-")),
                    line: i + 1,
                    text: line.to_string(),
                });
            }
        }
    }
    Ok(lines)
}

/// `error` with the config line that set the flag it names (the first one it mentions), so an
/// error from a config run points into the file, not only at a flag nobody typed.
pub fn locate_error(error: anyhow::Error, path: &Path, lines: &[FlagLine]) -> anyhow::Error {
    let text = format!("{error:#}");
    let mentions = |flag: &str| {
        text.match_indices(flag).map(|(at, _)| at).find(|&at| {
            // Whole flags only: --lr is not --lr-schedule.
            let next = text[at + flag.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    };
    let first = lines
        .iter()
        .filter_map(|l| mentions(&l.flag).map(|at| (at, l)))
        .min_by_key(|(at, _)| *at);
    match first {
        Some((_, l)) => error.context(format!(
            "{}, line {}: `{}` (flag {})",
            path.display(),
            l.line,
            l.text,
            l.flag
        )),
        None => error.context(format!("running {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_the_equivalent_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fig.toml");
        std::fs::write(&path, "command = \"landscape\"\n[args]\ntask = \"rte\"\ndims = 2\nalpha_range = \"-0.5:1.5:41\"\nyes = true\nresume = false\nrate = 0.01\nmodules = [\"q\", \"v\"]\n").unwrap();
        let line = command_line(&path).unwrap();
        // toml tables iterate in key order.
        assert_eq!(
            line,
            [
                "landscape",
                "--alpha-range",
                "-0.5:1.5:41",
                "--dims",
                "2",
                "--modules",
                "q,v",
                "--rate",
                "0.01",
                "--task",
                "rte",
                "--yes"
            ]
        );
    }

    #[test]
    fn an_error_about_a_flag_names_the_line_that_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "# a comment\ncommand = \"train\"\n[args]\ntask = \"rte\"\nlr = 0.1\nlr_scale = 2\nmax_len = 0\n",
        )
        .unwrap();
        let lines = flag_lines(&path).unwrap();
        let found: Vec<(&str, usize)> = lines.iter().map(|l| (l.flag.as_str(), l.line)).collect();
        assert_eq!(
            found,
            [
                ("--task", 4),
                ("--lr", 5),
                ("--lr-scale", 6),
                ("--max-len", 7)
            ]
        );
        let err = locate_error(
            anyhow::anyhow!("--max-len 0: must be at least 8"),
            &path,
            &lines,
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("run.toml, line 7: `max_len = 0` (flag --max-len)"),
            "{text}"
        );
        // --lr-scale is not --lr.
        let err = locate_error(anyhow::anyhow!("--lr-scale 2: no"), &path, &lines);
        assert!(format!("{err:#}").contains("line 6"), "{err:#}");
    }

    #[test]
    fn a_config_without_a_command_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[args]\ntask = \"rte\"\n").unwrap();
        let err = command_line(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("command"), "{err}");
    }
}
