//! Launching fabric nodes as real processes.
//!
//! The `fabric` command and the test kit share this library so that a test starts nodes exactly as an
//! operator does: one process per node, `--topology FILE --node NAME --data-dir DIR`, stdout and stderr
//! appended to one log file per node, readiness read from the node's own `/ready`.
//!
//! - `launch`: where binaries, data and logs live, spawning a node and waiting until it is ready.
//! - `process`: what `/proc` says about a pid (running, stopped, zombie, gone) and whether it is our node.
//! - `compose`: the docker deployment of a topology (networks, static addresses, the docker topology).
//! - `state`: `fabric.json`, the record of which pid runs which node, shared by concurrent commands.

pub mod compose;
pub mod launch;
pub mod process;
pub mod state;

pub use launch::{LaunchError, Launcher, SpawnOptions, die_with_parent, find_bin_dir};
pub use process::ProcState;
pub use state::{FabricState, NodeRecord};
