//! The `kiln` binary: Firecracker's command line, the logger, and one microVM run to its end.
//!
//! Exit status: 0 when the guest reboots or shuts down; 1 when running the VM fails; 152 for a
//! bad configuration and 153 for bad arguments, as Firecracker does.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use devices::boot_timer::Timestamp;
use vmm::builder::{build, HostOptions};
use vmm::config::VmConfig;
use vmm::logger::{self, LoggerConfig};
use vmm::metrics::Metrics;
use vmm::vstate::vcpu::VmStop;
use vmm_sys_util::terminal::Terminal;

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
    /// Do not serve the HTTP API; requires --config-file.
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Enable the boot-timer device, which logs the guest boot time.
    #[arg(long)]
    boot_timer: bool,
    /// Path to a file or FIFO for the log; stderr when absent.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// Log level: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, default_value = "Info")]
    level: String,
    /// Show the level of each log line.
    #[arg(long)]
    show_level: bool,
    /// Show the source file and line of each log line.
    #[arg(long)]
    show_log_origin: bool,
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

/// Puts the terminal in raw mode for the guest console and restores it on drop.
struct RawTerminal;

impl RawTerminal {
    fn enable() -> Option<Self> {
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("Failed to put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            log::warn!("Failed to restore the terminal: {e}");
        }
    }
}

fn load_config(cli: &Cli) -> Result<VmConfig, Error> {
    let Some(path) = &cli.config_file else {
        return Err(Error::Config(
            "The HTTP API is not available yet: start kiln with --no-api --config-file FILE."
                .to_string(),
        ));
    };
    if !cli.no_api {
        return Err(Error::Config(
            "The HTTP API is not available yet: add --no-api to boot from --config-file."
                .to_string(),
        ));
    }
    let json = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "Failed to read the config file '{}': {e}",
            path.display()
        ))
    })?;
    VmConfig::from_json(&json).map_err(|e| Error::Config(e.to_string()))
}

fn serial_output(config: &VmConfig) -> Result<Box<dyn Write + Send>, Error> {
    match &config.serial {
        None => Ok(Box::new(std::io::stdout())),
        Some(serial) => {
            let path = &serial.serial_out_path;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    Error::Config(format!(
                        "serial_out_path '{}' cannot be opened: {e}",
                        path.display()
                    ))
                })?;
            Ok(Box::new(file))
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    let config = load_config(cli)?;
    let serial_out = serial_output(&config)?;
    let console_input = std::io::stdin().is_terminal();
    let _raw_terminal = if console_input {
        RawTerminal::enable()
    } else {
        None
    };
    let host = HostOptions {
        serial_out,
        console_input,
        boot_timer: cli.boot_timer,
        start: Timestamp::now(),
        metrics: Arc::new(Metrics::default()),
    };
    let mut vmm = build(&config, host).map_err(|e| Error::Run(e.to_string()))?;
    vmm.start().map_err(|e| Error::Run(e.to_string()))?;
    match vmm.run(None).map_err(|e| Error::Run(e.to_string()))? {
        VmStop::Guest(reason) => {
            log::info!("The guest stopped the VM ({reason}).");
            Ok(())
        }
        VmStop::Error(message) => Err(Error::Run(message)),
    }
}

fn main() -> ExitCode {
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
    match run(&cli) {
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
