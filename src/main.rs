use std::process::ExitCode;

use clap::Parser;
use xbackend_controller::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", xbackend_controller::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            xbackend_controller::runtime::init_logging(args.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(xbackend_controller::runtime::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(xbackend_controller::runtime::Error::Usage(msg)) => {
                    eprintln!("error: {msg}");
                    ExitCode::from(2)
                }
                Err(e) if e.is_usage() => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    // Once, with its causes; the logs may go to the same stream.
                    eprintln!("error: {}", xbackend_controller::runtime::chain(&e));
                    ExitCode::from(1)
                }
            }
        }
        Command::Analyze(args) => xbackend_controller::analyze::main(args),
    }
}
