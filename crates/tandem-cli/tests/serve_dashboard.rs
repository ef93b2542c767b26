//! The dashboard at `/` in a real browser (Chromium, headless): after
//! traffic, the numbers it shows are those of `/v1/stats` and `/v1/sla`.

mod serve_common;

use std::process::Command;

use serve_common::*;

/// Chromium, when installed (`TANDEM_CHROMIUM`, else `chromium`).
fn chromium() -> Option<String> {
    let bin = std::env::var("TANDEM_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| bin)
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    rest[start..end].to_string()
}

fn one_decimal(v: &serde_json::Value) -> String {
    format!("{:.1}", v.as_f64().unwrap())
}

#[test]
fn the_dashboard_shows_what_the_stats_say() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_BROWSER").is_none(),
            "TANDEM_REQUIRE_BROWSER is set but Chromium is not installed"
        );
        eprintln!("skipped: no chromium (set TANDEM_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..4);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Serve::start(&["--model", s(&repo), "--store", s(&store)], &[]);
    for i in 0..19 {
        server.get_ok(&format!("/v1/predict/e{}", i % 4));
    }
    assert_eq!(server.get("/v1/predict/e1?mode=nope").status, 400);
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.unwrap().starts_with("text/html"));
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "the page must not load anything from elsewhere"
    );

    let profile = dir.path().join("chromium-profile");
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("{}/", server.base))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never loaded its data:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = server.get_ok("/v1/stats");
    let sla = server.get_ok("/v1/sla");
    assert_eq!(
        text_of(&dom, "requests"),
        st["requests"]["since_start"]["requests"].to_string()
    );
    assert_eq!(text_of(&dom, "requests"), "20");
    assert_eq!(
        text_of(&dom, "health"),
        st["health"]["status"].as_str().unwrap()
    );
    for src in ["memory", "store", "realtime", "stale", "default"] {
        assert_eq!(
            text_of(&dom, &format!("mix-{src}")),
            one_decimal(&st["source_mix_pct"]["since_start"][src]),
            "{src}"
        );
    }
    assert_eq!(
        text_of(&dom, "mix-realtime"),
        "21.1",
        "4 of 19 answers were computed"
    );
    let hit = st["hit_rate"]["memory"].as_f64().unwrap();
    assert_eq!(text_of(&dom, "hit-memory"), format!("{:.1}", 100.0 * hit));
    assert_eq!(
        text_of(&dom, "p99"),
        format!(
            "{:.3}",
            st["requests"]["recent"]["p99_ms"].as_f64().unwrap()
        )
    );
    assert_eq!(
        text_of(&dom, "failed"),
        st["requests"]["recent"]["failed"].to_string()
    );
    assert_eq!(
        text_of(&dom, "sla-status"),
        if sla["met"].as_bool().unwrap() {
            "met"
        } else {
            "missed"
        }
    );
    assert!(dom.contains("<td class=\"model\">churn</td>"), "{dom}");
}
