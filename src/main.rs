//! The `stratafs` binary: a thin command line over the `stratafs` library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
