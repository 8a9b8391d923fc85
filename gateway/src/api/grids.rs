//! `GET /api/v1/grids`: the grid cells of the caller's scope as the park overview draws them: name,
//! open incidents by severity and the worst of them, and how many devices report: a polled device as
//! its poller sees it, another by a reading within 15 minutes; devices that only send events (door
//! readers, patrol checkpoints) are counted apart, since quiet is normal for them. A device whose
//! `quality.device_silent` alarm is active counts offline too: that rule knows each category's limit.
//! `GET /api/v1/site/plan` serves the site plan image the cells are outlined on.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::{ApiError, AppState, Principal};
use crate::core::PointFilter;
use crate::incident::{changes::severity_level, Filter};
use crate::model::time::now_ns;

/// A device that sent nothing for this long is counted offline (the longest a reading is carried
/// forward by the rule windows).
const SILENT_NS: i64 = crate::model::MAX_HOLD_NS;

/// Open incidents counted per answer at most; the overview needs counts, not every row.
const COUNTED: usize = 10_000;

/// The built-in rule that knows how long each category of device may stay quiet.
const SILENT_RULE: &str = "quality.device_silent";

pub(super) async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let reg = st.registry.load();
    let scope = who.grid_ids(&reg);
    let open = match &st.incidents {
        Some(store) => {
            let filter = Filter { state: Some("open".into()), scope: who.scope(), limit: COUNTED, ..Filter::default() };
            store.list(filter).await?
        }
        None => Vec::new(),
    };
    let states = st.core.points(PointFilter { grid: None, device: None, scope: scope.clone(), category: None }).await?;
    let now = now_ns();
    // Latest reading per device, from the core's point states.
    let mut latest: BTreeMap<u32, i64> = BTreeMap::new();
    for (id, s) in &states {
        let d = reg.point(*id).device.0;
        let e = latest.entry(d).or_insert(i64::MIN);
        *e = (*e).max(s.ts);
    }
    let silent: std::collections::HashSet<&str> = open
        .iter()
        .filter(|i| i.rule == SILENT_RULE && i.state.starts_with("active"))
        .map(|i| i.device.as_str())
        .collect();
    let mut grids = Vec::new();
    for (gi, g) in reg.grids.iter().enumerate() {
        if g.retired || !who.identity.sees(&g.id) {
            continue;
        }
        let mut by_severity: BTreeMap<&str, u64> = BTreeMap::new();
        let mut unacked = 0;
        let mut worst: Option<&str> = None;
        for i in open.iter().filter(|i| i.grid == g.id) {
            *by_severity.entry(i.severity.as_str()).or_default() += 1;
            if i.state.ends_with("unacked") {
                unacked += 1;
            }
            if worst.is_none_or(|w| severity_level(&i.severity) > severity_level(w)) {
                worst = Some(i.severity.as_str());
            }
        }
        let (mut online, mut offline, mut event_only) = (0u64, 0u64, 0u64);
        for (id, d) in reg.live_devices().filter(|(_, d)| d.grid.0 as usize == gi) {
            let di = id.0 as usize;
            let polled = st.modbus.devices.iter().find(|m| m.device == d.id).map(|m| &m.online);
            let polled = polled.or_else(|| st.dlt645.meters.iter().find(|m| m.device == d.id).map(|m| &m.online));
            let up = !silent.contains(d.id.as_str())
                && match polled {
                    Some(online) => online.load(std::sync::atomic::Ordering::Relaxed),
                    // A door reader or a patrol checkpoint only sends events, and may rightly be quiet.
                    None if d.points.is_empty() => {
                        event_only += 1;
                        continue;
                    }
                    None => latest.get(&(di as u32)).is_some_and(|ts| now - ts <= SILENT_NS),
                };
            if up {
                online += 1;
            } else {
                offline += 1;
            }
        }
        grids.push(json!({
            "id": g.id,
            "name": g.name,
            "open": by_severity.values().sum::<u64>(),
            "unacked": unacked,
            "by_severity": by_severity,
            "worst": worst,
            "outline": g.outline,
            "devices": { "total": online + offline + event_only, "online": online, "offline": offline, "event_only": event_only },
        }));
    }
    let site = &reg.site;
    Ok(Json(json!({
        "site": { "id": site.id, "name": site.name, "timezone": site.timezone.name() },
        // Without a site plan the page lays the cells out as tiles.
        "plan": site.plan.as_ref().map_or(Value::Null, |p| json!({
            "image": "/api/v1/site/plan",
            "width": p.width,
            "height": p.height,
        })),
        "grids": grids,
    }))
    .into_response())
}

/// The site plan image; 404 when none is configured.
pub(super) async fn plan(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(plan) = st.registry.load().site.plan.clone() else {
        return Err(ApiError::NotFound("no site plan is configured (site.plan)".into()));
    };
    Ok((
        [
            (header::CONTENT_TYPE, plan.content_type),
            // The plan changes only with the config; it is the park's layout, so no shared caches.
            (header::CACHE_CONTROL, "private, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // An SVG plan opened on its own runs no script.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; sandbox"),
        ],
        plan.bytes.clone(),
    )
        .into_response())
}
