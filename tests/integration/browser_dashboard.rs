//! A real browser draws the admin dashboard: with batches of 20 parts flowing through two routes (one with a
//! fixed limit and a few 503s, one with adaptive concurrency held low enough that parts queue for it), Debian's headless Chromium loads
//! `/admin/dashboard` from the admin listener and lets it poll `/admin/stats` a few times; the DOM it dumps
//! must show each route's charts with data, the tuning history, the bottlenecks section and the waterfall of a
//! finished batch: 20 parts, each with its queued → sent → first byte → done → written segments; and each
//! upstream address's health: `/search/` has a second address that refuses connections, shown ejected and why.
//!
//! It also takes a 1280x1000 screenshot; with `BATCHGATE_SCREENSHOT=path` set it is copied there (the README's
//! `docs/dashboard.png` comes from `BATCHGATE_SCREENSHOT=docs/dashboard.png cargo test --test
//! browser_dashboard`, which also lets the load run longer first, for fuller charts).
//!
//! Needs `chromium` on PATH (`.ci/run` installs it); without it the test says so and passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use batchgate::server::admin::Admin;
use http::StatusCode;

const PARTS: usize = 20;

/// `/mail/`: 5 to 20 ms by message, and a 503 for one part in 50. `/search/`: 8 ms, slower (25 ms) for 3 s
/// in every 10, so latency and the adaptive limit move; plus `extra` ms.
async fn upstreams(extra: Arc<AtomicU64>) -> (Upstream, Upstream) {
    let count = Arc::new(AtomicU64::new(0));
    let mail = upstream(move |seen| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        async move {
            let id: u64 = seen
                .uri
                .path()
                .rsplit('/')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(5 + (id * 7) % 16)).await;
            if n % 50 == 49 {
                text(StatusCode::SERVICE_UNAVAILABLE, "busy")
            } else {
                text(StatusCode::OK, format!("message {id}"))
            }
        }
    })
    .await;
    let search = upstream(move |_| {
        let extra = extra.load(Ordering::Relaxed);
        async move {
            let phase = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                % 10;
            let ms = if phase < 3 { 25 } else { 8 };
            tokio::time::sleep(Duration::from_millis(ms + extra)).await;
            text(StatusCode::OK, "results")
        }
    })
    .await;
    (mail, search)
}

/// A batch of 20 GETs: 14 to `/mail/`, 6 to `/search/`.
fn batch(round: usize) -> String {
    let targets: Vec<String> = (0..PARTS)
        .map(|i| {
            if i % 10 < 7 {
                format!("/mail/v1/messages/{}", round * PARTS + i)
            } else {
                format!("/search/q/{i}")
            }
        })
        .collect();
    get_batch("b", &targets)
}

/// The start tags in `html` whose text contains `marker` (e.g. `class="part"`).
fn tags<'a>(html: &'a str, marker: &str) -> Vec<&'a str> {
    html.match_indices(marker)
        .map(|(at, _)| {
            let start = html[..=at].rfind('<').unwrap();
            let end = at + html[at..].find('>').unwrap();
            &html[start..=end]
        })
        .collect()
}

/// An attribute of a start tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(tag[start..start + tag[start..].find('"')?].to_owned())
}

fn number(tag: &str, name: &str) -> f64 {
    attr(tag, name)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        .parse()
        .unwrap()
}

/// The inside of the element whose start tag contains `marker`, up to the first `close` after it.
fn inside<'a>(html: &'a str, marker: &str, close: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the DOM"));
    let from = at + html[at..].find('>').unwrap() + 1;
    &html[from..from + html[from..].find(close).unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_routes_tuning_and_a_waterfall() {
    if !chromium_installed() {
        eprintln!("chromium not installed: browser test skipped; .ci/run installs it");
        return;
    }
    let search_slowdown = Arc::new(AtomicU64::new(0));
    let (mail, search) = upstreams(search_slowdown.clone()).await;
    // Ejected after its first three parts, for longer than the test runs: no probe of it turns up in the
    // batch the waterfall shows.
    let dead = dead_addr().await;
    let config = format!(
        "[upstream]\neject_for = \"5m\"\neject_max = \"5m\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\
         [[routes]]\nprefix = \"/search/\"\nupstreams = [\"http://{}\", \"http://{dead}\"]\n\
         adaptive_concurrency = {{ min = 2, max = 4 }}\n",
        routes(&[("/mail/", mail.addr)]),
        search.addr
    );
    let (gw, live) = live_gateway(&config).await;
    let admin = start_admin(Admin::new(live)).await;
    let gw = Arc::new(gw);

    // Load: two clients sending batches of 20 parts back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for client in 0..2 {
        let (gw, stop, answered) = (gw.clone(), stop.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let mut round = client;
            while !stop.load(Ordering::Relaxed) {
                let parts = gw
                    .post("multipart/mixed; boundary=b", batch(round))
                    .await
                    .parts();
                assert_eq!(parts.len(), PARTS);
                answered.fetch_add(1, Ordering::Relaxed);
                round += 2;
            }
        }));
    }

    // Until the stats have something to draw: batches done, a limit change, and some seconds of traffic (more
    // for the README's screenshot).
    let for_readme = std::env::var_os("BATCHGATE_SCREENSHOT").is_some();
    let seconds = if for_readme { 45 } else { 3 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 30);
    let stats = loop {
        let stats = admin.stats().await;
        let busy_seconds = stats["routes"][0]["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["parts"].as_u64().unwrap() > 0)
            .count() as u64;
        if answered.load(Ordering::Relaxed) >= 10
            && !stats["tuning"].as_array().unwrap().is_empty()
            && busy_seconds >= seconds
        {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stats never filled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tuned = stats["tuning"].as_array().unwrap().len();
    if for_readme {
        // For the README: `/search/` slows down, parts queue for its limit, and a bottleneck shows.
        search_slowdown.store(40, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let stats = admin.stats().await;
            let routes = stats["routes"].as_array().unwrap();
            if routes.iter().any(|r| !r["bottleneck"].is_null()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no bottleneck after /search/ slowed down: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let url = admin.url("/admin/dashboard");
    let dom = dump_dom(&url, 4000).await;
    let shots = TempDir::new("dashboard-shot");
    let png = shots.join("dashboard.png");
    screenshot(&url, &png, (1280, 1000), 4000).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        within(30, "the load to stop", task).await.unwrap();
    }

    // It polled and rendered.
    assert!(dom.contains("id=\"status\" class=\"live\">live<"), "{dom}");
    assert!(dom.contains("id=\"max-inflight\">1024<"), "{dom}");

    // Each route: its card, and four charts with points over the last 120 s.
    let route_cards = tags(&dom, "class=\"route\"");
    let names: Vec<String> = route_cards
        .iter()
        .map(|t| attr(t, "data-route").unwrap())
        .collect();
    assert_eq!(names, ["/mail/", "/search/"], "{dom}");
    let routes_html = inside(&dom, "id=\"routes\"", "id=\"bottlenecks-section\"");
    for (i, name) in names.iter().enumerate() {
        let card = routes_html
            .split("class=\"route\"")
            .nth(i + 1)
            .unwrap_or_else(|| panic!("no card for {name}"));
        let charts = tags(card, "class=\"chart\"");
        let metrics: Vec<String> = charts
            .iter()
            .map(|t| attr(t, "data-metric").unwrap())
            .collect();
        assert_eq!(
            metrics,
            ["rate", "p99", "errors", "limit"],
            "{name}: {card}"
        );
        for chart in &charts {
            assert!(number(chart, "data-points") > 0.0, "{name}: {chart}");
        }
        assert!(
            number(charts[0], "data-total") >= 1.0,
            "{name}: {}",
            charts[0]
        );
        assert!(
            card.contains("class=\"series\""),
            "{name}: a line is drawn: {card}"
        );
    }
    // Each address of each route, with its state; the dead one of /search/ ejected, saying why.
    let search_card = routes_html.split("class=\"route\"").nth(2).unwrap();
    let addresses = tags(search_card, "class=\"address\"");
    let states: Vec<(String, String)> = addresses
        .iter()
        .map(|t| {
            (
                attr(t, "data-address").unwrap(),
                attr(t, "data-state").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (search.addr.to_string(), "healthy".to_owned()),
            (dead.to_string(), "ejected".to_owned())
        ],
        "{search_card}"
    );
    let ejected = search_card.split("class=\"address\"").nth(2).unwrap();
    let reason = inside(ejected, "class=\"reason\"", "</span>");
    assert!(
        reason.contains("failed 3 times in a row") && reason.contains(" until "),
        "{reason}"
    );
    let mail_card = routes_html.split("class=\"route\"").nth(1).unwrap();
    assert_eq!(
        tags(mail_card, "class=\"address\"")
            .iter()
            .map(|t| attr(t, "data-state").unwrap())
            .collect::<Vec<_>>(),
        ["healthy"],
        "{mail_card}"
    );
    let errors = tags(mail_card, "data-metric=\"errors\"");
    assert!(
        number(errors[0], "data-total") >= 1.0,
        "the 503s: {}",
        errors[0]
    );

    // Bottlenecks: the section, with either "none" or each bottleneck's detail and recommendation.
    let bottlenecks = inside(&dom, "id=\"bottlenecks\"", "</section>");
    let found = tags(bottlenecks, "class=\"bottleneck\"");
    if found.is_empty() {
        assert!(bottlenecks.contains("class=\"none\""), "{bottlenecks}");
    } else {
        for b in &found {
            assert!(attr(b, "data-route").is_some() && attr(b, "data-kind").is_some());
        }
        assert_eq!(bottlenecks.matches("class=\"detail\"").count(), found.len());
        assert_eq!(
            bottlenecks.matches("class=\"recommendation\"").count(),
            found.len()
        );
    }

    // Tuning: at least the changes there were before the page loaded, all of the adaptive route.
    let tuning = inside(&dom, "id=\"tuning\"", "</table>");
    let events = tags(tuning, "class=\"event\"");
    assert!(
        events.len() >= tuned,
        "{} < {tuned}: {tuning}",
        events.len()
    );
    for event in &events {
        assert_eq!(attr(event, "data-route").unwrap(), "/search/");
    }

    // The waterfall: a finished batch of the list, its 20 parts in order, each with its four segments.
    let select = inside(&dom, "id=\"batch-select\"", "</select>");
    let options: Vec<String> = tags(select, "<option")
        .iter()
        .map(|t| attr(t, "value").unwrap())
        .collect();
    assert!(!options.is_empty() && options.len() <= 50, "{select}");
    let waterfall = inside(&dom, "id=\"waterfall\"", "</section>");
    let svg = tags(waterfall, "data-batch=")[0];
    let shown = attr(svg, "data-batch").unwrap();
    assert!(options.contains(&shown), "{shown} in {options:?}");
    assert_eq!(attr(svg, "data-parts").unwrap(), PARTS.to_string());
    let parts: Vec<&str> = waterfall.split("<g class=\"part\"").skip(1).collect();
    assert_eq!(parts.len(), PARTS, "{waterfall}");
    for (i, part) in parts.iter().enumerate() {
        let head = &part[..part.find('>').unwrap()];
        assert_eq!(attr(head, "data-index").unwrap(), i.to_string(), "{head}");
        let route = attr(head, "data-route").unwrap();
        assert_eq!(route, if i % 10 < 7 { "/mail/" } else { "/search/" });
        let status = attr(head, "data-status").unwrap();
        // 503: the mail upstream's own; 502: a part the dead /search/ address took before its ejection.
        assert!(["200", "503", "502"].contains(&status.as_str()), "{head}");
        let body = &part[..part.find("</g>").unwrap()];
        let segments: Vec<String> = tags(body, "class=\"seg ")
            .iter()
            .map(|t| attr(t, "data-seg").unwrap())
            .collect();
        assert_eq!(
            segments,
            ["queued", "upstream", "body", "write"],
            "part {i}: {body}"
        );
    }
    let legend = inside(&dom, "id=\"legend\"", "</div>");
    for seg in ["queued", "upstream", "body", "write"] {
        assert!(legend.contains(&format!("data-seg=\"{seg}\"")), "{legend}");
    }
    assert!(
        waterfall.contains(" ms</text>"),
        "a time axis in ms: {waterfall}"
    );

    // The screenshot: a 1280x1000 PNG (its IHDR), copied out when asked for.
    let image = std::fs::read(&png).unwrap();
    let width = u32::from_be_bytes(image[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(image[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 1000));
    if let Some(target) = std::env::var_os("BATCHGATE_SCREENSHOT") {
        let target = std::path::PathBuf::from(target);
        // Relative to the crate, where `cargo test` was asked from.
        let target = if target.is_relative() {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
        } else {
            target
        };
        std::fs::copy(&png, &target).unwrap();
        eprintln!("screenshot written to {}", target.display());
    }
    admin.stop().await;
    Arc::into_inner(gw).unwrap().stop().await;
}
