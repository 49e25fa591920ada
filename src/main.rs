//! The `kiln` binary: Firecracker's command line, the logger, and one microVM run to its end.
//!
//! Exit status: 0 when the guest reboots or shuts down; 1 when running the VM fails; 152 for a
//! bad configuration and 153 for bad arguments, as Firecracker does (and for a Firecracker flag
//! that asks for a feature Kiln does not have).

mod firecracker_flags;
mod launch;
mod snapshot_flags;
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
#[command(name = "kiln", about, disable_version_flag = true)]
struct Cli {
    /// Print the version (Firecracker's version line, naming Kiln, when run as `firecracker`).
    #[arg(long)]
    version: bool,
    /// MicroVM unique identifier: alphanumerics and '-', at most 64 characters.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_instance_id)]
    id: String,
    /// Path to a Firecracker-format JSON file that configures and starts the microVM.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Path of the Unix socket that serves the HTTP API (Firecracker's default, which tools
    /// that start a VMM without this flag look for).
    #[arg(long, default_value = "/run/firecracker.socket")]
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
    /// Only log lines from modules whose path starts with this (e.g. `vmm::runtime`).
    #[arg(long)]
    module: Option<String>,
    /// When the process started (monotonic clock, microseconds), as Firecracker's jailer
    /// passes it; feeds the `process_startup_time_us` metric.
    #[arg(long)]
    start_time_us: Option<u64>,
    /// The CPU time used when the process started, in microseconds, as Firecracker's jailer
    /// passes it; feeds the `process_startup_time_cpu_us` metric.
    #[arg(long)]
    start_time_cpu_us: Option<u64>,
    /// The parent process's CPU time, in microseconds, added to `process_startup_time_cpu_us`.
    #[arg(long)]
    parent_cpu_time_us: Option<u64>,
    /// The MMDS data store limit, in bytes. Kiln has no MMDS yet: accepted, with a warning.
    #[arg(long)]
    mmds_size_limit: Option<usize>,
    /// A JSON file for the MMDS: refused, as Kiln has no MMDS yet.
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// PCIe support: refused, as Kiln's devices are virtio-mmio.
    #[arg(long)]
    enable_pci: bool,
    /// Print the supported snapshot data format version.
    #[arg(long)]
    snapshot_version: bool,
    /// Print the data format version of the given snapshot state file.
    #[arg(long)]
    describe_snapshot: Option<PathBuf>,
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
    if cli.version {
        let argv0 = std::env::args_os().next();
        println!(
            "{}",
            firecracker_flags::version_line(argv0.as_deref().and_then(|a| a.to_str()))
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = firecracker_flags::check_supported(&cli) {
        eprintln!("Error: {e}");
        return ExitCode::from(EXIT_ARG_PARSING);
    }
    if cli.snapshot_version {
        println!("{}", vmm::snapshot::file::SNAPSHOT_VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.describe_snapshot {
        return match snapshot_flags::describe(path) {
            Ok(version) => {
                println!("{version}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::from(EXIT_GENERIC_ERROR)
            }
        };
    }
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
        module: cli.module.as_deref(),
    };
    if let Err(e) = logger::init(&logger_config) {
        eprintln!("Error: {e}");
        return ExitCode::from(EXIT_BAD_CONFIGURATION);
    }
    log::info!("Running Kiln v{}", env!("CARGO_PKG_VERSION"));
    if let Some(limit) = cli.mmds_size_limit {
        log::warn!("--mmds-size-limit {limit} has no effect: Kiln has no MMDS yet.");
    }
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
