//! Running one microVM: from a config file without the API (`--no-api`), or serving the HTTP
//! API, which configures and starts the VM and then drives it. In both cases this thread is
//! the VMM thread, and it returns when the VM stops.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use api_server::ApiMetrics;
use devices::boot_timer::Timestamp;
use vmm::builder::{build, HostOptions};
use vmm::config::VmConfig;
use vmm::console_output::ConsoleOutput;
use vmm::controller::Controller;
use vmm::metrics::{Counter, MetricSource, Metrics};
use vmm::resources::VmResources;
use vmm::rpc::api_channel;
use vmm::seccomp::{SeccompFilters, ThreadKind};
use vmm::startup_time::{StartTimes, StartupTimes};
use vmm::vstate::vcpu::VmStop;

use crate::terminal::RawTerminal;
use crate::{Cli, Error};

fn load_config(path: &std::path::Path) -> Result<VmConfig, Error> {
    let json = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "Failed to read the config file '{}': {e}",
            path.display()
        ))
    })?;
    VmConfig::from_json(&json).map_err(|e| Error::Config(e.to_string()))
}

/// The config file's `logger` and `metrics` sections, applied as `PUT /logger` and
/// `PUT /metrics` would be.
fn apply_logger_and_metrics(config: &VmConfig, metrics: &Metrics) -> Result<(), Error> {
    if let Some(settings) = &config.logger {
        vmm::logger::reconfigure(settings)
            .map_err(|e| Error::Config(format!("Invalid logger: {e}")))?;
    }
    if let Some(settings) = &config.metrics {
        metrics
            .set_sink(&settings.metrics_path)
            .map_err(|e| Error::Config(format!("Invalid metrics: {e}")))?;
    }
    Ok(())
}

fn serial_output(config: Option<&VmConfig>) -> Result<Box<dyn Write + Send>, Error> {
    let output = match config.and_then(|c| c.serial.as_ref()) {
        None => ConsoleOutput::stdout()
            .map_err(|e| Error::Config(format!("stdout cannot take the serial console: {e}")))?,
        Some(serial) => ConsoleOutput::open(&serial.serial_out_path).map_err(|e| {
            Error::Config(format!(
                "serial_out_path '{}' cannot be opened: {e}",
                serial.serial_out_path.display()
            ))
        })?,
    };
    Ok(Box::new(output))
}

/// The API's request counters: in Firecracker's `get_api_requests`, `put_api_requests` and
/// `patch_api_requests`, and per route (with the faults and unrouted requests) in the
/// `api_server` group, which the metrics line moves under `kiln` (Firecracker lacks them);
/// the last snapshot create and load, pause and resume requests' durations in `latencies_us`.
struct ApiCounters(Arc<ApiMetrics>);

impl MetricSource for ApiCounters {
    fn counters(&self) -> Vec<Counter> {
        let faults = ("faults".to_string(), self.0.faults());
        let firecracker = self
            .0
            .firecracker_counters()
            .into_iter()
            .map(|(group, name, total)| Counter {
                group: group.to_string(),
                name,
                total,
            });
        Counter::group("api_server", self.0.snapshot().into_iter().chain([faults]))
            .into_iter()
            .chain(firecracker)
            .collect()
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::group("latencies_us", self.0.latencies())
    }
}

fn outcome(stop: VmStop) -> Result<(), Error> {
    match stop {
        VmStop::Guest(reason) => {
            log::info!("The guest stopped the VM ({reason}).");
            Ok(())
        }
        VmStop::Error(message) => Err(Error::Run(message)),
    }
}

/// The seccomp filters the command line asks for: the built-in ones unless `--no-seccomp` or
/// `--seccomp-filter` says otherwise.
fn seccomp_filters(cli: &Cli) -> Result<SeccompFilters, Error> {
    let filters = if cli.no_seccomp {
        log::warn!("Seccomp filtering is off (--no-seccomp).");
        Ok(SeccompFilters::none())
    } else if let Some(path) = &cli.seccomp_filter {
        log::info!("Using the seccomp filters in {}", path.display());
        SeccompFilters::from_file(path)
    } else {
        if cfg!(feature = "seccomp-log") {
            log::warn!("This test build's seccomp filters log syscalls they do not allow.");
        }
        SeccompFilters::builtin()
    };
    // Firecracker ends with its generic error status for a bad filter file, too.
    filters.map_err(|e| Error::Run(e.to_string()))
}

/// Runs the microVM the command line describes until it stops.
pub fn run(cli: &Cli) -> Result<(), Error> {
    let seccomp = Arc::new(seccomp_filters(cli)?);
    let config = cli.config_file.as_deref().map(load_config).transpose()?;
    let console_input = std::io::stdin().is_terminal();
    let metrics = Arc::new(Metrics::default());
    vmm::fatal_signals::install(metrics.clone()).map_err(|e| Error::Run(e.to_string()))?;
    let startup = Arc::new(StartupTimes::new(StartTimes {
        start_time_us: cli.start_time_us,
        start_time_cpu_us: cli.start_time_cpu_us,
        parent_cpu_time_us: cli.parent_cpu_time_us,
    }));
    metrics.add_source(startup.clone());
    if let Some(path) = &cli.metrics_path {
        metrics
            .set_sink(path)
            .map_err(|e| Error::Config(e.to_string()))?;
    }
    if let Some(config) = &config {
        apply_logger_and_metrics(config, &metrics)?;
    }
    let host = |serial_out| HostOptions {
        serial_out,
        console_input,
        boot_timer: cli.boot_timer,
        start: Timestamp::now(),
        metrics: metrics.clone(),
        seccomp: seccomp.clone(),
    };
    // Open what can fail before the terminal changes mode.
    let serial_out = serial_output(config.as_ref())?;
    let _raw_terminal = if console_input {
        RawTerminal::enable()
    } else {
        None
    };
    let run_error = |e: &dyn std::fmt::Display| Error::Run(e.to_string());

    if cli.no_api {
        let config = config
            .as_ref()
            .ok_or_else(|| Error::Config("--no-api needs --config-file.".into()))?;
        let mut vmm = build(config, host(serial_out)).map_err(|e| run_error(&e))?;
        vmm.start().map_err(|e| run_error(&e))?;
        startup.report_ready();
        return outcome(vmm.run(None).map_err(|e| run_error(&e))?);
    }

    let server = api_server::bind(&cli.api_sock).map_err(|e| run_error(&e))?;
    let (sender, receiver) = api_channel().map_err(|e| run_error(&e))?;
    let api_metrics = Arc::new(ApiMetrics::new());
    metrics.add_source(Arc::new(ApiCounters(api_metrics.clone())));
    let max_payload = cli.http_api_max_payload_size;
    let (confined_tx, confined_rx) = sync_channel(1);
    let api_seccomp = seccomp.clone();
    std::thread::Builder::new()
        .name("kiln_api".into())
        .spawn(move || {
            // Confined before it accepts a connection; a thread that cannot be stays idle.
            let confined = api_seccomp.apply(ThreadKind::Api);
            let ok = confined.is_ok();
            if confined_tx.send(confined).is_ok() && ok {
                if let Err(e) = api_server::serve(server, sender, max_payload, api_metrics) {
                    log::error!("The API server stopped: {e}");
                }
            }
        })
        .map_err(|e| run_error(&e))?;
    match confined_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(run_error(&e)),
        Err(_) => return Err(Error::Run("The API thread ended at its start.".into())),
    }
    log::info!("Serving the API on {}", cli.api_sock.display());
    startup.report_ready();

    let resources = config.clone().map(VmResources::from).unwrap_or_default();
    let mut controller = Controller::new(&cli.id, resources, metrics.clone(), receiver);
    let vmm = if config.is_some() {
        // Firecracker boots a config file's VM at once and serves the API alongside.
        controller
            .start(host(serial_out))
            .map_err(|e| run_error(&e))?
    } else {
        // Without a config file there is no serial section: the console is stdout. A failed
        // InstanceStart dropped the first console writer; a retry opens another.
        let mut first = Some(serial_out);
        controller
            .serve_until_started(|| {
                let out = first.take().map_or_else(|| serial_output(None), Ok);
                host(out.unwrap_or_else(|e| {
                    log::error!("The console is lost: {e}");
                    Box::new(std::io::sink())
                }))
            })
            .map_err(|e| run_error(&e))?
    };
    outcome(vmm.run(Some(&mut controller)).map_err(|e| run_error(&e))?)
}
