//! Progress bars with rate and ETA, in one style for every long command; and a Ctrl-C flag that
//! long loops poll so they can stop after writing what is complete. While a grid runs
//! ([`grid_bar`]), every other bar is drawn under the grid's own (a cell's epochs under the
//! grid's cells).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The grid's bars, once a grid bar exists.
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// A bar over `total` units of `unit` (e.g. "batches", "points").
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let bar = match MULTI.get() {
        Some(multi) => multi.add(bar),
        None => bar,
    };
    let template = format!("{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// The exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// The bar of a whole grid (cells done, ETA); bars made after it are drawn beneath it.
pub fn grid_bar(total: u64, unit: &str) -> ProgressBar {
    let multi = MULTI.get_or_init(MultiProgress::new);
    let bar = multi.add(ProgressBar::new(total));
    let template =
        format!("{{msg}}\n[{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} (ETA {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// Set once a loop polls [`interrupted`]: from then on Ctrl-C asks it to stop after its unit of
/// work; before, nothing would notice the flag, so Ctrl-C exits at once.
static POLLED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (idempotent). The CLI calls it first thing, so every command
/// stops with exit status 130 on Ctrl-C: at once where nothing is half-written, after the
/// current unit of work where a loop polls [`interrupted`]. A second Ctrl-C exits at once.
pub fn install_interrupt_handler() -> Arc<AtomicBool> {
    INTERRUPTED
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let handler_flag = flag.clone();
            let _ = ctrlc::set_handler(move || {
                if handler_flag.swap(true, Ordering::SeqCst) || !POLLED.load(Ordering::SeqCst) {
                    eprintln!("\ninterrupted");
                    std::process::exit(INTERRUPTED_EXIT_CODE);
                }
                eprintln!("\ninterrupted: finishing the current unit of work and saving results (Ctrl-C again to abort)");
            });
            flag
        })
        .clone()
}

/// Whether Ctrl-C has been pressed since the handler was installed (installing it if needed).
/// Calling it makes Ctrl-C graceful: the caller promises to poll and stop.
pub fn interrupted() -> bool {
    let flag = install_interrupt_handler();
    POLLED.store(true, Ordering::SeqCst);
    flag.load(Ordering::SeqCst)
}
