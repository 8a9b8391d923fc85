//! Wires the modules into a running gateway and shuts it down in order: sources stop reading and hand
//! over what they hold, the core drains its channel, then the API stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{self, AppState};
use crate::audit::{AuditLog, AuditReader};
use crate::broker::{self, BrokerError};
use crate::config::Config;
use crate::core::packs::{self, Reloader};
use crate::core::rules::PackError;
use crate::core::{self, Core};
use crate::incident::changes::ChangeLog;
use crate::incident::{self, Manual, StoreError};
use crate::metrics::Metrics;
use crate::model::pool::SamplePool;
use crate::model::{Registry, SharedRegistry};
use crate::sim;
use crate::source::mqtt::{MqttError, MqttSource, SourceContext};

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("API cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("API server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Incidents(#[from] StoreError),
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    #[error(transparent)]
    Modbus(#[from] crate::source::modbus::ModbusError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("API TLS: {0}")]
    Tls(#[from] api::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("HJ 212 listener {id} cannot listen on {addr}: {source}")]
    Hj212Bind { id: String, addr: SocketAddr, source: std::io::Error },
    #[error("rule packs have errors:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<PackError>),
}

/// Extras for `demo` and tests.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Run the simulated park against this broker (`host`, `port`), one round per period.
    pub simulate: Option<(String, u16, Duration)>,
    /// Serve the config's Modbus devices from a simulated Modbus TCP server on this address.
    pub modbus_sim: Option<SocketAddr>,
    /// Serve the config's DL/T 645 meters as simulated meters behind a transparent serial server on
    /// this address (port 0: any free port); the config's TCP buses are pointed at it.
    pub dlt645_sim: Option<SocketAddr>,
    /// Run simulated HJ 212 loggers for `[[hj212.loggers]]` against the first HJ 212 listener, one
    /// real-time report per period.
    pub hj212_sim: Option<Duration>,
    /// The configuration file, read again on SIGHUP; without one only the rule packs reload.
    pub config_file: Option<std::path::PathBuf>,
}

/// Session and throttling limits from `[auth]`.
pub fn auth_settings(config: &Config) -> crate::auth::Settings {
    let a = &config.auth;
    crate::auth::Settings {
        session_idle: Duration::from_secs(a.session_idle_secs),
        session_max: Duration::from_secs(a.session_max_secs),
        user_failures: a.user_failures,
        source_failures: a.source_failures,
        failure_window: Duration::from_secs(60),
        lockout: Duration::from_secs(a.lockout_secs),
    }
}

/// Runs the gateway until `shutdown` is cancelled, then stops cleanly.
///
/// # Errors
/// Start-up failures: a port already taken, unreadable TLS files, an audit log that cannot be opened.
pub async fn run(mut config: Config, shutdown: CancellationToken, extras: Extras) -> Result<(), AppError> {
    // Bound before the pollers are built, so they are pointed at the port it got.
    let dlt645_sim = match extras.dlt645_sim {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
            let local = listener.local_addr().map_err(|source| AppError::Bind { addr, source })?;
            for b in config.dlt645.buses.iter_mut().filter(|b| b.kind == crate::config::dlt645::BusKind::Tcp) {
                b.host = Some(local.ip().to_string());
                b.port = Some(local.port());
            }
            let meters: Vec<sim::dlt645::SimMeter> = config
                .devices
                .iter()
                .filter_map(|d| d.dlt645.as_ref()?.resolved_address)
                .map(sim::dlt645::SimMeter::typical)
                .collect();
            Some((listener, std::sync::Arc::new(std::sync::Mutex::new(meters))))
        }
        None => None,
    };
    // Devices provisioned from topics in earlier runs come back with the configured ones.
    let provision_file = config.incidents.path.with_file_name("provisioned.json");
    let provisioned = crate::reload::provision::load(&provision_file, &config);
    let registry =
        Arc::new(Registry::default().evolve(&config, &crate::reload::provision::devices(&config, &provisioned)));
    let shared = SharedRegistry::new(registry.clone());
    let provisioning = config.mqtt.subscriptions.iter().any(|s| s.provision.is_some());
    let (provision_tx, provision_rx) = match provisioning {
        true => {
            let (tx, rx) = mpsc::channel(1024);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    if config.broker.embedded {
        let cfg = config.broker.clone();
        tokio::task::spawn_blocking(move || broker::start(&cfg))
            .await
            .map_err(|e| BrokerError::Start(e.to_string()))??;
    }
    let metrics = Arc::new(Metrics::new(
        config.mqtt.brokers.iter().map(|b| b.id.clone()).collect(),
        config.mqtt.subscriptions.iter().map(|s| (s.broker.clone(), s.topic.clone())).collect(),
        config.api.rejects_kept,
    ));
    let pool = Arc::new(SamplePool::default());
    let (tx, rx) = mpsc::channel(config.core.channel_batches);
    // A certificate that does not load stops the start: serving plain HTTP instead would be worse.
    let tls = match config.api.tls() {
        Some((cert, key)) => Some(api::tls::Tls::new(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| AppError::Bind { addr: config.api.listen, source })?;
    let bind_err = |source| AppError::Bind { addr: config.api.listen, source };
    let listener = match &tls {
        Some(t) => api::tls::ApiListener::tls(listener, t).map_err(bind_err)?,
        None => api::tls::ApiListener::plain(listener).map_err(bind_err)?,
    };
    let health = crate::model::health::Health::new();
    let (audit, audit_thread) = AuditLog::open(&config.audit_path(), health.clone())?;

    // Incidents first: the engine continues the alarms that were open when the gateway stopped.
    let (conn, open, next_incident) = incident::open(&config.incidents.path)?;
    let (mut engine, pack_names, pack_errors) =
        packs::build_lenient(&config, registry.clone(), next_incident).map_err(AppError::Rules)?;
    if config.rules.strict && !pack_errors.is_empty() {
        return Err(AppError::Rules(pack_errors));
    }
    let clock: Arc<dyn crate::model::time::Clock> = Arc::new(crate::model::time::SystemClock::new());
    // Missed patrols are the patrol tracker's; the rules take over the rest.
    let (patrol_open, open): (Vec<_>, Vec<_>) = open.into_iter().partition(|i| i.rule == crate::people::patrol::RULE);
    let people = Arc::new(crate::people::Directory::from_config(&config));
    let mut tracker =
        crate::people::patrol::Tracker::new(crate::people::patrol::checkpoints(&config), people.tz, clock.wall_ns());
    let mut orphans = engine.restore(&open, clock.now());
    orphans.extend(tracker.restore(&patrol_open));
    for e in &pack_errors {
        tracing::error!(error = %e, "Rule problem; the other rules run.");
        engine.system_incident(
            crate::model::time::now_ns(),
            "pack",
            crate::model::DeviceId(u32::MAX),
            format!("rule problem: {e}"),
        );
    }
    for m in engine.missing_params() {
        tracing::warn!(rule = %m.rule, device = %m.device, param = %m.param, problem = %m, "Required rule parameter not set.");
    }
    info!(
        rules = engine.rules().len(),
        packs = pack_names.len(),
        restored = open.len() - orphans.len(),
        "Rules loaded."
    );
    let (store, store_thread) = incident::spawn(conn)?;
    for id in orphans {
        let note = Some("rule or device no longer configured".to_owned());
        if let Err(e) = store.manual(id, Manual::Close, "parkwatch".into(), note, crate::model::time::now_ns()).await {
            tracing::warn!(incident = id, error = %e, "Could not close an orphaned incident.");
        }
    }
    // Notifications read the change log by cursor on their own thread, off the sample path.
    let notify_stop = CancellationToken::new();
    let (notify_handle, notify_thread) = if config.notify.receivers.is_empty() {
        (None, None)
    } else {
        let directory =
            Arc::new(crate::notify::people::SiteDirectory::new(people.clone(), config.notify.contacts.clone()));
        let planner =
            crate::notify::Planner::new(&config, shared.clone(), directory).with_mqtt(notify_mqtt_options(&config)?);
        let path = config.notify.db_path(&config.incidents.path);
        let log = ChangeLog::open(&config.incidents.path)?;
        let notifier = crate::notify::Notifier::open(planner, &path, log, clock.clone())?;
        let handle = crate::notify::NotifyHandle { path, site: config.site.id.clone(), metrics: notifier.metrics() };
        let stop = notify_stop.clone();
        let committed = store.committed();
        let thread = std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || notifier.run(stop, Some(committed)))
            .map_err(|e| AppError::Notify(crate::notify::NotifyError::Thread(e.to_string())))?;
        (Some(handle), Some(thread))
    };
    // The edge history takes a copy of every applied batch's samples on its own thread; the core
    // never waits for it.
    let (history, history_thread) = match crate::history::Settings::from_config(&config) {
        // A history that cannot open stays off: trends are not worth the ingestion and alarms.
        Some(s) => match crate::history::start(&s, &shared, clock.clone()) {
            Ok((tap, reader, thread)) => (Some((tap, reader)), Some(thread)),
            Err(e) => {
                tracing::error!(error = %e, "Edge history cannot open; running without it.");
                health.set("history", crate::model::health::Status::Degraded, &format!("cannot open: {e}"));
                (None, None)
            }
        },
        None => (None, None),
    };
    let core = Core::new(registry.clone(), metrics.clone(), pool.clone(), config.core.events_kept)
        .with_clock(clock)
        .with_engine(engine, pack_names)
        .with_load_errors(pack_errors)
        .with_patrols(tracker);
    let (core, history) = match history {
        Some((tap, reader)) => (core.with_tap(Box::new(move |s| tap.offer(s))), Some(reader)),
        None => (core, None),
    };
    let forwarding = !config.forward.targets.is_empty();
    let (fwd_tx, fwd_rx) = mpsc::channel(config.core.channel_batches);
    let (handle, core_task) = core::spawn(core, rx, Some(store.clone()), forwarding.then(|| fwd_tx.clone()));
    let forwarder = if forwarding {
        let log = ChangeLog::open(&config.incidents.path)?;
        let incidents = Some((log, store.committed()));
        let trail = Some((AuditReader::open(audit.path())?, audit.committed()));
        Some(crate::forward::start(&config, shared.clone(), pool.clone(), fwd_rx, incidents, trail, handle.clone())?)
    } else {
        drop(fwd_rx);
        None
    };
    // The central publisher stops after the core has drained, so the last changes go out too.
    let central_stop = CancellationToken::new();
    let central_metrics =
        config.forward.mqtt.as_ref().map(|_| Arc::new(crate::forward::central::CentralMetrics::default()));
    let central = match &config.forward.mqtt {
        Some(m) => {
            let b = config.mqtt.brokers.iter().find(|b| b.id == m.broker).ok_or_else(|| MqttError::Subscription {
                topic: String::new(),
                message: format!("unknown broker {}", m.broker),
            })?;
            let options = crate::source::mqtt::options(b, format!("parkwatch-{}-central", config.site.id))?;
            let log = ChangeLog::open(&config.incidents.path)?;
            Some(tokio::spawn(crate::forward::central::run(
                options,
                config.site.id.clone(),
                log,
                store.committed(),
                central_metrics.clone().unwrap_or_default(),
                central_stop.clone(),
            )))
        }
        None => None,
    };
    let (pollers, modbus_status) = crate::source::modbus::pollers(&config, &registry)?;
    let (meter_pollers, dlt645_status) = crate::source::dlt645::pollers(&config, &registry);
    let hj212 = crate::source::hj212::Server::new(&config, registry.clone(), metrics.clone());
    let hj212_status = hj212.status();
    let hj212 = if config.hj212.listeners.is_empty() {
        None
    } else {
        Some(hj212.bind().await.map_err(|(id, addr, source)| AppError::Hj212Bind { id, addr, source })?)
    };
    let hj212_addr = hj212.as_ref().and_then(|b| b.local_addrs().first().copied());
    let auth =
        crate::auth::Auth::open(&crate::auth::db_path(&config.incidents.path), auth_settings(&config), audit.clone())?;
    let config = Arc::new(config);
    let reloader = Reloader::new(config.clone(), shared.clone(), handle.clone());
    let provisioner = crate::reload::Provisioner::new(reloader.clone(), provision_file, provisioned);
    let config_reload = Arc::new(crate::reload::ConfigReload::new(
        extras.config_file.clone(),
        reloader.clone(),
        provisioner.status.clone(),
    ));
    if let Some(rx) = provision_rx {
        // Ends when the sources, the only senders, have stopped.
        tokio::spawn(provisioner.clone().run(rx));
    }
    let reload_task = tokio::spawn(reloader.clone().watch(shutdown.clone()));
    let sighup_task = tokio::spawn(config_reload.clone().on_sighup(shutdown.clone()));
    let streams = api::stream::Streams::default();
    // Linkage: the only commands the gateway sends, each checked before anything is written.
    let (actions, actions_task) = if config.actions.is_empty() {
        (None, None)
    } else {
        let (a, t) =
            crate::actions::start(config.clone(), registry.clone(), handle.clone(), audit.clone(), shutdown.clone());
        info!(actions = config.actions.len(), "Linkage actions declared.");
        // Rules act through the committed change log, like every other sink.
        let follow = tokio::spawn(crate::actions::follow(
            a.clone(),
            store.clone(),
            handle.clone(),
            registry.clone(),
            shutdown.clone(),
        ));
        (Some(a), Some((t, follow)))
    };
    let state = AppState {
        registry: shared.clone(),
        core: handle,
        metrics: metrics.clone(),
        batches: tx.downgrade(),
        incidents: Some(store.clone()),
        reloader: Some(reloader),
        config_reload: Some(config_reload.clone()),
        provisioning: provisioning.then(|| provisioner.clone()),
        forward: forwarder.as_ref().map(|f| f.metrics.clone()),
        modbus: modbus_status,
        dlt645: dlt645_status,
        health,
        central: central_metrics,
        audit: audit.clone(),
        people,
        notify: notify_handle,
        history,
        access: api::Access { auth, metrics_auth: config.api.metrics_auth, cookie_secure: config.cookie_secure() },
        streams: streams.clone(),
        hj212: hj212_status,
        reports: Arc::new(crate::report::Reporter::new(&config, registry.clone())),
        actions: actions.clone(),
    };
    let health_task = tokio::spawn(api::health::Evaluator::new(&state).run(shutdown.clone()));
    // The gateway's own health goes to the central stores once a minute (measurement `gateway`),
    // through the outbox like every other line.
    let gateway_health = forwarder
        .as_ref()
        .map(|f| tokio::spawn(api::health::report_gateway_health(state.clone(), f.health_sender(), shutdown.clone())));
    // Closed days of the energy accounts go the same way (measurement `energy_daily`).
    let energy_days = forwarder.as_ref().filter(|_| config.history.enabled).map(|f| {
        let state_file = config.forward.outbox.with_file_name("energy_daily.last");
        tokio::spawn(energy_daily(state.reports.clone(), f.health_sender(), state_file, shutdown.clone()))
    });
    let ctx = SourceContext {
        registry: shared.clone(),
        provision: provision_tx,
        metrics: metrics.clone(),
        pool,
        tx,
        batch_samples: config.core.batch_samples,
    };
    let mut sources = Vec::new();
    for p in pollers {
        sources.push(tokio::spawn(p.run(ctx.tx.clone(), shutdown.clone())));
    }
    for p in meter_pollers {
        sources.push(tokio::spawn(p.run(ctx.tx.clone(), shutdown.clone())));
    }
    for (i, b) in config.mqtt.brokers.iter().enumerate() {
        let mut source = MqttSource::new(&config, i, ctx.clone())?;
        if let Some(updates) = config_reload.subscriptions(&b.id) {
            source = source.with_updates(updates);
        }
        sources.push(tokio::spawn(source.run(shutdown.clone())));
    }
    if let Some(server) = hj212 {
        sources.push(tokio::spawn(server.run(ctx.tx.clone(), shutdown.clone())));
    }
    // Only the sources hold senders now, so the core stops once they have; until shutdown one more is
    // held here, so a gateway without sources (rules on system incidents only) keeps its core.
    let idle = ctx.tx.clone();
    drop(ctx);

    let api_stop = CancellationToken::new();
    let api = {
        let stop = api_stop.clone();
        // The client's address feeds login throttling and the audit trail.
        let app = api::router(state).into_make_service_with_connect_info::<api::tls::Peer>();
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await })
    };
    let tls_task = tls.map(|t| tokio::spawn(t.reload_on_sighup(shutdown.clone())));
    info!(api = %config.api.listen, https = tls_task.is_some(), brokers = config.mqtt.brokers.len(), devices = registry.devices.len(), points = registry.points.len(), "parkwatch running.");

    // Polled devices are not published over MQTT by the simulated park.
    let mut modbus_devices: std::collections::HashSet<String> =
        config.devices.iter().filter(|d| d.modbus.is_some() || d.dlt645.is_some()).map(|d| d.id.clone()).collect();
    // HJ 212 loggers' devices report through their simulated loggers, not over MQTT.
    modbus_devices.extend(config.hj212.loggers.iter().map(|l| l.device.clone()));
    let hj212_sim = match (extras.hj212_sim, hj212_addr) {
        (Some(period), Some(addr)) => Some(tokio::spawn(sim::hj212::run(
            registry.clone(),
            config.hj212.loggers.clone(),
            addr,
            period,
            shutdown.clone(),
        ))),
        _ => None,
    };
    let modbus_sim = match extras.modbus_sim {
        Some(addr) => {
            let profiles = crate::source::modbus::profile::load_all(&config.modbus.profile_dirs).unwrap_or_default();
            let devices: Vec<(u8, crate::source::modbus::profile::Profile)> = config
                .devices
                .iter()
                .filter_map(|d| d.modbus.as_ref())
                .filter_map(|m| Some((m.unit, profiles.get(&m.profile)?.clone())))
                .collect();
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
            Some(tokio::spawn(sim::modbus::run_park(devices, listener, Duration::from_secs(1), shutdown.clone())))
        }
        None => None,
    };
    let dlt645_sim = dlt645_sim.map(|(listener, meters)| {
        tokio::spawn(sim::dlt645::run_tcp(listener, meters.clone(), shutdown.clone()));
        tokio::spawn(sim::dlt645::walk(meters, Duration::from_secs(1), shutdown.clone()))
    });
    let sim_task = extras.simulate.map(|(host, port, period)| {
        let officers = config.grids.iter().map(|g| (g.id.clone(), g.officers.clone())).collect();
        tokio::spawn(sim::run(registry.clone(), modbus_devices, officers, host, port, period, shutdown.clone()))
    });

    shutdown.cancelled().await;
    info!("Shutting down.");
    drop(idle);
    for s in sources {
        let _ = s.await;
    }
    if let Some(t) = sim_task {
        let _ = t.await;
    }
    if let Some(t) = modbus_sim {
        let _ = t.await;
    }
    if let Some(t) = dlt645_sim {
        let _ = t.await;
    }
    if let Some(t) = hj212_sim {
        let _ = t.await;
    }
    let _ = reload_task.await;
    let _ = sighup_task.await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    // Every sender is gone now: the core drains what is queued, persists its incident changes, stops.
    let _ = core_task.await;
    // With the core gone the history's channel closes: the writer writes what it holds and ends.
    if let Some(t) = history_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // The last incident changes are committed before the sinks read them one last time.
    let _ = store.sync().await;
    central_stop.cancel();
    notify_stop.cancel();
    if let Some(t) = notify_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let _ = health_task.await;
    if let Some((engine, follow)) = actions_task {
        let _ = follow.await;
        let _ = engine.await;
    }
    if let Some(t) = gateway_health {
        let _ = t.await;
    }
    if let Some(t) = energy_days {
        let _ = t.await;
    }
    if let Some(c) = central {
        let _ = c.await;
    }
    drop(fwd_tx);
    if let Some(f) = forwarder {
        let _ = tokio::task::spawn_blocking(move || f.stop()).await;
    }
    streams.close();
    api_stop.cancel();
    let served = tokio::time::timeout(Duration::from_secs(5), api).await;
    // The store thread ends once its last handle is gone; wait so every change is on disk.
    drop(store);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || store_thread.join())).await;
    // Likewise the audit trail, once the API (the last to record) has stopped.
    drop(audit);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || audit_thread.join())).await;
    if let Ok(Ok(Err(e))) = served {
        return Err(AppError::Serve(e));
    }
    info!("Stopped.");
    Ok(())
}

/// Connection options for each MQTT notification receiver, by receiver id: its broker's address,
/// credentials and TLS, with a client id of its own so it never takes over the sources' sessions.
///
/// # Errors
/// A receiver's broker has TLS files that cannot be read.
pub fn notify_mqtt_options(
    config: &Config,
) -> Result<std::collections::HashMap<String, rumqttc::MqttOptions>, MqttError> {
    let mut out = std::collections::HashMap::new();
    for r in config.notify.receivers.iter().filter(|r| r.kind == crate::config::notify::ReceiverKind::Mqtt) {
        let Some(b) = config.mqtt.brokers.iter().find(|b| Some(&b.id) == r.broker.as_ref()) else { continue };
        let id = format!("parkwatch-{}-notify-{}", config.site.id, r.id);
        out.insert(r.id.clone(), crate::source::mqtt::options(b, id)?);
    }
    Ok(out)
}

/// Hands each closed local day of the energy accounts to the outbox as `energy_daily` lines (checked
/// once a minute; a day is computed ten minutes after it ended, when the history holds all of it).
/// The last day handed over is kept in `state_file`; after a start that day is sent again, since it
/// may not have been committed, and overwrites itself in the store.
async fn energy_daily(
    reporter: Arc<crate::report::Reporter>,
    tx: mpsc::Sender<crate::forward::line::Extra>,
    state_file: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    use crate::forward::line::{EnergyDay, Extra};
    let tz = reporter.registry.site.timezone;
    let mut first_turn = true;
    let mut failing = false;
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let last = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok());
        let now_ms = crate::model::time::now_ns() / 1_000_000;
        let Some(period) = crate::report::energy_days_due(tz, now_ms, last, first_turn, 600_000, 35) else {
            first_turn = false;
            continue;
        };
        let (r, p) = (reporter.clone(), period.clone());
        let made = match tokio::task::spawn_blocking(move || r.energy(&p, &[], &|_| true)).await {
            Ok(made) => made,
            Err(_) => return,
        };
        let report = match made {
            Ok(report) => report,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, days = %period.label, "The daily energy accounts cannot be made for the central store; retried every minute.");
                }
                failing = true;
                continue;
            }
        };
        let mut days = Vec::new();
        for m in &report.meters {
            // A day without a single reading has no figures to send.
            for d in m.days.iter().filter(|d| d.kwh != 0.0 || d.peak_kw.is_some() || d.gap_minutes != 0.0) {
                days.push(EnergyDay {
                    day_ns: d.start_ms * 1_000_000,
                    device: m.device.clone(),
                    point: m.point.clone(),
                    grid: m.grid.clone(),
                    building: m.building.clone(),
                    tenant: m.tenant.clone(),
                    kwh: d.kwh,
                    peak_kw: d.peak_kw,
                    gap_minutes: d.gap_minutes,
                    tou: report.buckets.iter().copied().zip(d.tou.iter().copied()).collect(),
                });
            }
        }
        let n = days.len();
        if tx.send(Extra::EnergyDays(days)).await.is_err() {
            return;
        }
        if let Err(e) = std::fs::write(&state_file, period.last.to_string()) {
            tracing::warn!(error = %e, file = %state_file.display(), "Cannot note the last energy day sent; it will be sent again.");
        }
        if failing {
            tracing::info!("The daily energy accounts can be made again.");
        }
        failing = false;
        first_turn = false;
        info!(days = %period.label, lines = n, "Daily energy accounts handed to the outbox.");
    }
}
