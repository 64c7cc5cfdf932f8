//! `xbackend-controller analyze`: the controller's verdict on manifest files,
//! offline, through the same index and status code as `run`.

use std::process::ExitCode;

use crate::cli::AnalyzeArgs;

pub fn main(args: AnalyzeArgs) -> ExitCode {
    let _ = args;
    eprintln!("analyze: not implemented yet");
    ExitCode::from(2)
}
