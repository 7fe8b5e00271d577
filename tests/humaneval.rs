//! HumanEval on the real release: the sandbox judges real problems' canonical solutions, wrong
//! completions, runaway loops, network access and memory hogs as it should; and
//! `eval --humaneval` with SmolLM2 writes its outputs, and an interrupted run resumed gives the
//! same samples as an uninterrupted one.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sift_lab::data::humaneval::{self, Problem};
use sift_lab::humaneval::execute::{self, Outcome};

fn problems() -> Vec<Problem> {
    humaneval::load(&humaneval::default_file().unwrap()).unwrap()
}

#[test]
fn canonical_solutions_pass_and_wrong_ones_fail_with_their_assertion() {
    let problems = problems();
    let timeout = Duration::from_secs(10);
    // has_close_elements; make_palindrome (the prompt defines a helper); add (hypothesis-free).
    for id in ["HumanEval/0", "HumanEval/10", "HumanEval/53"] {
        let p = problems.iter().find(|p| p.task_id == id).unwrap();
        let run = execute::check(p, &p.canonical_solution, timeout).unwrap();
        assert_eq!(run.outcome, Outcome::Passed, "{id}: {}", run.stderr);
        assert!(run.error.is_empty());
    }
    // Always False: the first assert (candidate(...) == True) fails.
    let p = &problems[0];
    let run = execute::check(p, "    return False\n", timeout).unwrap();
    assert_eq!(run.outcome, Outcome::Failed);
    assert_eq!(run.error, "AssertionError");
    assert!(run
        .stderr
        .contains("assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"));
    // A completion that does not parse fails with the interpreter's error.
    let run = execute::check(p, "    return (\n", timeout).unwrap();
    assert_eq!(run.outcome, Outcome::Failed);
    assert!(run.error.starts_with("SyntaxError"), "{}", run.error);
}

#[test]
fn a_runaway_loop_times_out_within_the_limit() {
    let p = &problems()[0];
    let started = Instant::now();
    let run = execute::check(p, "    while True:\n        pass\n", Duration::from_secs(1)).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(run.outcome, Outcome::TimedOut);
    assert!((1.0..3.0).contains(&elapsed), "took {elapsed} s");
    // A program that starts a child and loops: the whole group goes.
    let started = Instant::now();
    let program = "import subprocess\nsubprocess.Popen(['sleep', '30'])\nwhile True:\n    pass\n";
    let run = execute::run_program(program, Duration::from_secs(1)).unwrap();
    assert_eq!(run.outcome, Outcome::TimedOut);
    assert!(started.elapsed().as_secs_f64() < 3.0);
}

#[test]
fn memory_and_output_are_limited() {
    // 8 GiB is beyond the address-space limit.
    let run = execute::run_program("b = bytearray(8 << 30)\n", Duration::from_secs(10)).unwrap();
    assert_eq!(run.outcome, Outcome::Failed);
    assert_eq!(run.error, "MemoryError");
    // 200 kB of output: only the end is kept.
    let run = execute::run_program(
        "for i in range(20000):\n    print('line', i)\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(run.outcome, Outcome::Passed);
    assert!(run.stdout.len() < execute::KEPT_OUTPUT_BYTES + 100);
    assert!(run.stdout.starts_with("[... truncated]"));
    assert!(run.stdout.ends_with("line 19999\n"));
}

/// A completion that connects to a server this test listens on: reachable from an ordinary
/// python3 on this machine, not from the sandbox (its network namespace has no interface up).
#[test]
fn completions_cannot_reach_the_network() {
    let sandbox = execute::sandbox().unwrap();
    if !sandbox.network_isolated {
        eprintln!("unshare -rn does not work here: network isolation is off, nothing to test");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\ns.close()\n"
    );
    // The control: the same program outside the sandbox connects.
    let plain = Command::new(&sandbox.python)
        .args(["-I", "-c", &program])
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let p = &problems()[0];
    let completion = format!(
        "    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n    return True\n"
    );
    let run = execute::check(p, &completion, Duration::from_secs(10)).unwrap();
    assert_eq!(run.outcome, Outcome::Failed);
    assert!(
        run.error.contains("Network is unreachable") || run.error.contains("Errno"),
        "{}",
        run.error
    );
}

/// The chat prompt marks its turns with SmolLM2's special tokens, one id each.
#[test]
fn the_chat_prompt_uses_the_special_tokens() {
    let decoder = sift_lab::model::decoder::load_decoder(
        sift_lab::hub::DEFAULT_DECODER,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let p = &problems()[0];
    let text = sift_lab::humaneval::chat_prompt(&decoder, p).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"));
    let ids = decoder.encode(&text).unwrap();
    let start = decoder.tokenizer.token_to_id("<|im_start|>").unwrap();
    let end = decoder.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == start).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == end).count(), 2);
}

fn humaneval_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--threads",
        "2",
        "eval",
        "--humaneval",
        "--limit",
        "2",
        "--samples",
        "2",
        "--temperature",
        "0.8",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "--max-new-tokens",
        "16",
        "--timeout",
        "5",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The samples table without its timing columns, sorted as written.
fn samples_of(dir: &Path) -> Vec<Vec<String>> {
    let frame = sift_lab::output::read_parquet(&dir.join("samples.parquet")).unwrap();
    use sift_lab::output::column;
    let mut columns: Vec<Vec<String>> = ["task_id", "completion", "generation", "outcome", "error"]
        .iter()
        .map(|c| column::strings(&frame, c).unwrap())
        .collect();
    columns.push(
        column::u32s(&frame, "sample")
            .unwrap()
            .iter()
            .map(u32::to_string)
            .collect(),
    );
    columns.push(
        column::u32s(&frame, "tokens")
            .unwrap()
            .iter()
            .map(u32::to_string)
            .collect(),
    );
    (0..frame.height())
        .map(|i| columns.iter().map(|c| c[i].clone()).collect())
        .collect()
}

#[test]
fn eval_humaneval_writes_its_outputs_and_resumes_to_the_same_samples() {
    let dir = common::temp_dir("humaneval");
    let clean = dir.path().join("clean");
    let text = common::run_ok(common::sift_lab().args(humaneval_args(&clean, &[])));
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = samples_of(&clean);
    assert_eq!(rows.len(), 4);
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[5].as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("HumanEval/0", "0"),
            ("HumanEval/0", "1"),
            ("HumanEval/1", "0"),
            ("HumanEval/1", "1")
        ]
    );
    for r in &rows {
        let (completion, generation, tokens) = (&r[1], &r[2], r[6].parse::<u32>().unwrap());
        // The completion is the generation up to its first stop sequence.
        assert!(generation.starts_with(completion.as_str()));
        assert!(sift_lab::humaneval::STOP_SEQUENCES
            .iter()
            .all(|s| !completion.contains(s)));
        assert!((1..=16).contains(&tokens));
    }
    // Two samples at temperature 0.8 from different seeds: not both the same everywhere.
    assert!(rows[0][2] != rows[1][2] || rows[2][2] != rows[3][2]);
    // The summary's counts and pass@1 from the table itself.
    let passed = rows.iter().filter(|r| r[3] == "passed").count();
    assert_eq!(summary["samples"], 4);
    assert_eq!(summary["passed"].as_u64().unwrap() as usize, passed);
    assert_eq!(
        summary["pass_at_k"]["pass@1"].as_f64().unwrap(),
        passed as f64 / 4.0
    );
    assert_eq!(summary["status"], "completed");
    assert!(clean.join("summary.json").is_file());

    // Interrupted after its first sample, then resumed.
    let killed = dir.path().join("killed");
    let mut child = common::sift_lab()
        .args(humaneval_args(&killed, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let table = killed.join("samples.parquet");
    let started = Instant::now();
    while !table.exists() {
        assert!(started.elapsed().as_secs() < 300, "no samples written");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let partial = samples_of(&killed);
    assert!(
        !partial.is_empty() && partial.len() < 4,
        "{} samples before the interrupt",
        partial.len()
    );
    assert_eq!(partial[..], rows[..partial.len()]);
    // Other settings are refused, and so is a plain rerun.
    let err = common::run_err(
        common::sift_lab().args(humaneval_args(&killed, &["--resume", "--prompt", "chat"])),
    );
    assert!(
        err.contains("prompt: was \"completion\", now \"chat\"") && err.contains("--resume"),
        "{err}"
    );
    let err = common::run_err(common::sift_lab().args(humaneval_args(&killed, &[])));
    assert!(err.contains("--resume"), "{err}");
    let text = common::run_ok(common::sift_lab().args(humaneval_args(&killed, &["--resume"])));
    let resumed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(resumed["resumed"].as_u64().unwrap() as usize, partial.len());
    assert_eq!(samples_of(&killed), rows);
    assert_eq!(resumed["pass_at_k"], summary["pass_at_k"]);
    // Resuming the finished run computes nothing and leaves its files as they were.
    let before = std::fs::read(killed.join("summary.json")).unwrap();
    let text = common::run_ok(common::sift_lab().args(humaneval_args(&killed, &["--resume"])));
    let again: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["computed_now"], 0);
    assert_eq!(std::fs::read(killed.join("summary.json")).unwrap(), before);
}

/// Bad input stops before any generation, naming the file and line or the flag.
#[test]
fn eval_humaneval_refuses_bad_input() {
    let dir = common::temp_dir("humaneval-bad");
    let out = dir.path().join("run");
    let broken = dir.path().join("HumanEval.jsonl");
    std::fs::write(
        &broken,
        "{\"task_id\": \"T/0\", \"prompt\": \"def f():\\n\", \"entry_point\": \"f\"}\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = common::sift_lab();
        cmd.args(["eval", "--humaneval", "--out"])
            .arg(&out)
            .args(extra);
        cmd.output().unwrap()
    };
    let o = run(&["--humaneval-file", broken.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains(&format!("{}:1", broken.display())) && err.contains("no \"test\" field"),
        "{err}"
    );
    let o = run(&["--samples", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("--samples 3") && err.contains("--temperature"),
        "{err}"
    );
    let o = run(&["--limit", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--limit 0"));
    let o = common::sift_lab()
        .args(["eval", "--humaneval"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
    assert!(!out.join("samples.parquet").exists());
}
