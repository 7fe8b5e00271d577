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
    fn a_config_without_a_command_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[args]\ntask = \"rte\"\n").unwrap();
        let err = command_line(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("command"), "{err}");
    }
}
