//! Reports as CSV (one row per record, reproducible to the byte), JSON and a self-contained HTML
//! document (inline CSS and SVG charts, no external assets, prints to PDF), Chinese first.

use std::fmt::Write as _;

use super::emissions::{EmissionReport, LimitReport, PointReport};
use super::energy::EnergyReport;
use super::{Format, Lang};

/// Renders the emission report.
pub fn emissions(r: &EmissionReport, format: Format, lang: Lang) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default(),
        Format::Csv => emissions_csv(r),
        Format::Html => emissions_html(r, lang),
    }
}

/// Renders the energy report.
pub fn energy(r: &EnergyReport, format: Format, lang: Lang) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default(),
        Format::Csv => energy_csv(r),
        Format::Html => energy_html(r, lang),
    }
}

/// A CSV field: quoted when it holds a comma, quote or line break.
fn field(s: &str, out: &mut String) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn row(fields: &[&str], out: &mut String) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(f, out);
    }
    out.push_str("\r\n");
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite()).map(|v| format!("{v:.decimals$}")).unwrap_or_default()
}

fn yes(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

const EMISSION_COLUMNS: &[&str] = &[
    "record",
    "device",
    "point",
    "grid",
    "window",
    "standard",
    "class",
    "limit",
    "unit",
    "start",
    "end",
    "value",
    "valid",
    "exceeded",
    "have",
    "need",
    "duration_s",
    "incidents",
];

fn emissions_csv(r: &EmissionReport) -> String {
    let mut out = String::new();
    row(EMISSION_COLUMNS, &mut out);
    for p in &r.points {
        for a in &p.availability {
            row(
                &[
                    "availability",
                    &p.device,
                    &p.point,
                    &p.grid,
                    "day",
                    "",
                    "",
                    "",
                    "",
                    &a.date,
                    "",
                    &num(Some(a.share), 4),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ],
                &mut out,
            );
        }
        for l in &p.limits {
            let limit = match l.low {
                Some(lo) => format!("{lo}-{}", l.limit),
                None => l.limit.to_string(),
            };
            let standard = format!("{} {}", l.standard, l.clause);
            for w in &l.windows {
                row(
                    &[
                        "window",
                        &p.device,
                        &p.point,
                        &p.grid,
                        l.window,
                        &standard,
                        &l.class,
                        &limit,
                        l.unit,
                        &w.start,
                        &w.end,
                        &num(w.value, 3),
                        yes(w.valid),
                        yes(w.exceeded),
                        &num(Some(w.have), 2),
                        &num(Some(w.need), 2),
                        "",
                        "",
                    ],
                    &mut out,
                );
            }
            for e in &l.exceedances {
                let ids: Vec<String> = e.incidents.iter().map(i64::to_string).collect();
                row(
                    &[
                        "exceedance",
                        &p.device,
                        &p.point,
                        &p.grid,
                        l.window,
                        &standard,
                        &l.class,
                        &limit,
                        l.unit,
                        &e.start,
                        &e.end,
                        &num(Some(e.worst), 3),
                        "1",
                        "1",
                        &e.windows.to_string(),
                        "",
                        &e.duration_s.to_string(),
                        &ids.join(" "),
                    ],
                    &mut out,
                );
            }
        }
    }
    out
}

fn energy_csv(r: &EnergyReport) -> String {
    let mut out = String::new();
    let mut head: Vec<String> = ["record", "device", "point", "grid", "building", "tenant", "date", "kwh"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    head.extend(r.buckets.iter().map(|b| format!("tou_{b}")));
    head.extend(["gap_kwh", "gap_minutes", "peak_kw", "peak_at"].iter().map(|s| (*s).to_owned()));
    row(&head.iter().map(String::as_str).collect::<Vec<_>>(), &mut out);
    for m in &r.meters {
        for d in &m.days {
            let mut f: Vec<String> = vec![
                "day".into(),
                m.device.clone(),
                m.point.clone(),
                m.grid.clone(),
                m.building.clone(),
                m.tenant.clone(),
                d.date.clone(),
                num(Some(d.kwh), 3),
            ];
            f.extend(d.tou.iter().map(|v| num(Some(*v), 3)));
            f.extend([
                num(Some(d.gap_kwh), 3),
                num(Some(d.gap_minutes), 0),
                num(d.peak_kw, 3),
                d.peak_at.clone().unwrap_or_default(),
            ]);
            row(&f.iter().map(String::as_str).collect::<Vec<_>>(), &mut out);
        }
        let mut f: Vec<String> = vec![
            "period".into(),
            m.device.clone(),
            m.point.clone(),
            m.grid.clone(),
            m.building.clone(),
            m.tenant.clone(),
            format!("{}..{}", r.head.from, r.head.to),
            num(Some(m.kwh), 3),
        ];
        f.extend(m.tou.iter().map(|v| num(Some(*v), 3)));
        let gap_minutes: f64 = m.gaps.iter().map(|g| g.minutes).sum();
        let gap_kwh: f64 = m.gaps.iter().map(|g| g.kwh).sum();
        f.extend([
            num(Some(gap_kwh), 3),
            num(Some(gap_minutes), 0),
            num(m.peak_kw, 3),
            m.peak_at.clone().unwrap_or_default(),
        ]);
        row(&f.iter().map(String::as_str).collect::<Vec<_>>(), &mut out);
    }
    for g in &r.groups {
        let mut f: Vec<String> = vec![
            g.kind.to_owned(),
            String::new(),
            String::new(),
            if g.kind == "grid" { g.id.clone() } else { String::new() },
            if g.kind == "building" { g.id.clone() } else { String::new() },
            if g.kind == "tenant" { g.id.clone() } else { String::new() },
            format!("{}..{}", r.head.from, r.head.to),
            num(Some(g.kwh), 3),
        ];
        f.extend(g.tou.iter().map(|v| num(Some(*v), 3)));
        f.extend([String::new(), String::new(), num(g.peak_kw, 3), g.peak_at.clone().unwrap_or_default()]);
        row(&f.iter().map(String::as_str).collect::<Vec<_>>(), &mut out);
    }
    out
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn t(lang: Lang, zh: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

const CSS: &str = "body{font-family:'WenQuanYi Micro Hei','Noto Sans CJK SC','Microsoft YaHei',sans-serif;margin:24px;color:#1a1a1a;font-size:13px}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 6px;border-bottom:1px solid #ccc;padding-bottom:3px}\
h3{font-size:14px;margin:14px 0 4px}table{border-collapse:collapse;margin:6px 0 10px}\
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right;vertical-align:top}th{background:#f0f0f0}\
td.l,th.l{text-align:left}.bad{color:#b00020;font-weight:bold}.muted{color:#666}.ok{color:#1b5e20}\
svg{display:block;margin:6px 0}@media print{h2{break-before:auto}section{break-inside:avoid}}";

fn head(out: &mut String, lang: Lang, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        t(lang, "zh-CN", "en"),
        esc(title)
    );
}

/// A chart of daily values against limits: `series` are (name, colour, values per day), `limits`
/// (name, value) are dashed lines.
fn chart(
    dates: &[String],
    series: &[(String, &str, Vec<Option<f64>>)],
    limits: &[(String, f64)],
    unit: &str,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 220.0;
    const L: f64 = 56.0;
    const R: f64 = 12.0;
    const T: f64 = 12.0;
    const B: f64 = 40.0;
    let values = series.iter().flat_map(|s| s.2.iter().flatten().copied()).chain(limits.iter().map(|l| l.1));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(0.5);
    lo = if lo >= 0.0 && lo - pad < 0.0 { 0.0 } else { lo - pad };
    hi += pad;
    let n = dates.len().max(1);
    let x = |i: usize| L + (W - L - R) * (i as f64 + 0.5) / n as f64;
    let y = |v: f64| T + (H - T - B) * (1.0 - (v - lo) / (hi - lo));
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
<rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        W - L - R,
        H - T - B
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * f64::from(k) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            W - R,
            L - 4.0,
            y(v) + 3.0,
            num(Some(v), if hi - lo < 10.0 { 1 } else { 0 }),
            y = y(v)
        );
    }
    let _ = write!(s, "<text x=\"4\" y=\"{}\" font-size=\"10\">{}</text>", T + 8.0, esc(unit));
    let every = n.div_ceil(10).max(1);
    for (i, d) in dates.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x(i),
            H - B + 14.0,
            esc(d.get(5..).unwrap_or(d))
        );
    }
    for (name, v) in limits {
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#b00020\" stroke-dasharray=\"6 4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"10\" fill=\"#b00020\" text-anchor=\"end\">{}</text>",
            W - R,
            W - R - 2.0,
            y(*v) - 3.0,
            esc(&format!("{name} {v}")),
            yy = y(*v)
        );
    }
    for (k, (name, colour, vals)) in series.iter().enumerate() {
        let mut path = String::new();
        let mut pen = false;
        for (i, v) in vals.iter().enumerate() {
            match v {
                Some(v) => {
                    let _ = write!(path, "{}{:.1},{:.1} ", if pen { "L" } else { "M" }, x(i), y(*v));
                    pen = true;
                    let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"{colour}\"/>", x(i), y(*v));
                }
                None => pen = false,
            }
        }
        let _ = write!(s, "<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>", path.trim_end());
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
            L + 6.0 + 150.0 * k as f64,
            H - 12.0,
            L + 20.0 + 150.0 * k as f64,
            H - 8.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Daily values of a limit for the chart: the window's value for daily windows, the highest hourly
/// value of the day for hourly ones.
fn daily_values(p: &PointReport, l: &LimitReport) -> Vec<Option<f64>> {
    p.availability
        .iter()
        .map(|d| {
            let of_day = l.windows.iter().filter(|w| w.start.get(..10) == Some(d.date.as_str()));
            match l.window {
                "1h" => of_day.filter_map(|w| w.value).reduce(f64::max),
                "1h_range" => of_day.filter_map(|w| w.hi).reduce(f64::max),
                _ => of_day.filter_map(|w| w.value).next(),
            }
        })
        .collect()
}

fn emissions_html(r: &EmissionReport, lang: Lang) -> String {
    let mut out = String::new();
    let title = format!(
        "{} {} {}",
        t(lang, "排放达标与信息公开报告", "Emission compliance report"),
        r.head.site_name,
        r.head.period
    );
    head(&mut out, lang, &title);
    let _ = write!(
        out,
        "<h1>{}</h1><p>{} {} ({}) · {} {} – {} · {} {}</p>",
        esc(&title),
        t(lang, "园区", "Site"),
        esc(&r.head.site_name),
        esc(&r.head.site),
        t(lang, "统计期", "Period"),
        esc(&r.head.from),
        esc(&r.head.to),
        t(lang, "时区", "Time zone"),
        esc(&r.head.timezone)
    );
    let v = &r.validity;
    let _ = write!(
        out,
        "<p class=\"muted\">{}</p>",
        esc(&match lang {
            Lang::Zh => format!(
                "数据有效性：小时均值须有 ≥{} 分钟有效数据，24 小时均值须有 ≥{} 个有效小时（GB 3095-2012 表4）；废水日均值 ≥{} 个有效小时；O3 8 小时均值 ≥{} 个小时、日最大 8 小时 ≥{} 个有效 8 小时均值；噪声昼/夜 Leq 须覆盖时段 ≥{:.0}%（夜间 {}）。仅质量为“正常”（HJ 212 标记 N）的数据参与计算。",
                v.hour_min_minutes, v.day_min_hours, v.water_day_min_hours, v.o3_8h_min_hours, v.o3_day_min_8h, v.noise_min_coverage * 100.0, v.night
            ),
            Lang::En => format!(
                "Validity: an hourly mean needs ≥{} minutes of valid data, a 24-hour mean ≥{} valid hours (GB 3095-2012 Table 4); a wastewater daily mean ≥{} valid hours; an O3 8-hour mean ≥{} hours, the daily maximum ≥{} valid 8-hour means; noise day/night Leq must cover ≥{:.0}% of the period (night {}). Only data of good quality (HJ 212 flag N) is used.",
                v.hour_min_minutes, v.day_min_hours, v.water_day_min_hours, v.o3_8h_min_hours, v.o3_day_min_8h, v.noise_min_coverage * 100.0, v.night
            ),
        })
    );
    for p in &r.problems {
        let _ = write!(out, "<p class=\"bad\">{}</p>", esc(p));
    }
    // Summary.
    let head = th(
        lang,
        &[
            ("监测点", "Monitoring point", true),
            ("项目", "Item", true),
            ("标准", "Standard", true),
            ("限值", "Limit", false),
            ("已评价", "Judged", false),
            ("超标", "Exceeded", false),
            ("无法评价", "Not judgeable", false),
            ("超标次数", "Exceedances", false),
        ],
    );
    let _ = write!(out, "<h2>{}</h2><table><tr>{head}</tr>", t(lang, "汇总", "Summary"));
    for p in &r.points {
        for l in &p.limits {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{} / {}</td><td class=\"l\">{}</td><td class=\"l\">{} {}{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.device_name),
                esc(&p.point),
                esc(t(lang, l.name_zh, l.name_en)),
                esc(l.standard),
                esc(l.clause),
                if l.site_override { t(lang, "（园区设定）", " (site setting)") } else { "" },
                esc(&limit_text(l)),
                l.judged,
                if l.exceeded > 0 { "bad" } else { "ok" },
                l.exceeded,
                l.not_judgeable,
                l.exceedances.len()
            );
        }
    }
    out.push_str("</table>");
    for p in &r.points {
        let _ = write!(
            out,
            "<section><h2>{} ({}) · {} · {}</h2>",
            esc(&p.device_name),
            esc(&p.device),
            esc(&p.point),
            esc(&format!("{} {}", t(lang, "网格", "grid"), p.grid))
        );
        if p.hourly_only {
            let _ = write!(
                out,
                "<p class=\"muted\">{}</p>",
                t(lang, "部分时段仅有小时汇总数据。", "Part of the period has hourly rollups only.")
            );
        }
        let dates: Vec<String> = p.availability.iter().map(|a| a.date.clone()).collect();
        let colours = ["#1565c0", "#6a1b9a", "#00897b"];
        let series: Vec<(String, &str, Vec<Option<f64>>)> = p
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let name = match l.window {
                    "1h" | "1h_range" => {
                        format!("{}{}", t(lang, l.name_zh, l.name_en), t(lang, "（日最大）", " (daily max)"))
                    }
                    _ => t(lang, l.name_zh, l.name_en).to_owned(),
                };
                (name, colours[i % colours.len()], daily_values(p, l))
            })
            .collect();
        let mut limits: Vec<(String, f64)> = Vec::new();
        for l in &p.limits {
            if !limits.iter().any(|(_, v)| *v == l.limit) {
                limits.push((format!("{} {}", l.window, t(lang, "限值", "limit")), l.limit));
            }
            if let Some(lo) = l.low {
                limits.push((t(lang, "下限", "low").to_owned(), lo));
            }
        }
        out.push_str(&chart(&dates, &series, &limits, &p.unit));
        for l in &p.limits {
            let _ = write!(
                out,
                "<h3>{} — {} {} · {} {} · {} {}</h3>",
                esc(t(lang, l.name_zh, l.name_en)),
                esc(l.standard),
                esc(l.clause),
                t(lang, "类别", "class"),
                esc(&l.class),
                t(lang, "限值", "limit"),
                esc(&limit_text(l))
            );
            if l.exceedances.is_empty() {
                let _ =
                    write!(out, "<p class=\"ok\">{}</p>", t(lang, "统计期内未超标。", "No exceedance in the period."));
            } else {
                let head = th(
                    lang,
                    &[
                        ("开始", "Start", true),
                        ("持续", "Duration", false),
                        ("最大值", "Worst", false),
                        ("窗口数", "Windows", false),
                        ("关联事件", "Incidents", true),
                    ],
                );
                let _ = write!(out, "<table><tr>{head}</tr>");
                for e in &l.exceedances {
                    let ids: Vec<String> = e.incidents.iter().map(|i| format!("#{i}")).collect();
                    let _ = write!(
                        out,
                        "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"bad\">{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                        esc(&local(&e.start)),
                        duration(e.duration_s, lang),
                        num(Some(e.worst), 2),
                        e.windows,
                        esc(&ids.join(" "))
                    );
                }
                out.push_str("</table>");
            }
            let missing: Vec<String> = l
                .windows
                .iter()
                .filter(|w| !w.valid)
                .map(|w| {
                    format!(
                        "{} ({} {}/{})",
                        local(&w.start),
                        t(lang, "有效", "had"),
                        num(Some(w.have), 1),
                        num(Some(w.need), 2)
                    )
                })
                .collect();
            if !missing.is_empty() {
                let shown: Vec<&String> = missing.iter().take(12).collect();
                let _ = write!(
                    out,
                    "<p class=\"muted\">{} {}: {}{}</p>",
                    t(lang, "无法评价的窗口", "Windows not judgeable"),
                    missing.len(),
                    esc(&shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")),
                    if missing.len() > shown.len() { " …" } else { "" }
                );
            }
        }
        let _ = write!(out, "<h3>{}</h3><table><tr>", t(lang, "数据有效率（按日）", "Valid data per day"));
        for a in &p.availability {
            let _ = write!(out, "<th>{}</th>", esc(a.date.get(8..).unwrap_or(&a.date)));
        }
        out.push_str("</tr><tr>");
        for a in &p.availability {
            let _ =
                write!(out, "<td class=\"{}\">{:.0}%</td>", if a.share < 0.75 { "bad" } else { "" }, a.share * 100.0);
        }
        out.push_str("</tr></table></section>");
    }
    out.push_str("</body></html>");
    out
}

/// Header cells: `(Chinese, English, left-aligned)`.
fn th(lang: Lang, cells: &[(&'static str, &'static str, bool)]) -> String {
    cells
        .iter()
        .map(|(zh, en, left)| format!("<th{}>{}</th>", if *left { " class=\"l\"" } else { "" }, t(lang, zh, en)))
        .collect()
}

fn limit_text(l: &LimitReport) -> String {
    match l.low {
        Some(lo) => format!("{lo}–{} {}", l.limit, l.unit),
        None => format!("{} {}", l.limit, l.unit),
    }
}

/// `2026-11-05T14:00:00+08:00` → `2026-11-05 14:00` (already in the site's zone).
fn local(rfc: &str) -> String {
    rfc.get(..16).map(|s| s.replace('T', " ")).unwrap_or_default()
}

fn duration(secs: i64, lang: Lang) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match lang {
        Lang::Zh if d > 0 => format!("{d}天{h}小时"),
        Lang::Zh => format!("{h}小时{m}分"),
        Lang::En if d > 0 => format!("{d} d {h} h"),
        Lang::En => format!("{h} h {m} min"),
    }
}

fn bucket_name(b: &str, lang: Lang) -> &'static str {
    match (b, lang) {
        ("sharp", Lang::Zh) => "尖峰",
        ("peak", Lang::Zh) => "峰",
        ("flat", Lang::Zh) => "平",
        ("valley", Lang::Zh) => "谷",
        ("sharp", Lang::En) => "sharp",
        ("peak", Lang::En) => "peak",
        ("flat", Lang::En) => "flat",
        _ => "valley",
    }
}

fn energy_html(r: &EnergyReport, lang: Lang) -> String {
    let mut out = String::new();
    let title = format!("{} {} {}", t(lang, "能耗台账", "Energy accounts"), r.head.site_name, r.head.period);
    head(&mut out, lang, &title);
    let _ = write!(
        out,
        "<h1>{}</h1><p>{} {} – {} · {} {} · {}</p>",
        esc(&title),
        t(lang, "统计期", "Period"),
        esc(&r.head.from),
        esc(&r.head.to),
        t(lang, "时区", "Time zone"),
        esc(&r.head.timezone),
        t(
            lang,
            "单位 kWh；最大需量为 15 分钟平均功率最大值（kW）。",
            "kWh; peak demand is the largest 15-minute average power (kW)."
        )
    );
    let tou_head: String = r.buckets.iter().map(|b| format!("<th>{}</th>", bucket_name(b, lang))).collect();
    let head = th(
        lang,
        &[("类别", "Kind", true), ("名称", "Name", true), ("表计数", "Meters", false), ("电量", "Energy", false)],
    );
    let tail = th(lang, &[("最大需量", "Peak demand", false), ("出现时间", "At", true)]);
    let _ = write!(
        out,
        "<h2>{}</h2><table><tr>{head}{tou_head}{tail}</tr>",
        t(lang, "按楼宇、企业与网格", "By building, tenant and grid")
    );
    for g in &r.groups {
        let kind = match g.kind {
            "building" => t(lang, "楼宇", "building"),
            "tenant" => t(lang, "企业", "tenant"),
            _ => t(lang, "网格", "grid"),
        };
        let tou: String = g.tou.iter().map(|v| format!("<td>{v:.1}</td>")).collect();
        let _ = write!(
            out,
            "<tr><td class=\"l\">{kind}</td><td class=\"l\">{}</td><td>{}</td><td>{:.1}</td>{tou}<td>{}</td><td class=\"l\">{}</td></tr>",
            esc(&g.id),
            g.meters,
            g.kwh,
            num(g.peak_kw, 1),
            esc(&g.peak_at.as_deref().map(local).unwrap_or_default())
        );
    }
    out.push_str("</table>");
    for m in &r.meters {
        let _ = write!(
            out,
            "<section><h2>{} ({}) · {} · {:.1} kWh</h2>",
            esc(&m.device_name),
            esc(&m.device),
            esc(&m.point),
            m.kwh
        );
        let dates: Vec<String> = m.days.iter().map(|d| d.date.clone()).collect();
        out.push_str(&chart(
            &dates,
            &[(t(lang, "日电量", "daily kWh").to_owned(), "#1565c0", m.days.iter().map(|d| Some(d.kwh)).collect())],
            &[],
            "kWh",
        ));
        for (label, items) in [
            (
                t(lang, "数据缺口", "Gaps"),
                m.gaps
                    .iter()
                    .map(|g| format!("{} – {} ({} min, {:.3} kWh)", local(&g.from), local(&g.to), g.minutes, g.kwh))
                    .collect::<Vec<_>>(),
            ),
            (t(lang, "计数器复位", "Counter resets"), m.resets.clone()),
            (t(lang, "换表", "Meter replacements"), m.replacements.clone()),
        ] {
            if !items.is_empty() {
                let _ = write!(out, "<p><b>{label}</b>: {}</p>", esc(&items.join("; ")));
            }
        }
        let head = th(lang, &[("日期", "Date", true), ("电量", "Energy", false)]);
        let tail = th(
            lang,
            &[("缺口(分钟)", "Gap (min)", false), ("最大需量", "Peak demand", false), ("出现时间", "At", true)],
        );
        let _ = write!(out, "<table><tr>{head}{tou_head}{tail}</tr>");
        for d in &m.days {
            let tou: String = d.tou.iter().map(|v| format!("<td>{v:.3}</td>")).collect();
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td>{:.3}</td>{tou}<td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                esc(&d.date),
                d.kwh,
                d.gap_minutes,
                num(d.peak_kw, 2),
                esc(&d.peak_at.as_deref().map(local).unwrap_or_default())
            );
        }
        out.push_str("</table></section>");
    }
    out.push_str("</body></html>");
    out
}
