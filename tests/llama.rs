//! The LLaMA decoder on the real default decoder (SmolLM2-135M-Instruct, Q4_1 GGUF): logits of
//! every position against transformers (fixture made by tests/fixtures/make_smollm2_logits.py)
//! and against candle-transformers' quantized llama run on the same GGUF with every tensor
//! dequantized to f32; KV-cache decoding against the full forward.

mod common;

use std::io::Cursor;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, IndexOp, Tensor};
use sift_lab::hub::{self, DEFAULT_DECODER};
use sift_lab::model::decoder::{load_decoder, Decoder};
use sift_lab::model::llama::KvCache;
use sift_lab::model::Mode;

fn decoder() -> Decoder {
    load_decoder(DEFAULT_DECODER, &Device::Cpu).unwrap_or_else(|e| {
        panic!("{e:#}\n(the tests need the default decoder: run scripts/setup-model.sh)")
    })
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_logits.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// transformers (`gguf_file=`, f32) vs sift-lab on the same dequantized GGUF: the tokenizer's
/// ids, the 20 largest last-position logits, and at every position the argmax and the logits
/// of a fixed set of ids, all within 1e-3.
#[test]
fn logits_match_transformers_fixture() {
    let decoder = decoder();
    let model = decoder.build().unwrap();
    let fixture = fixture();
    let probes = u32s(&fixture["probe_ids"]);
    let mut worst = 0f32;
    for prompt in fixture["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let ids = u32s(&prompt["ids"]);
        assert_eq!(decoder.encode(text).unwrap(), ids, "token ids of {text:?}");
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .forward(&input, Mode::Inference)
            .unwrap()
            .i(0)
            .unwrap();
        let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        assert_eq!(rows.len(), ids.len());
        let last = rows.last().unwrap();
        for (id, want) in u32s(&prompt["last_top_ids"])
            .iter()
            .zip(f32s(&prompt["last_top_logits"]))
        {
            worst = worst.max((last[*id as usize] - want).abs());
        }
        for (pos, row) in rows.iter().enumerate() {
            let want = f32s(&prompt["probe_logits"][pos]);
            for (id, w) in probes.iter().zip(want) {
                worst = worst.max((row[*id as usize] - w).abs());
            }
            let argmax = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(
                argmax as u64,
                prompt["argmax"][pos].as_u64().unwrap(),
                "argmax at position {pos} of {text:?}"
            );
        }
    }
    eprintln!("max |logit difference| against transformers: {worst:.2e}");
    assert!(worst < 1e-3, "max |logit difference| {worst}");
}

/// The GGUF with every tensor dequantized to f32, written back as GGUF in memory, so that
/// candle-transformers' quantized llama runs the same numbers through its own code (llama.cpp's
/// interleaved rotary on the permuted q/k rows; ours unpermutes them).
fn candle_transformers_reference() -> candle_transformers::models::quantized_llama::ModelWeights {
    let snapshot = hub::cached_snapshot(DEFAULT_DECODER, false).unwrap();
    let path = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .unwrap();
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut file, name, &device).unwrap();
        let f32 = q.dequantize(&device).unwrap();
        tensors.push((
            name.clone(),
            QTensor::quantize(&f32, GgmlDType::F32).unwrap(),
        ));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensor_refs).unwrap();
    bytes.set_position(0);
    let content = gguf_file::Content::read(&mut bytes).unwrap();
    candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content, &mut bytes, &device,
    )
    .unwrap()
}

#[test]
fn last_logits_match_candle_transformers_quantized_llama() {
    let decoder = decoder();
    let model = decoder.build().unwrap();
    let mut reference = candle_transformers_reference();
    let mut worst = 0f32;
    for text in [
        "The capital of France is",
        "Below is an instruction that describes a task.\n\n### Instruction:\nAdd 17 and 25.\n\n### Response:\n",
    ] {
        let ids = decoder.encode(text).unwrap();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ours: Vec<f32> = model
            .forward(&input, Mode::Inference)
            .unwrap()
            .i((0, ids.len() - 1))
            .unwrap()
            .to_vec1()
            .unwrap();
        reference.clear_kv_cache();
        let theirs: Vec<f32> = reference
            .forward(&input, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("max |logit difference| against candle-transformers: {worst:.2e}");
    assert!(worst < 1e-3, "max |logit difference| {worst}");
}

/// Decoding with the KV cache (a prompt, then one token at a time) gives the logits the full
/// forward gives at each position; so does a batch right-padded with other tokens.
#[test]
fn kv_cache_and_padding_leave_logits_unchanged() {
    let decoder = decoder();
    let model = decoder.build().unwrap();
    let ids = decoder
        .encode("def add(a, b):\n    return a + b\n\nprint(add(2, 3))")
        .unwrap();
    let n = ids.len();
    let full = model
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            Mode::Inference,
        )
        .unwrap()
        .i(0)
        .unwrap();
    let mut cache = KvCache::default();
    let prompt = 5;
    let mut pieces = vec![model
        .forward_cached(
            &Tensor::new(&ids[..prompt], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            &mut cache,
        )
        .unwrap()
        .i(0)
        .unwrap()];
    for &id in &ids[prompt..] {
        pieces.push(
            model
                .forward_cached(&Tensor::new(&[[id]], &Device::Cpu).unwrap(), &mut cache)
                .unwrap()
                .i(0)
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), n);
    let cached = Tensor::cat(&pieces, 0).unwrap();
    let diff = common::max_abs_diff(&cached, &full);
    assert!(diff < 1e-3, "KV-cache logits differ by {diff}");

    // Right padding: the first n positions of a padded row equal the unpadded row.
    let mut padded = ids.clone();
    padded.extend([2u32, 2, 2, 17]);
    let batch = Tensor::new(vec![padded.clone(), padded], &Device::Cpu).unwrap();
    let out = model.forward(&batch, Mode::Inference).unwrap();
    let diff = (out.i((1, 0..n)).unwrap() - &full)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "padded logits differ by {diff}");
}

/// The training-mode forward (candle ops autograd differentiates) equals the inference one.
#[test]
fn training_forward_equals_inference_forward() {
    let decoder = decoder();
    let model = decoder.build().unwrap();
    let ids = decoder.encode("Name three primary colors.").unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = model.forward(&input, Mode::Inference).unwrap();
    let b = model.forward(&input, Mode::Training).unwrap();
    let diff = common::max_abs_diff(&a, &b);
    assert!(diff < 1e-3, "modes differ by {diff}");
}

/// `eval --mmlu` on a hand-made subject in both layouts: the same predictions, one row per
/// question in the Parquet file, and the accuracy as the share of correct rows.
#[test]
fn mmlu_cli_reads_both_layouts() {
    let dir = common::temp_dir("mmlu");
    let original = dir.path().join("orig");
    let indexed = dir.path().join("indexed");
    std::fs::create_dir_all(&original).unwrap();
    std::fs::create_dir_all(&indexed).unwrap();
    std::fs::write(
        original.join("geography_test.csv"),
        "What is the capital of France?,Berlin,Paris,Rome,Madrid,B\n\"Which ocean is the largest?\",Atlantic,Indian,Arctic,Pacific,D\n",
    )
    .unwrap();
    std::fs::write(
        indexed.join("geography_test.csv"),
        "question,choice0,choice1,choice2,choice3,answer\nWhat is the capital of France?,Berlin,Paris,Rome,Madrid,1\n\"Which ocean is the largest?\",Atlantic,Indian,Arctic,Pacific,3\n",
    )
    .unwrap();
    let mut reports = Vec::new();
    for folder in [&original, &indexed] {
        let parquet = folder.join("preds.parquet");
        let out = common::run_ok(common::sift_lab().args([
            "--threads",
            "2",
            "eval",
            "--mmlu",
            folder.to_str().unwrap(),
            "--predictions",
            parquet.to_str().unwrap(),
            "--json",
        ]));
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let frame = sift_lab::output::read_parquet(&parquet).unwrap();
        assert_eq!(frame.height(), 2);
        let answers = sift_lab::output::column::strings(&frame, "answer").unwrap();
        let preds = sift_lab::output::column::strings(&frame, "prediction").unwrap();
        assert_eq!(answers, ["B", "D"]);
        let share = answers.iter().zip(&preds).filter(|(a, p)| a == p).count() as f64 / 2.0;
        assert_eq!(report["accuracy"].as_f64().unwrap(), share);
        assert_eq!(report["subjects"][0]["subject"], "geography");
        reports.push(preds);
    }
    assert_eq!(reports[0], reports[1]);
}

/// `train --instructions` with full fine-tuning on 8 records for 2 epochs at a high rate: the
/// training loss falls (the same 8 records twice), and the files are written.
#[test]
fn instruction_tuning_cli_lowers_the_training_loss() {
    let dir = common::temp_dir("lm-train");
    let out = dir.path().join("run");
    let alpaca = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/alpaca/alpaca_data_1k.json"
    );
    let text = common::run_ok(common::sift_lab().args([
        "--threads",
        "2",
        "train",
        "--instructions",
        alpaca,
        "--method",
        "sift",
        "--modules",
        "q,v,down",
        "--rate",
        "0.05",
        "--lr",
        "1e-3",
        "--warmup-ratio",
        "0",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "64",
        "--train-limit",
        "8",
        "--eval-limit",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]));
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let epochs = summary["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    let first = epochs[0]["train_loss"].as_f64().unwrap();
    let second = epochs[1]["train_loss"].as_f64().unwrap();
    assert!(second < first, "training loss {first} → {second}");
    // 30 layers × (⌊0.05·576²⌋ + ⌊0.05·192·576⌋ + ⌊0.05·576·1536⌋).
    assert_eq!(summary["trainable_params"], 30 * (16588 + 5529 + 44236));
    for file in ["metrics.parquet", "summary.json", "delta.safetensors"] {
        assert!(out.join(file).is_file(), "{file}");
    }
}

/// A transformers checkpoint written by `save_transformers` loads back (config.json,
/// safetensors, tokenizer.json) to the same token ids and the same logits as the GGUF.
#[test]
fn transformers_export_round_trips() {
    let decoder = decoder();
    let dir = common::temp_dir("llama-export");
    let out = dir.path().join("hf");
    sift_lab::model::decoder::save_transformers(
        &out,
        &decoder.config,
        &decoder.weights,
        &decoder.tokenizer,
    )
    .unwrap();
    let reloaded = load_decoder(out.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(reloaded.config, decoder.config);
    let text = "Give three tips for staying healthy. 1. Eat 5 fruits";
    let ids = decoder.encode(text).unwrap();
    assert_eq!(reloaded.encode(text).unwrap(), ids);
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = decoder
        .build()
        .unwrap()
        .forward(&input, Mode::Inference)
        .unwrap();
    let b = reloaded
        .build()
        .unwrap()
        .forward(&input, Mode::Inference)
        .unwrap();
    let diff = common::max_abs_diff(&a, &b);
    assert_eq!(diff, 0.0);
    // Refuses to overwrite.
    let err = sift_lab::model::decoder::save_transformers(
        &out,
        &decoder.config,
        &decoder.weights,
        &decoder.tokenizer,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("already holds"));
}

/// Greedy generation with the KV cache gives the tokens that taking the argmax of a full
/// forward pass over everything so far gives, one token at a time.
#[test]
fn greedy_generation_with_the_cache_equals_recomputation() {
    use sift_lab::generate::{generate, Decoding};
    let decoder = decoder();
    let model = decoder.build().unwrap();
    let prompt = decoder.encode("def is_even(n):\n").unwrap();
    let generated = generate(&model, &prompt, 8, None, Decoding::Greedy, |_| false).unwrap();
    assert_eq!(generated.len(), 8);
    let mut ids = prompt.clone();
    for _ in 0..8 {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let row: Vec<f32> = model
            .forward(&input, Mode::Inference)
            .unwrap()
            .i((0, ids.len() - 1))
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        ids.push(next);
    }
    assert_eq!(generated, ids[prompt.len()..]);
    // Sampling is seeded: the same seed, the same tokens.
    let sample = |seed| {
        let decoding = Decoding::Sample {
            temperature: 0.8,
            top_p: 0.95,
            seed,
        };
        generate(&model, &prompt, 6, None, decoding, |_| false).unwrap()
    };
    assert_eq!(sample(1), sample(1));
}
