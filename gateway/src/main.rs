//! The `parkwatch` command: run, check a config, run the demo park, test rules, replay dead letters,
//! verify the audit trail, or show a running gateway's health.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use parkwatch::app::{self, Extras};
use parkwatch::config;

/// The demo park's configuration, shipped in the binary.
const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");
/// The demo park's site plan, which `configs/demo.toml` outlines its grids on.
const DEMO_PLAN: &[u8] = include_bytes!("../../configs/demo-plan.svg");
/// The signing secret of the demo's webhook receivers (`configs/demo.toml`), checked by its inbox.
const DEMO_WEBHOOK_SECRET: &str = "demo-webhook-secret";

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
        /// Address of the simulated DL/T 645 meters' serial server (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        dlt645_listen: SocketAddr,
        /// Stop by itself after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Show the health of a running gateway, one line per component (a token in PARKWATCH_TOKEN).
    ///
    /// Exit status: 0 all ok, 1 something degraded, 2 something failed, 3 the gateway cannot be reached.
    Status {
        /// Base URL of the gateway's API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Language of the table.
        #[arg(long, value_enum, default_value_t = Lang::Zh)]
        lang: Lang,
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
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with notification receivers. 通知接收方。
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Manage the people who use the API (auth.db beside the incident database). 管理用户。
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API tokens for machines and scripts. 管理 API 令牌。
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Work with the device list. 设备清单。
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Emission compliance and energy reports from the edge history. 排放与能耗报表。
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Every monitoring point against the national limits that apply to it. 排放达标报告。
    Emissions(ReportArgs),
    /// Energy per meter, building, tenant and grid. 能耗台账。
    Energy(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// A month (2026-11), a day (2026-11-05) or days (2026-11-01..2026-11-15), local dates.
    #[arg(long)]
    period: String,
    /// Only this device or device/point (repeatable).
    #[arg(long, value_name = "DEVICE[/POINT]")]
    point: Vec<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    format: ReportFormat,
    #[arg(long, value_enum, default_value_t = Lang::Zh)]
    lang: Lang,
    /// Write to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Html,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Check a CSV device list against the config and show what would change; `--apply` puts it in
    /// place of the config's first `device_files` entry. 导入设备清单（默认只预览差异）。
    Import {
        #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
        config: PathBuf,
        /// The CSV file (header row: id, grid, and any of name, type, category, modbus, dlt645, tags).
        file: PathBuf,
        /// Write it in place (without it, nothing is written).
        #[arg(long)]
        apply: bool,
        /// Language of the messages.
        #[arg(long, value_enum, default_value_t = Lang::Zh)]
        lang: Lang,
    },
}

/// Where the auth database is, and the language of the answers.
#[derive(clap::Args)]
struct AdminArgs {
    #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
    config: PathBuf,
    /// Language of the messages.
    #[arg(long, value_enum, default_value_t = Lang::Zh)]
    lang: Lang,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is asked for (or read from standard input when piped). The first user
    /// must be an admin.
    Add {
        name: String,
        /// admin, safety_manager, supervisor, officer or viewer.
        #[arg(long)]
        role: String,
        /// A grid the user is limited to (repeat for several); required for supervisor and officer.
        #[arg(long = "grid", value_name = "GRID")]
        grids: Vec<String>,
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Set a user's password (and enable the user again); their sessions end.
    Passwd {
        name: String,
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Disable a user: no more logins, their sessions end.
    Disable {
        name: String,
        #[command(flatten)]
        args: AdminArgs,
    },
    /// List the users.
    List {
        #[command(flatten)]
        args: AdminArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain record by record and name the first broken record.
    ///
    /// Exit status: 0 intact, 1 a record is broken (edited, removed, unreadable), 2 the trail cannot be read.
    Verify {
        #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
        config: PathBuf,
        /// Language of the report.
        #[arg(long, value_enum, default_value_t = Lang::Zh)]
        lang: Lang,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once as PARKWATCH_TOKEN=<token>; only its hash is kept.
    Create {
        /// What the token is for, like "central-scada".
        #[arg(long)]
        name: String,
        /// admin, safety_manager, supervisor, officer or viewer.
        #[arg(long)]
        role: String,
        /// A grid the token is limited to (repeat for several).
        #[arg(long = "grid", value_name = "GRID")]
        grids: Vec<String>,
        /// Days until the token expires; without it the token lasts until revoked.
        #[arg(long, value_name = "DAYS")]
        expires_days: Option<u64>,
        #[command(flatten)]
        args: AdminArgs,
    },
    /// List the tokens (never their secrets).
    List {
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Revoke a token by its id (as `token list` shows it).
    Revoke {
        id: String,
        #[command(flatten)]
        args: AdminArgs,
    },
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// Send a test message through a receiver's real channel and say whether it was accepted.
    Test {
        #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
        config: PathBuf,
        /// Id of a `[[notify.receivers]]`.
        #[arg(long, value_name = "ID")]
        receiver: String,
        /// Language of the answer.
        #[arg(long, value_enum, default_value_t = Lang::Zh)]
        lang: Lang,
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

/// Language of `parkwatch status` and `parkwatch audit verify`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// 中文
    Zh,
    /// English
    En,
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
    /// For each device and point of a config, the rules that watch it; points no alarm rule watches
    /// (and that do not say why) are marked. Exit status 1 when there are such points.
    Coverage {
        #[arg(short, long, value_name = "FILE", default_value = "/etc/parkwatch/parkwatch.toml")]
        config: PathBuf,
        /// Language of the listing.
        #[arg(long, value_enum, default_value_t = Lang::Zh)]
        lang: Lang,
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
        Command::Demo { listen, mqtt_listen, modbus_listen, dlt645_listen, duration } => {
            report(demo(listen, mqtt_listen, modbus_listen, dlt645_listen, duration))
        }
        Command::Rules { command: RulesCommand::Test { files, rules } } => rules_test(&files, rules.as_deref()),
        Command::Rules { command: RulesCommand::Coverage { config, lang } } => rules_coverage(&config, lang),
        Command::Forward { command: ForwardCommand::Replay { config, target, dry_run } } => {
            report(replay(&config, target.as_deref(), dry_run))
        }
        Command::Notify { command: NotifyCommand::Test { config, receiver, lang } } => {
            report(notify_test(&config, &receiver, lang))
        }
        Command::Status { url, lang } => status(&url, lang),
        Command::Audit { command: AuditCommand::Verify { config, lang } } => audit_verify(&config, lang),
        Command::User { command } => users(command),
        Command::Token { command } => tokens(command),
        Command::Devices { command: DevicesCommand::Import { config, file, apply, lang } } => {
            devices_import(&config, &file, apply, lang)
        }
        Command::Report { command: ReportCommand::Emissions(args) } => report(make_report(&args, false)),
        Command::Report { command: ReportCommand::Energy(args) } => report(make_report(&args, true)),
    }
}

/// `parkwatch report emissions|energy`: computed from the history and incident databases of the
/// config (read-only; the gateway may be running).
fn make_report(args: &ReportArgs, energy: bool) -> anyhow::Result<()> {
    use parkwatch::report::{self, Format, Period, Reporter};
    let config = config::load(&args.config)?;
    let period = Period::parse(&args.period)?;
    let registry = std::sync::Arc::new(parkwatch::model::Registry::from_config(&config));
    let reporter = Reporter::new(&config, registry);
    let format = match args.format {
        ReportFormat::Html => Format::Html,
        ReportFormat::Csv => Format::Csv,
        ReportFormat::Json => Format::Json,
    };
    let lang = match args.lang {
        Lang::Zh => config::Lang::Zh,
        Lang::En => config::Lang::En,
    };
    let all = |_: &str| true;
    let text = if energy {
        report::render::energy(&reporter.energy(&period, &args.point, &all)?, format, lang)
    } else {
        report::render::emissions(&reporter.emissions(&period, &args.point, &all)?, format, lang)
    };
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(text.as_bytes()).context("cannot write the report")?;
        }
    }
    Ok(())
}

/// `parkwatch devices import`: the whole config validated with `file` as its first device file, the
/// difference to the running list shown, and with `apply` the file put in place (write, then rename).
/// Exit status: 0 done (or nothing to do), 1 the new list is refused, 2 the config or file is unusable.
fn devices_import(config_file: &Path, file: &Path, apply: bool, lang: Lang) -> ExitCode {
    let zh = matches!(lang, Lang::Zh);
    let fail = |code: u8, zh_text: String, en_text: String| {
        eprintln!("parkwatch: {}", if zh { zh_text } else { en_text });
        ExitCode::from(code)
    };
    let current = match config::load(config_file) {
        Ok(c) => c,
        Err(e) => return fail(2, format!("当前配置无效：{e}"), format!("the current config is invalid: {e}")),
    };
    let Some(target) = current.device_files.first().cloned() else {
        return fail(
            2,
            format!("{} 未指定 device_files；请先加入 device_files = [\"devices.csv\"]", config_file.display()),
            format!("{} names no device_files; add device_files = [\"devices.csv\"] first", config_file.display()),
        );
    };
    let candidate_file = match std::fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) => {
            return fail(2, format!("无法读取 {}：{e}", file.display()), format!("cannot read {}: {e}", file.display()))
        }
    };
    let text = match std::fs::read_to_string(config_file) {
        Ok(t) => t,
        Err(e) => return fail(2, format!("无法读取配置：{e}"), format!("cannot read the config: {e}")),
    };
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return fail(2, format!("配置无法解析：{e}"), format!("the config does not parse: {e}")),
    };
    if let Some(toml::Value::Array(files)) = table.get_mut("device_files") {
        files[0] = toml::Value::String(candidate_file.display().to_string());
    }
    let base = config_file.parent().unwrap_or(Path::new("."));
    let candidate = match toml::to_string(&table).map(|t| config::from_str(&t, config_file, base)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return fail(
                1,
                format!("新设备清单被拒绝，未写入：\n{e}"),
                format!("the new device list is refused; nothing written:\n{e}"),
            )
        }
        Err(e) => return fail(2, format!("{e}"), format!("{e}")),
    };
    let d = config::device_files::diff(&current.devices, &candidate.devices);
    for id in &d.added {
        println!("+ {id}");
    }
    for id in &d.removed {
        println!("- {id}");
    }
    for (id, changes) in &d.changed {
        println!("~ {id}: {}", changes.join("; "));
    }
    let counts = if zh {
        format!("新增 {}，删除 {}，变更 {}，不变 {}", d.added.len(), d.removed.len(), d.changed.len(), d.unchanged)
    } else {
        format!(
            "{} added, {} removed, {} changed, {} unchanged",
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.unchanged
        )
    };
    if !apply {
        if zh {
            println!("{counts}。仅预览，未写入；加 --apply 写入 {}", target.display());
        } else {
            println!("{counts}. Dry run, nothing written; add --apply to write {}", target.display());
        }
        return ExitCode::SUCCESS;
    }
    let tmp = target.with_extension("csv.tmp");
    if let Err(e) = std::fs::copy(&candidate_file, &tmp).and_then(|_| std::fs::rename(&tmp, &target)) {
        let _ = std::fs::remove_file(&tmp);
        return fail(
            2,
            format!("无法写入 {}：{e}", target.display()),
            format!("cannot write {}: {e}", target.display()),
        );
    }
    if zh {
        println!("{counts}。已写入 {}；重启 parkwatch 后生效。", target.display());
    } else {
        println!("{counts}. Written to {}; restart parkwatch to use it.", target.display());
    }
    ExitCode::SUCCESS
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
                            if c.rules.strict || e.config { "error" } else { "warning" }
                        );
                    }
                    // A unit mismatch is a wrong configuration, not a broken pack: it always fails.
                    let units = errors.iter().filter(|e| e.config).count();
                    if units > 0 {
                        println!("{}: {units} point(s) in a unit their rules are not written in", file.display());
                        return ExitCode::FAILURE;
                    }
                    if c.rules.strict && !errors.is_empty() {
                        println!(
                            "{}: {} rule problem(s); rules.strict = true refuses them",
                            file.display(),
                            errors.len()
                        );
                        return ExitCode::FAILURE;
                    }
                    for w in parkwatch::core::coverage::warnings(&parkwatch::core::coverage::coverage(
                        engine.rules(),
                        &parkwatch::model::Registry::from_config(&c),
                    )) {
                        println!("{}: coverage: warning: {w}", file.display());
                    }
                    // Packs ship plan ids a site may not have written yet: a warning, never an error.
                    for r in engine.rules() {
                        if !r.plan.is_empty() && !c.plans.iter().any(|p| p.id == r.plan) {
                            println!(
                                "{}: plans: warning: rule \"{}\" names plan \"{}\", which no [[plans]] defines",
                                file.display(),
                                r.id,
                                r.plan
                            );
                        }
                    }
                    // A required limit left unset is not an error (the site may still be choosing it),
                    // but the rule judges nothing on that device until it is set.
                    for m in engine.missing_params() {
                        println!("{}: rules: warning: {m}", file.display());
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

/// `parkwatch rules coverage`: the rules of each device and point, for the people who set up a site.
fn rules_coverage(file: &Path, lang: Lang) -> ExitCode {
    let c = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            for (path, message) in e.problems() {
                println!("{}: {path}: {message}", file.display());
            }
            return ExitCode::FAILURE;
        }
    };
    let registry = std::sync::Arc::new(parkwatch::model::Registry::from_config(&c));
    let engine = match parkwatch::core::packs::build_lenient(&c, registry.clone(), 1) {
        Ok((engine, _, errors)) => {
            for e in &errors {
                eprintln!("{}: rules: {e}", file.display());
            }
            engine
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: rules: {e}", file.display());
            }
            return ExitCode::FAILURE;
        }
    };
    let cov = parkwatch::core::coverage::coverage(engine.rules(), &registry);
    print!("{}", coverage_text(&cov, lang));
    if cov.iter().any(|d| d.blind_spots().next().is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn coverage_text(cov: &[parkwatch::core::coverage::DeviceCoverage], lang: Lang) -> String {
    use std::fmt::Write as _;
    let zh = lang == Lang::Zh;
    let none = if zh { "无" } else { "none" };
    let list = |v: &[String]| if v.is_empty() { none.to_owned() } else { v.join(", ") };
    let mut out = String::new();
    let mut blind = 0;
    for d in cov {
        if zh {
            let _ = writeln!(out, "设备 {}（类别 {}，网格 {}）", d.device, d.category, d.grid);
        } else {
            let _ = writeln!(out, "device {} (category {}, grid {})", d.device, d.category, d.grid);
        }
        for p in &d.points {
            let unit = if p.unit.is_empty() { String::new() } else { format!(" [{}]", p.unit) };
            let mark = match (&p.unwatched, p.alarms.is_empty()) {
                (_, false) => "  ",
                (Some(_), true) => "- ",
                (None, true) => {
                    blind += 1;
                    "! "
                }
            };
            let _ = if zh {
                write!(out, "  {mark}{}{unit}: 告警规则 {}; 质量规则 {}", p.name, list(&p.alarms), list(&p.quality))
            } else {
                write!(
                    out,
                    "  {mark}{}{unit}: alarm rules {}; quality rules {}",
                    p.name,
                    list(&p.alarms),
                    list(&p.quality)
                )
            };
            if let Some(why) = &p.unwatched {
                let _ = write!(out, "{}{why}", if zh { "; 不设告警: " } else { "; unwatched: " });
            }
            if !p.not_applied.is_empty() {
                let _ =
                    write!(out, "{}{}", if zh { "; 未适用: " } else { "; not applied: " }, p.not_applied.join(", "));
            }
            out.push('\n');
        }
        let _ = writeln!(out, "  {}{}", if zh { "整机规则: " } else { "device rules: " }, list(&d.device_rules));
    }
    let _ = if zh {
        writeln!(out, "{blind} 个点位没有告警规则且未说明原因（标记 !）")
    } else {
        writeln!(out, "{blind} point(s) watched by no alarm rule without a reason (marked !)")
    };
    out
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
        let extras = Extras { config_file: Some(file.to_path_buf()), ..Extras::default() };
        app::run(config, shutdown, extras).await?;
        Ok(())
    })
}

fn demo(
    listen: SocketAddr,
    mqtt_listen: SocketAddr,
    modbus_listen: SocketAddr,
    dlt645_listen: SocketAddr,
    duration: Option<u64>,
) -> anyhow::Result<()> {
    // Demo state lives in a directory of their own, removed when the demo ends; the site plan the
    // config names is written there, since the demo runs from anywhere on embedded defaults.
    let state_dir = std::env::temp_dir().join(format!("parkwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    std::fs::write(state_dir.join("demo-plan.svg"), DEMO_PLAN)
        .with_context(|| format!("cannot write the demo's site plan into {}", state_dir.display()))?;
    let mut config = config::from_str(DEMO_CONFIG, Path::new("configs/demo.toml"), &state_dir)
        .context("the built-in demo config is invalid")?;
    site_timezone(&config);
    config.api.listen = listen;
    config.broker.listen = mqtt_listen;
    config.incidents.path = state_dir.join("incidents.db");
    for b in &mut config.mqtt.brokers {
        b.host = mqtt_listen.ip().to_string();
        b.port = mqtt_listen.port();
    }
    for c in &mut config.modbus.connections {
        c.host = Some(modbus_listen.ip().to_string());
        c.port = Some(modbus_listen.port());
    }
    let demo_auth = demo_accounts(&config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        stop_on_signals(shutdown.clone())?;
        // The demo's receivers post to a local inbox that checks and prints what the officers would get.
        let inbox = parkwatch::sim::inbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), DEMO_WEBHOOK_SECRET)
            .await
            .context("cannot start the demo's notification inbox")?;
        config.notify.base_url = format!("http://{listen}");
        for r in &mut config.notify.receivers {
            if let Some(url) = r.url.as_mut() {
                *url = url.replacen("127.0.0.1:9", &inbox.to_string(), 1);
            }
        }
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
        println!("  Dashboard  http://{listen}/   (log in as one of the users below)");
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
        println!(
            "  DL/T 645   {dlt645_listen}   (a simulated meter behind a transparent serial server, read by the gateway; see /api/v1/devices)"
        );
        println!(
            "  Notices    http://{listen}/api/v1/notifications   (to the officers on duty; the demo inbox on {inbox} prints them here)"
        );
        println!("  Users      (demo only; random passwords, gone when the demo ends)");
        for (name, role, password) in &demo_auth.users {
            println!("             {name} / {password}   ({role})");
        }
        println!("  API token  (admin; use with: curl -H \"Authorization: Bearer $PARKWATCH_TOKEN\" ...)");
        println!("PARKWATCH_TOKEN={}", demo_auth.token);
        let extras = Extras {
            simulate: Some((mqtt_listen.ip().to_string(), mqtt_listen.port(), Duration::from_secs(1))),
            modbus_sim: Some(modbus_listen),
            dlt645_sim: Some(dlt645_listen),
            hj212_sim: Some(Duration::from_secs(5)),
            config_file: None,
        };
        let result = app::run(config, shutdown, extras).await;
        let _ = std::fs::remove_dir_all(&state_dir);
        result?;
        Ok(())
    })
}

fn audit_verify(file: &Path, lang: Lang) -> ExitCode {
    use parkwatch::audit::verify_file;
    let config = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("parkwatch: error: {e}");
            return ExitCode::from(2);
        }
    };
    let path = config.audit_path();
    match verify_file(&path) {
        Ok(v) => {
            let (text, code) = verify_report(&path, &v, lang);
            println!("{text}");
            ExitCode::from(code)
        }
        Err(e) => {
            match lang {
                Lang::Zh => eprintln!("parkwatch: 无法读取审计日志 {}: {e}", path.display()),
                Lang::En => eprintln!("parkwatch: error: cannot read the audit trail {}: {e}", path.display()),
            }
            ExitCode::from(2)
        }
    }
}

/// The operator's report of a verification and its exit status (0 intact, 1 broken).
fn verify_report(path: &Path, v: &parkwatch::audit::Verified, lang: Lang) -> (String, u8) {
    use parkwatch::audit::chain::Fault;
    use parkwatch::audit::Verified;
    let file = path.display();
    let broken = match v {
        Verified::Intact { records } => {
            return match lang {
                Lang::Zh => (format!("审计日志 {file}: 完整，{records} 条记录，哈希链校验通过"), 0),
                Lang::En => (format!("audit trail {file}: intact, {records} records, hash chain verified"), 0),
            }
        }
        Verified::Broken(b) => b,
    };
    let seq = if broken.seq < 0 { "?".to_owned() } else { broken.seq.to_string() };
    let what = match (&broken.fault, lang) {
        (Fault::HashMismatch, Lang::Zh) => "哈希不符：该记录的内容被修改".to_owned(),
        (Fault::HashMismatch, Lang::En) => "hash mismatch: the record was edited".to_owned(),
        (Fault::PrevLink, Lang::Zh) => "与前一条记录的链接断开：prev_hash 不是前一条记录的哈希".to_owned(),
        (Fault::PrevLink, Lang::En) => "prev link broken: its prev_hash is not the previous record's hash".to_owned(),
        (Fault::Gap { expected }, Lang::Zh) => format!("序号不连续：应为 {expected}，之前的记录被删除"),
        (Fault::Gap { expected }, Lang::En) => {
            format!("gap in seq: expected {expected}, records before it were removed")
        }
        (Fault::Unreadable { field }, Lang::Zh) => format!("字段 {field} 无法读取：类型被改动"),
        (Fault::Unreadable { field }, Lang::En) => format!("field {field} unreadable: not of its type"),
    };
    match lang {
        Lang::Zh => (format!("审计日志 {file}: 第 {seq} 条记录损坏（seq {seq}）：{what}"), 1),
        Lang::En => (format!("audit trail {file}: record seq {seq} is broken: {what}"), 1),
    }
}

/// The demo's people and admin token.
struct DemoAuth {
    /// Name, role (with grids), password.
    users: Vec<(String, String, String)>,
    token: String,
}

/// A demo admin and a demo officer of the first grid with random passwords, and an admin token, in the
/// demo's own auth database (removed with its directory when the demo ends), recorded in the demo's
/// audit trail.
fn demo_accounts(config: &config::Config) -> anyhow::Result<DemoAuth> {
    use parkwatch::auth::{admin, random_hex, Role};
    let conn = parkwatch::auth::store::open(&parkwatch::auth::db_path(&config.incidents.path))?;
    let known: Vec<String> = config.grids.iter().map(|g| g.id.clone()).collect();
    let grid = known.first().cloned().context("the demo config has no grid")?;
    audited(&config.audit_path(), Lang::En, |log| {
        let mut users = Vec::new();
        for (name, role, grids) in
            [("demo-admin", Role::Admin, None), ("demo-officer", Role::Officer, Some(vec![grid.clone()]))]
        {
            let password = random_hex(8)?;
            admin::add_user(&conn, name, role, &grids, &password, &known, admin::By { actor: "demo", audit: log })?;
            let label = match &grids {
                Some(g) => format!("{role}, grid {}", g.join(",")),
                None => role.to_string(),
            };
            users.push((name.to_owned(), label, password));
        }
        let (token, _) = admin::create_token(
            &conn,
            "demo",
            Role::Admin,
            None,
            None,
            &known,
            admin::By { actor: "demo", audit: log },
        )?;
        Ok(DemoAuth { users, token })
    })?
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

fn notify_test(file: &Path, receiver: &str, lang: Lang) -> anyhow::Result<()> {
    use parkwatch::notify::channel::Outcome;
    let config = config::load(file)?;
    let known: Vec<&str> = config.notify.receivers.iter().map(|r| r.id.as_str()).collect();
    if !known.contains(&receiver) {
        let list = if known.is_empty() { say(lang, "无", "none") } else { known.join(", ") };
        anyhow::bail!(say(
            lang,
            &format!("{} 中没有接收方 \"{receiver}\"（已配置：{list}）", file.display()),
            &format!("receiver \"{receiver}\" is not in {} (configured receivers: {list})", file.display()),
        ));
    }
    let mqtt = parkwatch::app::notify_mqtt_options(&config)?;
    match parkwatch::notify::test_receiver(&config, receiver, parkwatch::model::time::now_ns(), mqtt)? {
        Outcome::Delivered => {
            println!("{}", say(lang, &format!("{receiver}：测试消息已送达"), &format!("{receiver}: delivered")));
            Ok(())
        }
        Outcome::Temporary(e) => anyhow::bail!(say(
            lang,
            &format!("{receiver}：未送达，可稍后重试：{e}"),
            &format!("{receiver}: not delivered, try again later: {e}")
        )),
        Outcome::Permanent(e) => {
            anyhow::bail!(say(lang, &format!("{receiver}：被拒收：{e}"), &format!("{receiver}: refused: {e}")))
        }
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

/// `zh` or `en` by `lang`.
fn say(lang: Lang, zh: &str, en: &str) -> String {
    match lang {
        Lang::Zh => zh.to_owned(),
        Lang::En => en.to_owned(),
    }
}

/// What a user or token command works on: the auth database beside the incident database, the
/// config's grids, and the audit database the daemon records in.
struct AdminDb {
    conn: rusqlite::Connection,
    known: Vec<String>,
    audit: PathBuf,
}

fn auth_db(args: &AdminArgs) -> anyhow::Result<AdminDb> {
    let config = config::load(&args.config)?;
    let path = parkwatch::auth::db_path(&config.incidents.path);
    let conn = parkwatch::auth::store::open(&path)?;
    Ok(AdminDb { conn, known: config.grids.iter().map(|g| g.id.clone()).collect(), audit: config.audit_path() })
}

/// Runs `change` with an audit log opened on `path` (the daemon's file; a running daemon and this
/// command append to one chain, see `parkwatch::audit`) and returns its result once its record is
/// committed.
///
/// # Errors
/// The audit log cannot be opened, or the record could not be written.
fn audited<T>(path: &Path, lang: Lang, change: impl FnOnce(&parkwatch::audit::AuditLog) -> T) -> anyhow::Result<T> {
    let (log, writer) = parkwatch::audit::AuditLog::open(path, parkwatch::model::health::Health::new())?;
    let r = change(&log);
    drop(log);
    let lost = writer.join().map_err(|_| anyhow::anyhow!("the audit writer panicked"))?;
    anyhow::ensure!(
        lost == 0,
        say(
            lang,
            &format!("审计记录未能写入 {}", path.display()),
            &format!("the audit record could not be written to {}", path.display()),
        )
    );
    Ok(r)
}

/// Who acts on the command line, for the audit trail.
fn cli_actor() -> String {
    format!("cli:{}", std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into()))
}

fn role_arg(role: &str, lang: Lang) -> anyhow::Result<parkwatch::auth::Role> {
    parkwatch::auth::Role::parse(role).ok_or_else(|| {
        anyhow::anyhow!(say(
            lang,
            &format!("角色 {role:?} 不存在（可选：admin、safety_manager、supervisor、officer、viewer）"),
            &format!("role {role:?} does not exist; expected admin, safety_manager, supervisor, officer or viewer"),
        ))
    })
}

/// A new password: asked twice at a terminal without echo, or one line of standard input when piped.
/// Never an argument, so it shows in no process list or shell history.
fn read_password(name: &str, lang: Lang) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(say(
            lang,
            &format!("{name} 的新密码: "),
            &format!("new password for {name}: "),
        ))?;
        let again = rpassword::prompt_password(say(lang, "再输入一次: ", "again: "))?;
        anyhow::ensure!(first == again, say(lang, "两次输入的密码不一致", "the two passwords differ"));
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

fn grids_arg(grids: Vec<String>) -> parkwatch::auth::Grids {
    (!grids.is_empty()).then_some(grids)
}

fn users(command: UserCommand) -> ExitCode {
    let lang = match &command {
        UserCommand::Add { args, .. }
        | UserCommand::Passwd { args, .. }
        | UserCommand::Disable { args, .. }
        | UserCommand::List { args } => args.lang,
    };
    report(users_run(command, lang))
}

fn users_run(command: UserCommand, lang: Lang) -> anyhow::Result<()> {
    use parkwatch::auth::{admin, store};
    let actor = cli_actor();
    match command {
        UserCommand::Add { name, role, grids, args } => {
            let db = auth_db(&args)?;
            let role = role_arg(&role, lang)?;
            let grids = grids_arg(grids);
            let password = read_password(&name, lang)?;
            audited(&db.audit, lang, |log| {
                admin::add_user(
                    &db.conn,
                    &name,
                    role,
                    &grids,
                    &password,
                    &db.known,
                    admin::By { actor: &actor, audit: log },
                )
            })??;
            println!("{}", say(lang, &format!("已添加用户 {name}（{role}）"), &format!("user {name} added ({role})")));
        }
        UserCommand::Passwd { name, args } => {
            let db = auth_db(&args)?;
            anyhow::ensure!(
                store::user(&db.conn, &name)?.is_some(),
                say(lang, &format!("用户 {name:?} 不存在"), &format!("user {name:?} does not exist"))
            );
            let password = read_password(&name, lang)?;
            audited(&db.audit, lang, |log| {
                admin::set_password(&db.conn, &name, &password, admin::By { actor: &actor, audit: log })
            })??;
            println!("{}", say(lang, &format!("已更改 {name} 的密码"), &format!("password of {name} changed")));
        }
        UserCommand::Disable { name, args } => {
            let db = auth_db(&args)?;
            audited(&db.audit, lang, |log| {
                admin::disable_user(&db.conn, &name, admin::By { actor: &actor, audit: log })
            })??;
            println!("{}", say(lang, &format!("已停用用户 {name}"), &format!("user {name} disabled")));
        }
        UserCommand::List { args } => {
            let db = auth_db(&args)?;
            let header = say(lang, "用户\t角色\t网格\t状态", "user\trole\tgrids\tstatus");
            println!("{header}");
            for u in store::users(&db.conn)? {
                let grids = u.grids.map(|g| g.join(",")).unwrap_or_else(|| say(lang, "全园区", "site"));
                let status =
                    if u.disabled { say(lang, "已停用", "disabled") } else { say(lang, "启用", "enabled") };
                println!("{}\t{}\t{grids}\t{status}", u.name, u.role);
            }
        }
    }
    Ok(())
}

fn tokens(command: TokenCommand) -> ExitCode {
    let lang = match &command {
        TokenCommand::Create { args, .. } | TokenCommand::List { args } | TokenCommand::Revoke { args, .. } => {
            args.lang
        }
    };
    report(tokens_run(command, lang))
}

fn tokens_run(command: TokenCommand, lang: Lang) -> anyhow::Result<()> {
    use parkwatch::auth::{admin, store};
    let actor = cli_actor();
    match command {
        TokenCommand::Create { name, role, grids, expires_days, args } => {
            let db = auth_db(&args)?;
            let role = role_arg(&role, lang)?;
            let expires = expires_days.map(|d| parkwatch::model::time::now_ns() + d as i64 * 86_400 * 1_000_000_000);
            let (text, token) = audited(&db.audit, lang, |log| {
                admin::create_token(
                    &db.conn,
                    &name,
                    role,
                    grids_arg(grids),
                    expires,
                    &db.known,
                    admin::By { actor: &actor, audit: log },
                )
            })??;
            eprintln!(
                "{}",
                say(
                    lang,
                    &format!("已创建令牌 {}（{name}，{role}）。令牌只显示这一次，请妥善保存：", token.id),
                    &format!("token {} created ({name}, {role}). It is shown this once only; keep it safe:", token.id),
                )
            );
            println!("PARKWATCH_TOKEN={text}");
        }
        TokenCommand::List { args } => {
            let db = auth_db(&args)?;
            println!(
                "{}",
                say(
                    lang,
                    "编号\t名称\t角色\t网格\t到期\t最后使用\t状态",
                    "id\tname\trole\tgrids\texpires\tlast used\tstatus"
                )
            );
            let now = parkwatch::model::time::now_ns();
            let when = |t: Option<i64>| t.map(parkwatch::model::time::fmt_ns).unwrap_or_else(|| "-".into());
            for t in store::tokens(&db.conn)? {
                let grids = t.grids.map(|g| g.join(",")).unwrap_or_else(|| say(lang, "全园区", "site"));
                let status = if t.revoked_at.is_some() {
                    say(lang, "已吊销", "revoked")
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    say(lang, "已过期", "expired")
                } else {
                    say(lang, "有效", "valid")
                };
                println!(
                    "{}\t{}\t{}\t{grids}\t{}\t{}\t{status}",
                    t.id,
                    t.name,
                    t.role,
                    when(t.expires_at),
                    when(t.last_used_at)
                );
            }
        }
        TokenCommand::Revoke { id, args } => {
            let db = auth_db(&args)?;
            audited(&db.audit, lang, |log| {
                admin::revoke_token(&db.conn, &id, admin::By { actor: &actor, audit: log })
            })??;
            println!("{}", say(lang, &format!("已吊销令牌 {id}"), &format!("token {id} revoked")));
        }
    }
    Ok(())
}

/// Exit status of `parkwatch status` when the gateway does not answer (or not with its health).
const UNREACHABLE: u8 = 3;

fn status(url: &str, lang: Lang) -> ExitCode {
    let url = format!("{}/api/v1/health", url.trim_end_matches('/'));
    let mut request = ureq::get(&url).timeout(Duration::from_secs(5));
    // The token comes from the environment only, so it never shows in a process list.
    if let Ok(token) = std::env::var("PARKWATCH_TOKEN") {
        request = request.set("Authorization", &format!("Bearer {}", token.trim()));
    }
    let answer = request
        .call()
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_string().map_err(|e| e.to_string()))
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string()));
    match answer {
        Ok(health) => match health_table(&health, lang) {
            Some((table, code)) => {
                print!("{table}");
                ExitCode::from(code)
            }
            None => {
                eprintln!("parkwatch: error: {url} did not answer with a health report");
                ExitCode::from(UNREACHABLE)
            }
        },
        Err(e) => {
            match lang {
                Lang::Zh => eprintln!("parkwatch: 无法连接网关 {url}: {e}"),
                Lang::En => eprintln!("parkwatch: cannot reach the gateway at {url}: {e}"),
            }
            ExitCode::from(UNREACHABLE)
        }
    }
}

/// The table a person reads, and the exit status (0 ok, 1 degraded, 2 failed); `None` when `health`
/// is not a health report.
fn health_table(health: &serde_json::Value, lang: Lang) -> Option<(String, u8)> {
    let tz: chrono_tz::Tz = health["timezone"].as_str().and_then(|t| t.parse().ok()).unwrap_or(chrono_tz::UTC);
    let components = health["components"].as_array()?;
    let header = match lang {
        Lang::Zh => ["组件", "状态", "原因", "起始时间"],
        Lang::En => ["component", "status", "reason", "since"],
    };
    let mut rows = vec![header.map(str::to_owned)];
    let mut worst = 0;
    for c in components {
        let (code, word) = match (c["status"].as_str()?, lang) {
            ("ok", Lang::Zh) => (0, "正常"),
            ("degraded", Lang::Zh) => (1, "降级"),
            ("failed", Lang::Zh) => (2, "故障"),
            ("ok", Lang::En) => (0, "ok"),
            ("degraded", Lang::En) => (1, "degraded"),
            ("failed", Lang::En) => (2, "failed"),
            _ => return None,
        };
        worst = worst.max(code);
        let since = chrono::DateTime::from_timestamp_nanos(c["since_ns"].as_i64()?)
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let reason = c["reason"].as_str().unwrap_or_default();
        let reason = if reason.is_empty() { "-" } else { reason };
        rows.push([c["component"].as_str()?.to_owned(), word.to_owned(), reason.to_owned(), since]);
    }
    let mut widths = [0; 4];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(display_width(cell));
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            line.push_str(cell);
            // The reason can be long; only the columns before the last are padded.
            if i < 3 {
                line.push_str(&" ".repeat(w - display_width(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let zone = match lang {
        Lang::Zh => format!("时区: {}\n", tz.name()),
        Lang::En => format!("time zone: {}\n", tz.name()),
    };
    out.push_str(&zone);
    Some((out, worst))
}

/// Terminal columns of `s`: CJK and full-width characters take two.
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF => 2,
            0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 => 2,
            0xFFE0..=0xFFE6 => 2,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> serde_json::Value {
        serde_json::json!({
            "status": "failed",
            "timezone": "Asia/Shanghai",
            "components": [
                { "component": "broker:local", "status": "failed", "reason": "connection lost: reset",
                  "since_ns": 1_700_000_000_000_000_000_i64 },
                { "component": "modbus:bus1", "status": "degraded", "reason": "offline: 电表1",
                  "since_ns": 1_700_000_000_000_000_000_i64 },
                { "component": "outbox", "status": "ok", "reason": "",
                  "since_ns": 1_700_000_000_000_000_000_i64 },
            ]
        })
    }

    #[test]
    fn status_table_in_chinese_with_local_time_and_worst_exit_code() {
        let (table, code) = health_table(&report(), Lang::Zh).unwrap();
        assert_eq!(code, 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "组件          状态  原因                    起始时间");
        assert_eq!(lines[1], "broker:local  故障  connection lost: reset  2023-11-15 06:13:20");
        assert_eq!(lines[2], "modbus:bus1   降级  offline: 电表1          2023-11-15 06:13:20");
        assert_eq!(lines[3], "outbox        正常  -                       2023-11-15 06:13:20");
        assert_eq!(lines[4], "时区: Asia/Shanghai");
    }

    #[test]
    fn audit_reports_name_the_broken_record_in_both_languages() {
        use parkwatch::audit::chain::{Broken, Fault};
        use parkwatch::audit::Verified;
        let path = Path::new("/var/lib/parkwatch/audit.db");
        let broken = Verified::Broken(Broken { seq: 3, fault: Fault::HashMismatch });
        let (zh, code) = verify_report(path, &broken, Lang::Zh);
        assert_eq!(code, 1);
        assert_eq!(zh, "审计日志 /var/lib/parkwatch/audit.db: 第 3 条记录损坏（seq 3）：哈希不符：该记录的内容被修改");
        let gap = Verified::Broken(Broken { seq: 5, fault: Fault::Gap { expected: 4 } });
        let (en, _) = verify_report(path, &gap, Lang::En);
        assert_eq!(
            en,
            "audit trail /var/lib/parkwatch/audit.db: record seq 5 is broken: gap in seq: expected 4, records before it were removed"
        );
        let (ok, code) = verify_report(path, &Verified::Intact { records: 12 }, Lang::En);
        assert_eq!(
            (ok.as_str(), code),
            ("audit trail /var/lib/parkwatch/audit.db: intact, 12 records, hash chain verified", 0)
        );
    }

    #[test]
    fn status_table_in_english() {
        let mut r = report();
        r["components"].as_array_mut().unwrap().remove(0);
        let (table, code) = health_table(&r, Lang::En).unwrap();
        assert_eq!(code, 1);
        assert!(table.starts_with("component    status    reason"), "{table}");
        assert!(table.contains("modbus:bus1  degraded  offline: 电表1"), "{table}");
        assert!(health_table(&serde_json::json!({ "error": "x" }), Lang::En).is_none());
    }
}
