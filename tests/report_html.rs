//! The HTML cost report in a real browser: `regsweep report --format html` over the standard
//! workload pushed through the real registry, opened by headless Chromium (Debian's `chromium`,
//! installed by `scripts/install-deps`), whose DOM after load must show every chart drawn — each
//! mark laid out with a size, as the page's own check records it — with the elements the report's
//! JSON calls for, and no console message or script error. A page with a broken script and an
//! empty mark must fail the same check.

pub mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::hostile::run_with_deadline;
use support::workload::backdate_tree;
use support::{Fixture, run_regsweep};

/// Chromium on `PATH` (Debian's package installs `/usr/bin/chromium`); panics when there is none:
/// these tests never skip silently.
fn chromium() -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .expect("chromium is not installed: run scripts/install-deps")
}

/// The DOM of `page` once loaded (scripts run), and Chromium's stderr, where console messages show
/// as `…:CONSOLE:<line>] "message"`.
fn render(page: &Path, dir: &Path) -> (String, String) {
    let profile = dir.join("chromium-profile");
    fs::create_dir_all(&profile).unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let url = format!("file://{}", page.display());
    let run = run_with_deadline(
        dir,
        &chromium(),
        &[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &profile_arg,
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            &url,
        ],
        Duration::from_secs(120),
    );
    assert!(run.success(), "chromium failed:\n{}", run.describe());
    (run.stdout, run.stderr)
}

/// The value of attribute `name` in the start tag that begins at `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let head = &tag[..tag.find('>')?];
    let start = head.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = head[start..].find('"')?;
    Some(head[start..start + len].to_owned())
}

/// What one chart must show.
struct ChartExpectation {
    id: &'static str,
    /// Elements of the chart (`<g class="bar"`, `<g class="month"`) and how many.
    groups: (&'static str, usize),
    marks: usize,
}

/// Everything wrong with the rendered page: console output, script errors, charts not drawn or
/// not as expected.
fn problems(dom: &str, stderr: &str, charts: &[ChartExpectation]) -> Vec<String> {
    let mut problems: Vec<String> = stderr
        .lines()
        .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
        .map(|line| format!("console: {line}"))
        .collect();
    let Some(body) = dom.find("<body") else {
        problems.push("no <body> in the DOM".to_owned());
        return problems;
    };
    let body = &dom[body..];
    match attribute(body, "data-errors").as_deref() {
        Some("") => {}
        Some(errors) => problems.push(format!("script errors: {errors}")),
        None => problems.push("the page's check did not run (no data-errors)".to_owned()),
    }
    let drawn = attribute(body, "data-charts-drawn");
    if drawn.as_deref() != Some(&charts.len().to_string()) {
        problems.push(format!(
            "data-charts-drawn is {drawn:?}, not {}",
            charts.len()
        ));
    }
    for chart in charts {
        let Some(start) = dom.find(&format!("id=\"{}\"", chart.id)) else {
            problems.push(format!("no chart {}", chart.id));
            continue;
        };
        let tag_start = dom[..start].rfind("<svg").unwrap_or(start);
        let end = dom[tag_start..]
            .find("</svg>")
            .map_or(dom.len(), |e| tag_start + e);
        let svg = &dom[tag_start..end];
        let marks = svg.matches("class=\"mark\"").count();
        let groups = svg.matches(chart.groups.0).count();
        let laid_out = attribute(svg, "data-drawn");
        if marks != chart.marks || groups != chart.groups.1 {
            problems.push(format!(
                "{}: {marks} marks and {groups} `{}`, expected {} and {}",
                chart.id, chart.groups.0, chart.marks, chart.groups.1
            ));
        }
        if laid_out.as_deref() != Some(&chart.marks.to_string()) {
            problems.push(format!(
                "{}: {laid_out:?} marks laid out with a size, expected {}",
                chart.id, chart.marks
            ));
        }
    }
    problems
}

/// The charts a report's JSON calls for.
fn expected_charts(report: &Value) -> Vec<ChartExpectation> {
    let nonzero = |value: &Value, field: &str| usize::from(value[field].as_u64().unwrap() > 0);
    let repositories = report["largest_repositories"].as_array().unwrap();
    let causes = report["reclaimable_by_cause"].as_object().unwrap();
    let growth = report["growth"].as_array().unwrap();
    vec![
        ChartExpectation {
            id: "chart-repositories",
            groups: ("<g class=\"bar\"", repositories.len()),
            marks: repositories
                .iter()
                .map(|r| nonzero(r, "bytes_unique") + nonzero(r, "bytes_shared"))
                .sum(),
        },
        ChartExpectation {
            id: "chart-causes",
            groups: ("<g class=\"bar\"", 4),
            marks: causes.values().map(|c| nonzero(c, "bytes")).sum(),
        },
        ChartExpectation {
            id: "chart-growth",
            groups: ("<g class=\"month\"", growth.len()),
            marks: growth
                .iter()
                .map(|p| nonzero(p, "unique_bytes") + nonzero(p, "shared_bytes"))
                .sum(),
        },
    ]
}

/// Spreads the blobs' modification times over the last year, so that the growth chart has months.
fn age_blobs(v2: &Path) {
    let mut dirs: Vec<PathBuf> = fs::read_dir(v2.join("blobs/sha256"))
        .unwrap()
        .flat_map(|shard| fs::read_dir(shard.unwrap().path()).unwrap())
        .map(|blob| blob.unwrap().path())
        .collect();
    dirs.sort();
    let now = SystemTime::now();
    for (n, dir) in dirs.iter().enumerate() {
        let days = (n % 4) as u64 * 90;
        backdate_tree(dir, now - Duration::from_secs(days * 24 * 3600));
    }
}

#[test]
fn html_report_draws_its_charts_in_headless_chromium() {
    let mut f = Fixture::build();
    f.registry.stop();
    age_blobs(&f.v2_root());
    let config = f.registry.config_arg();
    let bin = Path::new(env!("CARGO_BIN_EXE_regsweep"));
    let page = f.dir().join("report.html");
    let page_arg = page.to_string_lossy().into_owned();
    let run = run_regsweep(
        bin,
        &[
            "report",
            &config,
            "--min-age",
            "0s",
            "--format",
            "html",
            "--output",
            &page_arg,
        ],
    );
    run.assert_success();
    assert_eq!(run.stdout, "", "--output writes the page, not stdout");
    let json = run_regsweep(
        bin,
        &["report", &config, "--min-age", "0s", "--format", "json"],
    );
    json.assert_success();
    let report = json.json();

    let html = fs::read_to_string(&page).unwrap();
    for external in ["http://", "https://", "src=", "href="] {
        // The SVG namespace is a name, not a fetch.
        let count = html.matches(external).count()
            - html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
                * usize::from(external == "http://");
        assert_eq!(
            count, 0,
            "the page refers to something outside it: {external}"
        );
    }

    let (dom, stderr) = render(&page, f.dir());
    let charts = expected_charts(&report);
    assert!(
        report["growth"].as_array().unwrap().len() >= 9,
        "blobs spread over 270 days"
    );
    let found = problems(&dom, &stderr, &charts);
    assert!(found.is_empty(), "{}\n--- DOM ---\n{dom}", found.join("\n"));
    for repository in report["repositories"].as_array().unwrap() {
        let name = repository["name"].as_str().unwrap();
        assert!(
            dom.contains(&format!("<tr data-repository=\"{name}\">")),
            "no row for {name}"
        );
    }
}

#[test]
fn the_chromium_check_catches_a_broken_page() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("broken.html");
    // One chart with a mark of no size, then a script that fails before it can record anything.
    fs::write(
        &page,
        r#"<!DOCTYPE html><html><body><svg class="chart" id="chart-growth" width="100" height="50"><g class="month"><rect class="mark" x="0" y="0" width="0" height="10"/></g></svg>
<script>
document.body.dataset.errors = '';
document.querySelector('svg').dataset.drawn = String(document.querySelector('.mark').getBBox().width > 0 ? 1 : 0);
notDefined();
</script></body></html>"#,
    )
    .unwrap();
    let (dom, stderr) = render(&page, dir.path());
    let charts = [ChartExpectation {
        id: "chart-growth",
        groups: ("<g class=\"month\"", 1),
        marks: 1,
    }];
    let found = problems(&dom, &stderr, &charts).join("\n");
    assert!(found.contains("Uncaught ReferenceError"), "{found}");
    assert!(found.contains("data-charts-drawn is None"), "{found}");
    assert!(
        found.contains("Some(\"0\") marks laid out with a size, expected 1"),
        "{found}"
    );
}
