//! The `cinder` command's library: the CLI subcommands and the desktop app, so that integration
//! tests can drive the app's views directly.

pub mod bench;
pub mod bench_memory;
#[cfg(not(target_family = "wasm"))]
pub mod bench_poem;
#[cfg(not(target_family = "wasm"))]
pub mod bench_soak;
pub mod cli;
#[cfg(not(target_family = "wasm"))]
pub mod encode;
pub mod generate;
pub mod gui;
#[cfg(not(target_family = "wasm"))]
pub mod poem;
pub mod train;
