//! The `stratafs` binary: a thin command line over the `stratafs` library.

#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
