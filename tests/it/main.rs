//! Integration tests of the `weir` binary: the CLI end to end and a SIGKILL crash test.

mod cli;
mod crash;
mod pipelines;
mod run;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `weir --data-dir <dir> <args>` to completion, with 1 MiB segments for new
/// directories (the 1 GiB default would write a gigabyte of zeros per test).
pub fn weir(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--segment-size-bytes", "1048576", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the weir binary runs")
}
