//! sift-lab: reproduce and extend "Sparse is Enough in Fine-tuning Pre-trained Large Language
//! Models" (SIFT). Every analysis is a module that takes a config and returns a table.

pub mod ablate;
pub mod analysis_config;
pub mod backprop;
pub mod bench;
pub mod bench_lm;
pub mod budget;
pub mod data;
pub mod eval;
pub mod figures;
pub mod generate;
pub mod grad_stats;
pub mod gradients;
pub mod grid;
pub mod hub;
pub mod kernels;
pub mod landscape;
pub mod masks;
pub mod memory;
pub mod methods;
pub mod metrics;
pub mod mmlu;
pub mod model;
pub mod optim;
pub mod output;
pub mod peak_rss;
pub mod plot;
pub mod progress;
pub mod run_lock;
pub mod select;
pub mod selectors;
pub mod sharpness;
pub mod train;
pub mod train_lm;
