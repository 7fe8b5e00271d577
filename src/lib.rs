//! sift-lab: reproduce and extend "Sparse is Enough in Fine-tuning Pre-trained Large Language
//! Models" (SIFT). Every analysis is a module that takes a config and returns a table.

pub mod analysis_config;
pub mod bench;
pub mod data;
pub mod eval;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod progress;
pub mod table;
