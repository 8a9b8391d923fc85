//! The `parkwatch` command: run, check a config, run the demo park, test rules, replay dead letters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use parkwatch::app::{self, Extras};
use parkwatch::config;

/// The demo park's configuration, shipped in the binary.
const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

#[derive(Parser)]
#[command(name = "parkwatch", version, about = "Edge gateway for smart industrial and science parks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file; lists every problem and exits non-zero if there is any.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a simulated park on embedded defaults: broker, devices, API.
    Demo {
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the embedded MQTT broker.
        #[arg(long, default_value = "127.0.0.1:11883")]
        mqtt_listen: SocketAddr,
        /// Address of the simulated Modbus TCP devices.
        #[arg(long, default_value = "127.0.0.1:15020")]
        modbus_listen: SocketAddr,
        /// Stop by itself after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Work with alarm rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Work with forwarding to central stores.
    Forward {
        #[command(subcommand)]
        command: ForwardCommand,
    },
}

#[derive(Subcommand)]
enum ForwardCommand {
    /// Queue the dead letters (lines a store rejected) again, each for the target that rejected it,
    /// and remove them from the dead letters. Works whether the gateway runs or not.
    Replay {
        #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
        config: PathBuf,
        /// Only the dead letters of this target.
        #[arg(long, value_name = "ID")]
        target: Option<String>,
        /// Show what would be queued without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run rule unit tests (TOML: input series in, expected alarm transitions out) on a virtual clock.
    Test {
        /// Test files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Load the packs from this directory instead of the built-in ones.
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rumqttd reports every client's goodbye and its own start and stop at ERROR level.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off")),
        )
        .with_timer(SiteTime)
        // Colour codes only for a person at a terminal; journald and files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => report(run(&config)),
        Command::Demo { listen, mqtt_listen, modbus_listen, duration } => {
            report(demo(listen, mqtt_listen, modbus_listen, duration))
        }
        Command::Rules { command: RulesCommand::Test { files, rules } } => rules_test(&files, rules.as_deref()),
        Command::Forward { command: ForwardCommand::Replay { config, target, dry_run } } => {
            report(replay(&config, target.as_deref(), dry_run))
        }
    }
}

/// The site's time zone for log lines, set once the config is read (Asia/Shanghai until then).
static SITE_TZ: std::sync::OnceLock<chrono_tz::Tz> = std::sync::OnceLock::new();

/// Log times in the site's time zone, for the people reading the log on the box.
struct SiteTime;

impl tracing_subscriber::fmt::time::FormatTime for SiteTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        use chrono::TimeZone as _;
        let tz = SITE_TZ.get().copied().unwrap_or(chrono_tz::Asia::Shanghai);
        let now = tz.from_utc_datetime(&chrono::Utc::now().naive_utc());
        write!(w, "{}", now.format("%Y-%m-%dT%H:%M:%S%.3f%:z"))
    }
}

fn site_timezone(config: &config::Config) {
    if let Ok(tz) = config.site.timezone.parse() {
        let _ = SITE_TZ.set(tz);
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parkwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(c) => {
            let registry = std::sync::Arc::new(parkwatch::model::Registry::from_config(&c));
            // `run` starts with the packs that load and skips a broken one (unless `rules.strict`):
            // `check` says the same, as a warning, so the service is not kept down by one bad pack.
            let rules = match parkwatch::core::packs::build_lenient(&c, registry, 1) {
                Ok((engine, packs, errors)) => {
                    for e in &errors {
                        println!(
                            "{}: rules: {}: {e}",
                            file.display(),
                            if c.rules.strict { "error" } else { "warning" }
                        );
                    }
                    if c.rules.strict && !errors.is_empty() {
                        println!(
                            "{}: {} rule problem(s); rules.strict = true refuses them",
                            file.display(),
                            errors.len()
                        );
                        return ExitCode::FAILURE;
                    }
                    let skipped = if errors.is_empty() { String::new() } else { format!(", {} skipped", errors.len()) };
                    format!("{} rules from {} packs{skipped}", engine.rules().len(), packs.len())
                }
                Err(errors) => {
                    for e in &errors {
                        println!("{}: rules: {e}", file.display());
                    }
                    println!("{}: {} rule problem(s)", file.display(), errors.len());
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "{}: ok ({} grids, {} devices, {} brokers, {} subscriptions, {rules})",
                file.display(),
                c.grids.len(),
                c.devices.len(),
                c.mqtt.brokers.len(),
                c.mqtt.subscriptions.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let problems = e.problems();
            for (path, message) in &problems {
                if path.is_empty() {
                    println!("{}: {message}", file.display());
                } else {
                    println!("{}: {path}: {message}", file.display());
                }
            }
            println!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Cancels `token` on SIGINT or SIGTERM (systemd's stop signal).
fn stop_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "Stop requested."),
            _ = int.recv() => info!(signal = "SIGINT", "Stop requested."),
        }
        token.cancel();
    });
    Ok(())
}

fn run(file: &Path) -> anyhow::Result<()> {
    let config = config::load(file)?;
    site_timezone(&config);
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        stop_on_signals(shutdown.clone())?;
        app::run(config, shutdown, Extras::default()).await?;
        Ok(())
    })
}

fn demo(
    listen: SocketAddr,
    mqtt_listen: SocketAddr,
    modbus_listen: SocketAddr,
    duration: Option<u64>,
) -> anyhow::Result<()> {
    let mut config = config::from_str(DEMO_CONFIG, Path::new("configs/demo.toml"), Path::new("."))
        .context("the built-in demo config is invalid")?;
    site_timezone(&config);
    config.api.listen = listen;
    config.broker.listen = mqtt_listen;
    // Demo incidents live in a directory of their own, removed when the demo ends.
    let state_dir = std::env::temp_dir().join(format!("parkwatch-demo-{}", std::process::id()));
    config.incidents.path = state_dir.join("incidents.db");
    for b in &mut config.mqtt.brokers {
        b.host = mqtt_listen.ip().to_string();
        b.port = mqtt_listen.port();
    }
    for c in &mut config.modbus.connections {
        c.host = Some(modbus_listen.ip().to_string());
        c.port = Some(modbus_listen.port());
    }
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        stop_on_signals(shutdown.clone())?;
        if let Some(secs) = duration {
            let token = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                info!(seconds = secs, "Demo duration reached.");
                token.cancel();
            });
        }
        println!(
            "parkwatch demo: simulated park \"{}\" with {} devices in {} grids",
            config.site.id,
            config.devices.len(),
            config.grids.len()
        );
        println!(
            "  API        http://{listen}/api/v1/points   (also /api/v1/events, /api/v1/devices, /metrics, /healthz)"
        );
        println!(
            "  MQTT       mqtt://{mqtt_listen}   (embedded broker; try: mosquitto_sub -h {} -p {} -t 'park/#' -v)",
            mqtt_listen.ip(),
            mqtt_listen.port()
        );
        println!("  Stop with Ctrl-C{}.", duration.map(|d| format!(" (or wait {d} s)")).unwrap_or_default());
        println!("  Incidents  http://{listen}/api/v1/incidents   (rules: /api/v1/rules)");
        println!("  Modbus     {modbus_listen}   (simulated Modbus TCP meters and detectors, polled by the gateway)");
        let extras = Extras {
            simulate: Some((mqtt_listen.ip().to_string(), mqtt_listen.port(), Duration::from_secs(1))),
            modbus_sim: Some(modbus_listen),
        };
        let result = app::run(config, shutdown, extras).await;
        let _ = std::fs::remove_dir_all(&state_dir);
        result?;
        Ok(())
    })
}

fn rules_test(files: &[PathBuf], dir: Option<&Path>) -> ExitCode {
    let packs: Vec<(String, String)> = match dir {
        Some(d) => match parkwatch::core::packs::sources(false, &[d.to_owned()]) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors {
                    eprintln!("parkwatch: error: {e}");
                }
                return ExitCode::FAILURE;
            }
        },
        None => parkwatch::core::packs::BUILTIN.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())).collect(),
    };
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        match parkwatch::rulestest::run_file(f, &packs) {
            Ok(r) => {
                println!("{}:\n{}", f.display(), r.text.trim_end());
                passed += r.passed;
                failed += r.failed;
            }
            Err(e) => {
                println!("{e}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(file: &Path, only: Option<&str>, dry_run: bool) -> anyhow::Result<()> {
    use parkwatch::forward::outbox;
    let config = config::load(file)?;
    let outbox_path = &config.forward.outbox;
    let configured: Vec<String> = config.forward.targets.iter().map(|t| t.id.clone()).collect();
    let targets = match only {
        Some(id) if configured.iter().any(|t| t == id) => vec![id.to_owned()],
        Some(id) => anyhow::bail!("target \"{id}\" is not in {} (configured targets: {})", file.display(), {
            if configured.is_empty() {
                "none".to_owned()
            } else {
                configured.join(", ")
            }
        }),
        None => configured.clone(),
    };
    if !outbox_path.exists() {
        println!("{}: no outbox yet, nothing to replay", outbox_path.display());
        return Ok(());
    }
    let done = outbox::replay(outbox_path, &targets, dry_run, parkwatch::model::time::now_ns())
        .with_context(|| format!("cannot replay the dead letters in {}", outbox_path.display()))?;
    println!("outbox {}", outbox_path.display());
    let verb = if dry_run { "would be queued again" } else { "queued again" };
    for r in &done {
        if r.letters == 0 {
            println!("  target \"{}\": no dead letters", r.target);
        } else {
            println!(
                "  target \"{}\": {} dead letters, {} lines, {} bytes {verb} as {} new batches for this target only",
                r.target, r.letters, r.lines, r.bytes, r.batches
            );
        }
    }
    if only.is_none() {
        for (target, letters, bytes) in outbox::dead_letter_counts(outbox_path)? {
            if !configured.contains(&target) {
                println!("  target \"{target}\": {letters} dead letters ({bytes} bytes) left in place: not a configured target");
            }
        }
    }
    let (letters, lines, bytes) = done.iter().fold((0, 0, 0), |(a, b, c), r| (a + r.letters, b + r.lines, c + r.bytes));
    if dry_run {
        println!("dry run: {letters} dead letters ({lines} lines, {bytes} bytes) would be queued; nothing changed");
    } else {
        println!(
            "{letters} dead letters ({lines} lines, {bytes} bytes) queued; the gateway sends them on its next pass"
        );
    }
    Ok(())
}
