//! Where rule packs come from (the default packs built into the binary, plus the config's directories)
//! and how the config's rule settings become engine settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::Dynamic;

use super::engine::{Engine, Maintenance, Override, Scope, Settings};
use super::rules::{self, Calendar, Limits, PackError};
use crate::config::{validate::parse_hhmm, Config};
use crate::model::{Registry, SharedRegistry};

/// The default packs, shipped in the binary so an installed gateway needs no repository checkout.
pub const BUILTIN: [(&str, &str); 4] = [
    ("builtin/electrical.rhai", include_str!("../../../rules/electrical.rhai")),
    ("builtin/emissions.rhai", include_str!("../../../rules/emissions.rhai")),
    ("builtin/access.rhai", include_str!("../../../rules/access.rhai")),
    ("builtin/quality.rhai", include_str!("../../../rules/quality.rhai")),
];

/// Reads every pack: built-in ones when enabled, then `*.rhai` in each directory, sorted by name.
///
/// # Errors
/// A directory or file that cannot be read.
pub fn sources(builtin: bool, dirs: &[PathBuf]) -> Result<Vec<(String, String)>, Vec<PackError>> {
    let mut out: Vec<(String, String)> = Vec::new();
    if builtin {
        out.extend(BUILTIN.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())));
    }
    let mut errors = Vec::new();
    for dir in dirs {
        match pack_files(dir) {
            Ok(files) => {
                for f in files {
                    match std::fs::read_to_string(&f) {
                        Ok(text) => out.push((f.display().to_string(), text)),
                        Err(e) => errors.push(PackError {
                            pack: f.display().to_string(),
                            rule: None,
                            message: e.to_string(),
                            config: false,
                        }),
                    }
                }
            }
            Err(e) => errors.push(PackError {
                pack: dir.display().to_string(),
                rule: None,
                message: e.to_string(),
                config: false,
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The `*.rhai` files of a directory, sorted.
///
/// # Errors
/// The directory cannot be listed.
pub fn pack_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A fingerprint of the directories' packs (names, sizes, modification times), to notice changes.
pub fn fingerprint(dirs: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    for d in dirs {
        for f in pack_files(d).unwrap_or_default() {
            let meta = std::fs::metadata(&f).ok();
            out.push((f, meta.as_ref().map_or(0, std::fs::Metadata::len), meta.and_then(|m| m.modified().ok())));
        }
    }
    out
}

/// The engine settings the config asks for.
pub fn settings(config: &Config, registry: &Registry) -> Settings {
    let r = &config.rules;
    let overrides = r
        .overrides
        .iter()
        .map(|o| Override {
            rule: o.rule.clone(),
            scope: match (&o.device, &o.grid, &o.device_type, &o.category) {
                (Some(d), ..) => Scope::Device(d.clone()),
                (_, Some(g), ..) => Scope::Grid(g.clone()),
                (_, _, Some(t), _) => Scope::Type(t.clone()),
                (.., Some(c)) => Scope::Category(c.clone()),
                _ => Scope::Site,
            },
            params: o.params.iter().map(|(k, v)| (k.clone(), toml_to_dynamic(v))).collect(),
        })
        .collect();
    let ts = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().and_then(|t| t.timestamp_nanos_opt());
    let mut maintenance = Vec::new();
    for m in &r.maintenance {
        let Some(from) = ts(&m.from) else { continue };
        let to = m.to.as_deref().and_then(ts);
        for d in &m.devices {
            maintenance.push(Maintenance { scope: Scope::Device(d.clone()), from, to });
        }
        for g in &m.grids {
            maintenance.push(Maintenance { scope: Scope::Grid(g.clone()), from, to });
        }
    }
    Settings {
        calendar: Calendar {
            tz: registry.site.timezone,
            night_start_min: parse_hhmm(&r.night_start).unwrap_or(22 * 60),
            night_end_min: parse_hhmm(&r.night_end).unwrap_or(6 * 60),
        },
        window_cap: r.window_samples,
        chatter_count: r.chatter_count,
        chatter_window: r.chatter_window_secs as i64 * 1_000_000_000,
        overrides,
        maintenance,
    }
}

/// Unit mismatches as problems of the pack that holds the rule.
pub fn unit_errors(engine: &Engine) -> Vec<PackError> {
    engine
        .unit_mismatches()
        .iter()
        .map(|m| {
            let pack = engine
                .rules()
                .iter()
                .find(|r| r.id == m.rule)
                .map_or_else(String::new, |r| engine.pack_name(r.pack).to_owned());
            PackError { pack, rule: Some(m.rule.clone()), message: m.to_string(), config: true }
        })
        .collect()
}

/// The sandbox limits the config asks for.
pub fn limits(config: &Config) -> Limits {
    Limits { max_operations: config.rules.max_operations, ..Limits::default() }
}

pub(crate) fn toml_to_dynamic(v: &toml::Value) -> Dynamic {
    match v {
        // Parameters are compared with sample values (floats); integers in the config mean the same.
        toml::Value::Integer(i) => Dynamic::from(*i as f64),
        toml::Value::Float(f) => Dynamic::from(*f),
        toml::Value::Boolean(b) => Dynamic::from(*b),
        // Tables of limits (one per class) and lists of names, element by element.
        toml::Value::Array(a) => Dynamic::from_array(a.iter().map(toml_to_dynamic).collect()),
        other => Dynamic::from(other.as_str().map_or_else(|| other.to_string(), str::to_owned)),
    }
}

/// At start: loads every pack that compiles and reports the others, so one broken pack does not
/// leave the park without its other rules. Returns the engine, the pack names and the problems.
///
/// # Errors
/// Nothing at all could be loaded (unreadable directories).
pub fn build_lenient(
    config: &Config,
    registry: Arc<Registry>,
    next_incident: i64,
) -> Result<(Engine, Vec<String>, Vec<PackError>), Vec<PackError>> {
    let sources = sources(config.rules.builtin, &config.rules.dirs)?;
    let limits = limits(config);
    let (set, names, errors) = match rules::load(&sources, limits) {
        Ok(set) => (set, sources.iter().map(|(n, _)| n.clone()).collect(), Vec::new()),
        Err(errors) => {
            let good: Vec<(String, String)> =
                sources.into_iter().filter(|(n, _)| !errors.iter().any(|e| e.pack == *n)).collect();
            let set = rules::load(&good, limits)?;
            (set, good.into_iter().map(|(n, _)| n).collect(), errors)
        }
    };
    let settings = settings(config, &registry);
    let engine = Engine::new(set, registry, settings, next_incident);
    let mut errors = errors;
    errors.extend(unit_errors(&engine));
    Ok((engine, names, errors))
}

/// Loads and compiles the config's packs and builds an engine. All or nothing.
///
/// # Errors
/// Every pack problem found.
pub fn build(
    config: &Config,
    registry: Arc<Registry>,
    next_incident: i64,
) -> Result<(Engine, Vec<String>), Vec<PackError>> {
    let sources = sources(config.rules.builtin, &config.rules.dirs)?;
    let names = sources.iter().map(|(n, _)| n.clone()).collect();
    let set = rules::load(&sources, limits(config))?;
    let settings = settings(config, &registry);
    let engine = Engine::new(set, registry, settings, next_incident);
    if !engine.unit_mismatches().is_empty() {
        return Err(unit_errors(&engine));
    }
    Ok((engine, names))
}

/// Recompiles the rule packs and hands the result to the core: all or nothing.
///
/// Shared by every kind of reload (rule packs, the whole configuration, provisioned devices): each
/// takes `lock`, so each builds on what the one before it left.
#[derive(Clone)]
pub struct Reloader {
    /// The configuration as last reloaded.
    pub config: Arc<std::sync::RwLock<Arc<Config>>>,
    pub registry: SharedRegistry,
    pub core: super::CoreHandle,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub fn new(config: Arc<Config>, registry: SharedRegistry, core: super::CoreHandle) -> Self {
        Self {
            config: Arc::new(std::sync::RwLock::new(config)),
            registry,
            core,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The configuration as last reloaded.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Reloads the rule packs now; returns the number of rules running afterwards.
    ///
    /// # Errors
    /// The packs did not compile (the running rules stay), or the core has stopped.
    pub async fn reload(&self) -> Result<usize, ReloadError> {
        let _turn = self.lock.lock().await;
        let (config, registry) = (self.config(), self.registry.load());
        self.install(config, registry).await
    }

    /// Builds the rules of `config` over `registry` and hands them to the core; once it has them,
    /// publishes `registry` to everyone else (so no source names a point the core does not know).
    /// The caller holds `lock`.
    ///
    /// # Errors
    /// The packs did not compile (the running rules and registry stay), or the core has stopped.
    pub async fn install(&self, config: Arc<Config>, registry: Arc<Registry>) -> Result<usize, ReloadError> {
        let r = registry.clone();
        let built = tokio::task::spawn_blocking(move || build(&config, r, 0)).await.map_err(|e| {
            ReloadError::Failed(vec![PackError {
                pack: String::new(),
                rule: None,
                message: e.to_string(),
                config: false,
            }])
        })?;
        match built {
            Ok((engine, _)) => {
                let n = engine.rules().len();
                self.core.reload(Ok(engine)).await.map_err(|_| ReloadError::Stopped)?;
                self.registry.store(registry);
                Ok(n)
            }
            Err(errors) => {
                self.core.reload(Err(errors.clone())).await.map_err(|_| ReloadError::Stopped)?;
                Err(ReloadError::Failed(errors))
            }
        }
    }

    /// Every `rules.reload_secs`, reloads the rules when a pack file changed (SIGHUP is the
    /// configuration reload's).
    pub async fn watch(self, shutdown: tokio_util::sync::CancellationToken) {
        let config = self.config();
        if config.rules.reload_secs == 0 || config.rules.dirs.is_empty() {
            return;
        }
        let every = std::time::Duration::from_secs(config.rules.reload_secs.max(1));
        let mut seen = fingerprint(&config.rules.dirs);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = fingerprint(&self.config().rules.dirs);
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload().await {
                Ok(n) => tracing::info!(rules = n, why = "a pack file changed", "Rules reloaded."),
                Err(e) => tracing::error!(error = %e, "Rule reload failed; the running rules stay."),
            }
        }
    }
}

/// A reload that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("rule packs have errors: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Failed(Vec<PackError>),
    #[error("the core has stopped")]
    Stopped,
}
