//! The cost report for people: a text table, CSV (one row per repository) and one self-contained
//! HTML page whose charts are SVG drawn here, with no script or style from anywhere else.
//!
//! Every name in the HTML comes from the storage and is escaped. The page carries one small inline
//! script that only checks itself: it records on each chart how many of its marks the browser laid
//! out (`data-drawn`), on the body how many charts drew whole (`data-charts-drawn`) and any script
//! error (`data-errors`), so that a headless browser can tell the charts drew.

use std::fmt::{self, Write};

use super::{CostReport, GrowthPoint, RepositoryCost};
use crate::report::human_bytes;

/// The columns of the CSV, in order.
pub const CSV_HEADER: &str = "repository,tags,manifests,untagged_manifests,bytes_referenced,\
bytes_unique,bytes_shared,reclaimable_bytes,reclaimable_bytes_delete_untagged";

/// One row per repository, by name, after [`CSV_HEADER`] (RFC 4180).
pub fn csv(report: &CostReport) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    for r in &report.repositories {
        let RepositoryCost {
            name,
            tags,
            manifests,
            untagged_manifests,
            bytes_referenced,
            bytes_unique,
            bytes_shared,
            reclaimable_bytes,
            reclaimable_bytes_delete_untagged,
        } = r;
        let _ = write!(
            out,
            "{},{tags},{manifests},{untagged_manifests},{bytes_referenced},{bytes_unique},\
             {bytes_shared},{reclaimable_bytes},{reclaimable_bytes_delete_untagged}\r\n",
            csv_field(name)
        );
    }
    out
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// US dollars: cents from a dollar up, else six decimals without trailing zeros (`$0.023`,
/// `$0.000123`), so that the small amounts of small registries still show.
fn usd(amount: f64) -> String {
    if amount >= 1.0 {
        format!("${amount:.2}")
    } else {
        let text = format!("{amount:.6}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("${}", if text.is_empty() { "0" } else { text })
    }
}

impl fmt::Display for CostReport {
    /// The text table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.registry;
        let c = &self.cost;
        writeln!(
            f,
            "storage: {} (scanned {})",
            self.storage, self.generated_at
        )?;
        writeln!(
            f,
            "{} repositories, {} tags, {} manifests ({} untagged), {} blobs",
            t.repositories, t.tags, t.manifests, t.untagged_manifests, t.blobs
        )?;
        writeln!(
            f,
            "stored {} (blobs {}, uploads {}), live {}",
            human_bytes(t.stored_bytes),
            human_bytes(t.blob_bytes),
            human_bytes(t.upload_bytes),
            human_bytes(t.live_bytes)
        )?;
        writeln!(
            f,
            "reclaimable: {} with gc, {} with gc -m",
            human_bytes(t.reclaimable_bytes),
            human_bytes(t.reclaimable_bytes_delete_untagged)
        )?;
        for (name, cause) in self.reclaimable_by_cause.named() {
            writeln!(
                f,
                "  {:<20} {:>8} objects {:>8} blobs {:>12}",
                name.replace('_', " "),
                cause.count,
                cause.blobs,
                human_bytes(cause.bytes)
            )?;
        }
        writeln!(
            f,
            "monthly at {}/GiB: stored {}, live {}, reclaimable {} (gc), {} (gc -m)",
            usd(c.price_per_gib_month),
            usd(c.stored_per_month),
            usd(c.live_per_month),
            usd(c.reclaimable_per_month),
            usd(c.reclaimable_delete_untagged_per_month)
        )?;
        let r = &c.scan_requests;
        writeln!(
            f,
            "this scan: {} requests ({} list, {} get, {} head, {} other): {}",
            r.total(),
            r.list,
            r.get,
            r.head,
            r.other,
            usd(c.scan_cost)
        )?;
        writeln!(f)?;
        let width = self
            .repositories
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max("REPOSITORY".len());
        writeln!(
            f,
            "{:<width$}  {:>5}  {:>9}  {:>8}  {:>11}  {:>11}  {:>11}  {:>11}  {:>14}",
            "REPOSITORY",
            "TAGS",
            "MANIFESTS",
            "UNTAGGED",
            "REFERENCED",
            "UNIQUE",
            "SHARED",
            "RECLAIMABLE",
            "RECLAIMABLE -m"
        )?;
        for r in &self.repositories {
            writeln!(
                f,
                "{:<width$}  {:>5}  {:>9}  {:>8}  {:>11}  {:>11}  {:>11}  {:>11}  {:>14}",
                r.name,
                r.tags,
                r.manifests,
                r.untagged_manifests,
                human_bytes(r.bytes_referenced),
                human_bytes(r.bytes_unique),
                human_bytes(r.bytes_shared),
                human_bytes(r.reclaimable_bytes),
                human_bytes(r.reclaimable_bytes_delete_untagged)
            )?;
        }
        if !self.largest_blobs.is_empty() {
            writeln!(
                f,
                "\nlargest blobs (size, status, digest, repositories linking it):"
            )?;
            for b in &self.largest_blobs {
                writeln!(
                    f,
                    "  {:>11}  {:<8}  {}  {}",
                    human_bytes(b.bytes),
                    b.status.as_str(),
                    b.digest,
                    b.linked_by.join(", ")
                )?;
            }
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

const CHART_WIDTH: f64 = 760.0;
const LABEL_WIDTH: f64 = 230.0;
const VALUE_WIDTH: f64 = 170.0;
const ROW_HEIGHT: f64 = 24.0;
const UNIQUE_COLOR: &str = "#2b6cb0";
const SHARED_COLOR: &str = "#90cdf4";
const CAUSE_COLORS: [&str; 4] = ["#dd6b20", "#c53030", "#805ad5", "#718096"];

/// A label cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(max - 1).collect();
        format!("{kept}…")
    }
}

/// One bar segment; only segments with a value are marks (what the self-check counts).
fn rect(out: &mut String, x: f64, y: f64, width: f64, segment: &Segment) {
    if segment.value == 0 {
        return;
    }
    let _ = write!(
        out,
        r#"<rect class="mark" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" data-value="{}"><title>{}</title></rect>"#,
        width.max(1.0),
        ROW_HEIGHT - 6.0,
        segment.color,
        segment.value,
        escape(&segment.title)
    );
}

/// One bar of a [`bar_chart`]: a label, segments side by side, and the value written after it.
struct Bar {
    name: String,
    segments: Vec<Segment>,
    value_label: String,
}

struct Segment {
    value: u64,
    color: &'static str,
    /// The tooltip.
    title: String,
}

/// Horizontal bars, the longest across the plot.
fn bar_chart(id: &str, label: &str, rows: &[Bar]) -> String {
    let max = rows
        .iter()
        .map(|bar| bar.segments.iter().map(|s| s.value).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH;
    let height = ROW_HEIGHT * rows.len().max(1) as f64 + 8.0;
    let mut out = format!(
        r#"<svg class="chart" id="{id}" role="img" aria-label="{}" width="{CHART_WIDTH}" height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
    if rows.is_empty() {
        out.push_str(r#"<text x="0" y="18" class="empty">nothing to show</text>"#);
    }
    for (
        row,
        Bar {
            name,
            segments,
            value_label,
        },
    ) in rows.iter().enumerate()
    {
        let y = 4.0 + ROW_HEIGHT * row as f64;
        let _ = write!(
            out,
            r#"<g class="bar" data-name="{}"><text x="{:.1}" y="{:.1}" text-anchor="end">{}<title>{}</title></text>"#,
            escape(name),
            LABEL_WIDTH - 8.0,
            y + 13.0,
            escape(&shorten(name, 32)),
            escape(name)
        );
        let mut x = LABEL_WIDTH;
        for segment in segments {
            let width = segment.value as f64 / max as f64 * plot;
            rect(&mut out, x, y, width, segment);
            if segment.value > 0 {
                x += width.max(1.0);
            }
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" class="value">{}</text></g>"#,
            x + 6.0,
            y + 13.0,
            escape(value_label)
        );
    }
    out.push_str("</svg>");
    out
}

/// Stacked columns of cumulative unique (bottom) and shared bytes, one a month.
fn growth_chart(points: &[GrowthPoint]) -> String {
    let height = 260.0;
    let (left, bottom, top) = (80.0, 30.0, 10.0);
    let plot_height = height - bottom - top;
    let max = points
        .iter()
        .map(|p| p.unique_bytes + p.shared_bytes)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = format!(
        r#"<svg class="chart" id="chart-growth" role="img" aria-label="Growth of unique and shared bytes" width="{CHART_WIDTH}" height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        out,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" class="axis"/><line x1="{left}" y1="{:.1}" x2="{CHART_WIDTH}" y2="{:.1}" class="axis"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text>"#,
        height - bottom,
        height - bottom,
        height - bottom,
        left - 6.0,
        top + 10.0,
        escape(&human_bytes(max)),
        left - 6.0,
        height - bottom,
    );
    if points.is_empty() {
        out.push_str(r#"<text x="90" y="120" class="empty">nothing referenced</text>"#);
    }
    let slot = (CHART_WIDTH - left - 10.0) / points.len().max(1) as f64;
    let column = (slot * 0.7).min(60.0);
    let label_every = (points.len() / 12).max(1);
    for (n, point) in points.iter().enumerate() {
        let x = left + 5.0 + slot * n as f64 + (slot - column) / 2.0;
        let unique_height = point.unique_bytes as f64 / max as f64 * plot_height;
        let shared_height = point.shared_bytes as f64 / max as f64 * plot_height;
        let base = height - bottom;
        let _ = write!(out, r#"<g class="month" data-month="{}">"#, point.month);
        for (value, y, h, color, what) in [
            (
                point.unique_bytes,
                base - unique_height,
                unique_height,
                UNIQUE_COLOR,
                "unique",
            ),
            (
                point.shared_bytes,
                base - unique_height - shared_height,
                shared_height,
                SHARED_COLOR,
                "shared",
            ),
        ] {
            if value > 0 {
                let _ = write!(
                    out,
                    r#"<rect class="mark" x="{x:.1}" y="{y:.1}" width="{column:.1}" height="{:.1}" fill="{color}" data-value="{value}"><title>{} {what}: {}</title></rect>"#,
                    h.max(1.0),
                    point.month,
                    escape(&human_bytes(value))
                );
            }
        }
        if n % label_every == 0 {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + column / 2.0,
                height - bottom + 16.0,
                point.month
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1a202c;
       margin: 2rem auto; max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #e2e8f0; }
.meta { color: #4a5568; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1.2rem 0; }
.card { border: 1px solid #e2e8f0; border-radius: 8px; padding: 0.7rem 1rem; min-width: 150px; }
.card .n { font-size: 1.35rem; font-weight: 600; }
.card .sub { color: #4a5568; font-size: 0.85rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.5rem; border-bottom: 1px solid #edf2f7; text-align: right; }
th:first-child, td:first-child { text-align: left; word-break: break-all; }
th { background: #f7fafc; }
td[data-bytes] { white-space: nowrap; }
svg text { font-size: 12px; fill: #2d3748; }
svg .value { fill: #4a5568; }
svg .axis { stroke: #a0aec0; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px;
               vertical-align: -1px; border-radius: 2px; }
code { font-size: 0.85rem; }
";

/// Records on each chart how many of its marks were laid out, and on the body how many charts
/// drew whole and any script error.
const SELF_CHECK: &str = "
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message));
    document.body.dataset.errors = errors.join('\\n');
  });
  try {
    var drawn = 0;
    document.querySelectorAll('svg.chart').forEach(function (svg) {
      var marks = svg.querySelectorAll('.mark');
      var laidOut = 0;
      marks.forEach(function (mark) {
        var box = mark.getBBox();
        if (box.width > 0 && box.height > 0) { laidOut += 1; }
      });
      svg.dataset.drawn = String(laidOut);
      if (marks.length > 0 && laidOut === marks.length) { drawn += 1; }
    });
    document.body.dataset.chartsDrawn = String(drawn);
  } catch (e) {
    errors.push(String(e));
  }
  document.body.dataset.errors = errors.join('\\n');
})();
";

/// One self-contained HTML page: summary, charts (largest repositories, reclaimable by cause,
/// growth of shared and unique bytes) and tables.
pub fn html(report: &CostReport) -> String {
    let t = &report.registry;
    let c = &report.cost;
    let causes = &report.reclaimable_by_cause;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>regsweep cost report: {storage}</title><style>{STYLE}</style></head><body><h1>Registry storage cost report</h1><p class="meta"><code>{storage}</code>, scanned {at}; grace period {min_age} s, uploads stale after {upload_age} s; prices {gib}/GiB-month, {list} per 1,000 LIST, {get} per 1,000 GET</p>"#,
        storage = escape(&report.storage),
        at = escape(&report.generated_at),
        min_age = report.min_age_seconds,
        upload_age = report.upload_max_age_seconds,
        gib = usd(c.price_per_gib_month),
        list = usd(c.price_per_1000_list),
        get = usd(c.price_per_1000_get),
    );

    out.push_str(r#"<div class="cards">"#);
    for (id, title, bytes, monthly) in [
        ("stored", "Stored", t.stored_bytes, c.stored_per_month),
        ("live", "Live", t.live_bytes, c.live_per_month),
        (
            "reclaimable",
            "Reclaimable (gc)",
            t.reclaimable_bytes,
            c.reclaimable_per_month,
        ),
        (
            "reclaimable-delete-untagged",
            "Reclaimable (gc -m)",
            t.reclaimable_bytes_delete_untagged,
            c.reclaimable_delete_untagged_per_month,
        ),
    ] {
        let _ = write!(
            out,
            r#"<div class="card" id="card-{id}"><div>{title}</div><div class="n" data-bytes="{bytes}">{}</div><div class="sub">{} a month</div></div>"#,
            escape(&human_bytes(bytes)),
            usd(monthly)
        );
    }
    let r = &c.scan_requests;
    let _ = write!(
        out,
        r#"<div class="card" id="card-scan"><div>This scan</div><div class="n">{}</div><div class="sub">{} requests ({} list, {} get)</div></div></div>"#,
        usd(c.scan_cost),
        r.total(),
        r.list,
        r.get + r.head
    );
    let _ = write!(
        out,
        "<p>{} repositories, {} tags, {} manifests ({} untagged), {} blobs.</p>",
        t.repositories, t.tags, t.manifests, t.untagged_manifests, t.blobs
    );

    out.push_str(r#"<h2>Largest repositories</h2><p class="legend">bytes referenced:<span style="background:#2b6cb0"></span>unique to the repository<span style="background:#90cdf4"></span>shared with others</p>"#);
    let rows: Vec<_> = report
        .largest_repositories
        .iter()
        .map(|r| Bar {
            name: r.name.clone(),
            segments: vec![
                Segment {
                    value: r.bytes_unique,
                    color: UNIQUE_COLOR,
                    title: format!("{}: {} unique", r.name, human_bytes(r.bytes_unique)),
                },
                Segment {
                    value: r.bytes_shared,
                    color: SHARED_COLOR,
                    title: format!("{}: {} shared", r.name, human_bytes(r.bytes_shared)),
                },
            ],
            value_label: human_bytes(r.bytes_referenced),
        })
        .collect();
    out.push_str(&bar_chart(
        "chart-repositories",
        "Largest repositories",
        &rows,
    ));

    out.push_str("<h2>Reclaimable by cause</h2>");
    let rows: Vec<_> = causes
        .named()
        .into_iter()
        .zip(CAUSE_COLORS)
        .map(|((name, cause), color)| {
            let label = name.replace('_', " ");
            let counted = format!("{} ({} objects)", human_bytes(cause.bytes), cause.count);
            Bar {
                segments: vec![Segment {
                    value: cause.bytes,
                    color,
                    title: format!("{label}: {counted}"),
                }],
                name: label,
                value_label: counted,
            }
        })
        .collect();
    out.push_str(&bar_chart(
        "chart-causes",
        "Reclaimable bytes by cause",
        &rows,
    ));
    out.push_str("<p>Untagged manifests are freed only by <code>gc -m</code>; the rest by <code>gc</code>. Dangling links free no bytes.</p>");

    out.push_str(r#"<h2>Growth of shared and unique bytes</h2><p class="legend">cumulative bytes referenced, by the month blobs were written:<span style="background:#2b6cb0"></span>unique<span style="background:#90cdf4"></span>shared</p>"#);
    out.push_str(&growth_chart(&report.growth));

    out.push_str(r#"<h2>Repositories</h2><table id="repositories"><thead><tr><th>repository</th><th>tags</th><th>manifests</th><th>untagged</th><th>referenced</th><th>unique</th><th>shared</th><th>reclaimable (gc)</th><th>reclaimable (gc -m)</th></tr></thead><tbody>"#);
    for r in &report.repositories {
        let _ = write!(
            out,
            r#"<tr data-repository="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-bytes="{}">{}</td><td data-bytes="{}">{}</td><td data-bytes="{}">{}</td><td data-bytes="{}">{}</td><td data-bytes="{}">{}</td></tr>"#,
            escape(&r.name),
            escape(&r.name),
            r.tags,
            r.manifests,
            r.untagged_manifests,
            r.bytes_referenced,
            escape(&human_bytes(r.bytes_referenced)),
            r.bytes_unique,
            escape(&human_bytes(r.bytes_unique)),
            r.bytes_shared,
            escape(&human_bytes(r.bytes_shared)),
            r.reclaimable_bytes,
            escape(&human_bytes(r.reclaimable_bytes)),
            r.reclaimable_bytes_delete_untagged,
            escape(&human_bytes(r.reclaimable_bytes_delete_untagged)),
        );
    }
    out.push_str("</tbody></table>");

    out.push_str(r#"<h2>Largest blobs</h2><table id="blobs"><thead><tr><th>digest</th><th>size</th><th>status</th><th>written</th><th>referenced by</th><th>linked by</th></tr></thead><tbody>"#);
    for b in &report.largest_blobs {
        let _ = write!(
            out,
            r#"<tr><td><code>{}</code></td><td data-bytes="{}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(&b.digest),
            b.bytes,
            escape(&human_bytes(b.bytes)),
            b.status.as_str(),
            escape(&b.modified),
            escape(&b.repositories.join(", ")),
            escape(&b.linked_by.join(", "))
        );
    }
    out.push_str("</tbody></table>");
    for warning in &report.warnings {
        let _ = write!(
            out,
            r#"<p class="warning">warning: {}</p>"#,
            escape(warning)
        );
    }
    let _ = writeln!(out, "<script>{SELF_CHECK}</script></body></html>");
    out
}
