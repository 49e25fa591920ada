//! The `kiln` binary: Firecracker's command line, the logger, and one microVM run to its end.
//!
//! Exit status: 0 when the guest reboots or shuts down; 1 when running the VM fails; 152 for a
//! bad configuration and 153 for bad arguments, as Firecracker does.

mod launch;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::logger::{self, LoggerConfig};

/// Firecracker's exit code for a bad configuration.
const EXIT_BAD_CONFIGURATION: u8 = 152;
/// Firecracker's exit code for bad command-line arguments.
const EXIT_ARG_PARSING: u8 = 153;
const EXIT_GENERIC_ERROR: u8 = 1;

/// Kiln: a minimal, fast and secure virtual machine monitor for KVM, driven like Firecracker.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// MicroVM unique identifier: alphanumerics and '-', at most 64 characters.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_instance_id)]
    id: String,
    /// Path to a Firecracker-format JSON file that configures and starts the microVM.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Path of the Unix socket that serves the HTTP API.
    #[arg(long, default_value = "/run/kiln.socket")]
    api_sock: PathBuf,
    /// Do not serve the HTTP API; requires --config-file.
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// The largest HTTP request body the API accepts, in bytes.
    #[arg(long, default_value_t = api_server::DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// Enable the boot-timer device, which logs the guest boot time.
    #[arg(long)]
    boot_timer: bool,
    /// Path to a file or FIFO for the log; stderr when absent.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// Path to a file or FIFO for the metrics, as `PUT /metrics` sets it.
    #[arg(long)]
    metrics_path: Option<PathBuf>,
    /// Log level: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, default_value = "Info")]
    level: String,
    /// Show the level of each log line.
    #[arg(long)]
    show_level: bool,
    /// Show the source file and line of each log line.
    #[arg(long)]
    show_log_origin: bool,
    /// Run without seccomp filters. Not recommended.
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Path to compiled seccomp filters to use instead of the built-in ones: the format of
    /// Firecracker's seccompiler-bin, with programs for "vmm", "api" and "vcpu".
    #[arg(long)]
    seccomp_filter: Option<PathBuf>,
}

fn parse_instance_id(id: &str) -> Result<String, String> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(id.to_string())
    } else {
        Err("must be 1 to 64 characters, alphanumerics and '-' only".to_string())
    }
}

/// Why `kiln` failed, and with which exit status.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Run(String),
}

impl Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_BAD_CONFIGURATION,
            Error::Run(_) => EXIT_GENERIC_ERROR,
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread allocates as the seccomp filters allow.
    vmm::seccomp::settle_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ARG_PARSING } else { 0 };
            // Nothing sensible is left to do if the terminal is gone.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let level = match logger::parse_level(&cli.level) {
        Ok(level) => level,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_ARG_PARSING);
        }
    };
    let logger_config = LoggerConfig {
        instance_id: &cli.id,
        level,
        show_level: cli.show_level,
        show_log_origin: cli.show_log_origin,
        path: cli.log_path.as_deref(),
    };
    if let Err(e) = logger::init(&logger_config) {
        eprintln!("Error: {e}");
        return ExitCode::from(EXIT_BAD_CONFIGURATION);
    }
    log::info!("Running Kiln v{}", env!("CARGO_PKG_VERSION"));
    match launch::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one-line message always reaches stderr; a log file gets it too.
            if cli.log_path.is_some() {
                log::error!("{e}");
            }
            eprintln!("Error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
