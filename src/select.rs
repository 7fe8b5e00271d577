//! Tensor-name selection, in one place: glob patterns over tensor names (`--tensors`,
//! `--trainable`) and the module sets of `--modules`. Which tensors form the task head is the
//! architecture's business (`model::weights::{is_head, head_names}`).
//! Every command that picks tensors by name goes through here, so a pattern means the same
//! thing everywhere.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

use crate::model::config::EncoderConfig;
use crate::model::weights::{expected_shapes, is_head};

/// Whether `name` matches the glob `pattern` (`*`: any run of characters, dots included;
/// `?`: exactly one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has swallowed so far.
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The names of `candidates` (kept in their order) matched by any of the comma-separated globs
/// in `patterns`. An empty pattern list, or a glob that matches nothing, is an error that names
/// `flag` and lists what exists.
pub fn select_tensors(candidates: &[String], patterns: &str, flag: &str) -> Result<Vec<String>> {
    let globs: Vec<&str> = patterns
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    if globs.is_empty() {
        bail!(
            "{flag} is empty; give comma-separated globs ('*' any characters, '?' one) over: {}",
            compact_names(candidates)
        );
    }
    for glob in &globs {
        if !candidates.iter().any(|n| glob_match(glob, n)) {
            bail!(
                "{flag} '{glob}' matches no tensor it can select ('*' matches any characters, '?' \
                 one, commas separate patterns). Tensors: {}",
                compact_names(candidates)
            );
        }
    }
    Ok(candidates
        .iter()
        .filter(|n| globs.iter().any(|g| glob_match(g, n)))
        .cloned()
        .collect())
}

/// The names with the layer number folded into `{L}` and the layer range stated once: a short,
/// readable list of what a model has, for error messages.
pub fn compact_names(names: &[String]) -> String {
    let mut layers: BTreeSet<usize> = BTreeSet::new();
    let mut folded: Vec<String> = Vec::new();
    for name in names {
        let parts: Vec<&str> = name.split('.').collect();
        let generic: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| match part.parse::<usize>() {
                Ok(layer) if i > 0 && parts[i - 1] == "layer" => {
                    layers.insert(layer);
                    "{L}".to_string()
                }
                _ => part.to_string(),
            })
            .collect();
        let generic = generic.join(".");
        if !folded.contains(&generic) {
            folded.push(generic);
        }
    }
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) => format!("{} (L = {a}..{b})", folded.join(", ")),
        _ => folded.join(", "),
    }
}

/// The module sets `--modules` accepts (comma-separated, combinable).
pub const MODULE_SETS: &str = "q, k, v, o (attention query/key/value/output weights), attention (q,k,v,o weights and biases), ffn (feed-forward weights), all (every encoder tensor)";

/// The encoder tensors a `--modules` spec targets, in architecture order; never the head.
pub fn target_names(spec: &str, config: &EncoderConfig) -> Result<Vec<String>> {
    let encoder: Vec<String> = expected_shapes(config, 1)?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !is_head(name))
        .collect();
    let mut wanted: Vec<&str> = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let suffixes: &[&str] = match token {
            "q" => &["attention.self.query.weight"],
            "k" => &["attention.self.key.weight"],
            "v" => &["attention.self.value.weight"],
            "o" => &["attention.output.dense.weight"],
            "attention" | "attn" => &[
                "attention.self.query.weight",
                "attention.self.query.bias",
                "attention.self.key.weight",
                "attention.self.key.bias",
                "attention.self.value.weight",
                "attention.self.value.bias",
                "attention.output.dense.weight",
                "attention.output.dense.bias",
            ],
            "ffn" => &["intermediate.dense.weight", "output.dense.weight"],
            "all" => &[""],
            other => bail!("--modules: unknown module {other:?}; use {MODULE_SETS}"),
        };
        wanted.extend_from_slice(suffixes);
    }
    if wanted.is_empty() {
        bail!("--modules is empty; use {MODULE_SETS}");
    }
    // "output.dense.weight" (the FFN output) must not also match "attention.output.dense.weight".
    let matches = |name: &str, suffix: &str| {
        suffix.is_empty()
            || (name.ends_with(suffix)
                && (suffix != "output.dense.weight"
                    || !name.ends_with("attention.output.dense.weight")))
    };
    Ok(encoder
        .into_iter()
        .filter(|name| wanted.iter().any(|suffix| matches(name, suffix)))
        .collect())
}

/// The module sets `--modules` accepts for a LLaMA-architecture decoder (comma-separated).
pub const DECODER_MODULE_SETS: &str = "q, k, v, o (attention projections), gate, up, down (SwiGLU projections), attention (q,k,v,o), mlp (gate,up,down), all (every tensor, embeddings and norms included)";

/// The tensors of a decoder (transformers' `LlamaForCausalLM` names, given in architecture
/// order) that a `--modules` spec targets, in that order.
pub fn decoder_target_names(spec: &str, names: &[String]) -> Result<Vec<String>> {
    let mut wanted: Vec<&str> = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let suffixes: &[&str] = match token {
            "q" => &["self_attn.q_proj.weight"],
            "k" => &["self_attn.k_proj.weight"],
            "v" => &["self_attn.v_proj.weight"],
            "o" => &["self_attn.o_proj.weight"],
            "gate" => &["mlp.gate_proj.weight"],
            "up" => &["mlp.up_proj.weight"],
            "down" => &["mlp.down_proj.weight"],
            "attention" | "attn" => &[
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
            ],
            "mlp" | "ffn" => &[
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ],
            "all" => &[""],
            other => bail!("--modules: unknown module {other:?}; use {DECODER_MODULE_SETS}"),
        };
        wanted.extend_from_slice(suffixes);
    }
    if wanted.is_empty() {
        bail!("--modules is empty; use {DECODER_MODULE_SETS}");
    }
    Ok(names
        .iter()
        .filter(|name| wanted.iter().any(|suffix| name.ends_with(suffix)))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_config() -> EncoderConfig {
        serde_json::from_str(r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512}"#).unwrap()
    }

    #[test]
    fn globs_match_star_and_question_mark() {
        assert!(glob_match(
            "encoder.layer.*.attention.self.value.weight",
            "encoder.layer.3.attention.self.value.weight"
        ));
        assert!(!glob_match(
            "encoder.layer.*.attention.self.value.weight",
            "encoder.layer.3.attention.self.value.bias"
        ));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbc"));
        assert!(!glob_match("a*b*c", "aXbYc_"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match(
            "encoder.layer.?.output.*",
            "encoder.layer.5.output.dense.bias"
        ));
        assert!(!glob_match(
            "encoder.layer.?.output.*",
            "encoder.layer.15.output.dense.bias"
        ));
        assert!(glob_match("l??", "lay") && !glob_match("l??", "la"));
    }

    #[test]
    fn selection_keeps_candidate_order_and_names_the_flag_on_no_match() {
        let names: Vec<String> = [
            "b.weight",
            "a.weight",
            "a.bias",
            "encoder.layer.0.x",
            "encoder.layer.1.x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            select_tensors(&names, "a.*, b.weight", "--tensors").unwrap(),
            vec!["b.weight", "a.weight", "a.bias"]
        );
        assert_eq!(
            select_tensors(&names, "encoder.layer.?.x", "--tensors").unwrap(),
            vec!["encoder.layer.0.x", "encoder.layer.1.x"]
        );
        let err = select_tensors(&names, "c.*", "--trainable")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--trainable 'c.*' matches no tensor"),
            "{err}"
        );
        assert!(err.contains("encoder.layer.{L}.x (L = 0..1)"), "{err}");
        assert!(select_tensors(&names, " , ", "--tensors").is_err());
    }

    #[test]
    fn module_sets_pick_the_right_tensors() {
        let c = minilm_config();
        let names = |spec| target_names(spec, &c).unwrap();
        assert_eq!(
            names("q"),
            (0..6)
                .map(|l| format!("encoder.layer.{l}.attention.self.query.weight"))
                .collect::<Vec<_>>()
        );
        assert_eq!(names("q,k,v,o").len(), 24);
        assert_eq!(names("attention").len(), 48);
        let ffn = names("ffn");
        assert_eq!(ffn.len(), 12);
        assert!(ffn.iter().all(|n| !n.contains("attention")), "{ffn:?}");
        // Every encoder tensor: 5 embedding tensors + 16 per layer; never the head.
        assert_eq!(names("all").len(), 5 + 6 * 16);
        assert!(names("all").iter().all(|n| !is_head(n)));
        let err = target_names("q,x", &c).unwrap_err().to_string();
        assert!(err.contains("--modules") && err.contains("\"x\""), "{err}");
        assert_eq!(
            crate::model::weights::head_names(&c, 2).unwrap(),
            vec![
                "pooler.dense.weight",
                "pooler.dense.bias",
                "classifier.weight",
                "classifier.bias"
            ]
        );
    }
}
