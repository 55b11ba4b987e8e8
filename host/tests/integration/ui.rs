//! The web console (`/ui`, issue 19) in a real browser: Debian's chromium,
//! headless, driven over WebDriver by chromedriver (started here on a free
//! port), against a service running real plugins. One test walks what an
//! operator does (jobs submitted with two API keys, one with limits and
//! quotas, so the usage page has something to chart); it writes a
//! screenshot of each page under `target/ui-screenshots/` and reads the
//! browser's log for errors. A second checks the session cookie's CSRF rules
//! over plain HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use vendorhost::config::{KeyQuota, KeySettings, QuotaPeriod};

use crate::support::app::{TestApp, embedded_config, eventually, plugin, plugins_dir, repo_root, test_plugin};
use crate::support::servers::free_port;

const ADMIN: &str = "console-test-admin-key";
// Generous: the suite runs this beside a hundred other tests on two cores, and
// the page samples every 3 s while a plugin reload compiles in the background.
const WAIT: Duration = Duration::from_secs(60);
const VIEWER_ZONE: &str = "America/New_York";
/// The API keys the test's traffic uses (names `alice` and `bob`).
const ALICE: &str = "console-test-alice-key";
const BOB: &str = "console-test-bob-key";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        // The browser's zone (chromium reads TZ): the console must show
        // times in it, not in UTC.
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TZ", VIEWER_ZONE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: run `make test-deps` (Debian packages chromium, chromium-driver)");
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        eventually(WAIT, "chromedriver to answer", || async {
            let r = http.get(format!("{}/status", driver.url)).send().await.ok()?;
            let body: Value = r.json().await.ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1366,768", "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("start a chromium session")
    }

    /// The browser's console log since the last call (chromedriver's
    /// `se/log`, as Selenium reads it).
    async fn log(&self, c: &Client) -> Vec<Value> {
        let id = c.session_id().await.unwrap().unwrap();
        let r: Value = reqwest::Client::new()
            .post(format!("{}/session/{id}/se/log", self.url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["value"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("chromium is not installed: run `make test-deps`");
}

fn shots() -> PathBuf {
    let d = repo_root().join("target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn find(c: &Client, css: &str) -> Element {
    c.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"))
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` (a JS expression) is truthy, and returns its value.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    until_within(WAIT, c, what, script).await
}

async fn until_within(timeout: Duration, c: &Client, what: &str, script: &str) -> Value {
    let body = format!("return ({script}) || null;");
    eventually(timeout, what, || async {
        let v = c.execute(&body, vec![]).await.ok()?;
        (!v.is_null() && v != false).then_some(v)
    })
    .await
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Clicks the dialog's confirm button once the dialog is open.
async fn confirm(c: &Client) {
    until(c, "the confirm dialog", "document.querySelector('#confirm').open").await;
    click(c, "#confirm-ok").await;
}

async fn post(app: &TestApp, path: &str, body: Value) -> Value {
    app.client.post(app.url(path)).json(&body).send().await.unwrap().json().await.unwrap()
}

/// `n` as the console shows it (en-US digit groups).
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Nothing wider than the window (no sideways scrolling of the page).
async fn fits(c: &Client, what: &str) {
    let (doc, win) = {
        let v = js(c, "return [document.documentElement.scrollWidth, window.innerWidth];").await;
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    };
    assert!(doc <= win, "{what}: the page is {doc} px wide in a {win} px window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_works_the_console_in_a_browser() {
    // A file of the wrong world is rejected (the plugins page says why).
    let plugins = plugins_dir(&[plugin("sync"), test_plugin("echo-v1"), test_plugin("wrong-world")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.auth.admin_key = ADMIN.into();
    cfg.auth.api_keys = [(ALICE.to_string(), "alice".to_string()), (BOB.to_string(), "bob".to_string())].into();
    cfg.auth.keys.insert(
        "alice".into(),
        KeySettings {
            submit_rate: Some(200.0),
            submit_burst: Some(400),
            max_in_flight: Some(5000),
            quotas: [
                ("sync".to_string(), KeyQuota { limit: 100_000, per: QuotaPeriod::Day }),
                ("test-echo".to_string(), KeyQuota { limit: 1000, per: QuotaPeriod::Month }),
            ]
            .into(),
            ..Default::default()
        },
    );
    cfg.vendors.entry("test-echo".into()).or_default().timeout = Some(Duration::from_secs(60));
    let mut app = TestApp::start(cfg).await;
    // The test's own requests are alice's unless they name another key.
    let mut alice = reqwest::header::HeaderMap::new();
    alice.insert(reqwest::header::AUTHORIZATION, format!("Bearer {ALICE}").parse().unwrap());
    app.client = reqwest::Client::builder().default_headers(alice).build().unwrap();
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;

    // Signed out: the sign-in form, no data.
    c.goto(&app.url("/ui/")).await.unwrap();
    find(&c, "#admin-key").await.send_keys(ADMIN).await.unwrap();
    shot(&c, "sign-in").await;
    let hidden = "getComputedStyle(document.querySelector('#nav')).display === 'none' && getComputedStyle(document.querySelector('#logout')).display === 'none'";
    assert_eq!(js(&c, &format!("return {hidden}")).await, true, "pages shown before signing in");
    click(&c, "#sign-in").await;
    find(&c, "#vendor-table").await;
    assert_eq!(js(&c, "return getComputedStyle(document.querySelector('#nav')).display").await, "flex");

    // An upgrade in place (written aside, renamed over): the reload history.
    let aside = plugins.path().join(".echo.wasm.tmp");
    std::fs::copy(test_plugin("echo-v2"), &aside).unwrap();
    std::fs::rename(&aside, plugins.path().join("echo-v1.wasm")).unwrap();

    // Traffic while the overview watches: quick calls and slower ones.
    let traffic = {
        let (client, base) = (app.client.clone(), app.base.clone());
        tokio::spawn(async move {
            for i in 0u64.. {
                let body = if i % 3 == 0 {
                    json!({"vendor": "test-echo", "data": {"sleep_ms": 20 + (i * 37) % 250}})
                } else {
                    json!({"vendor": "sync", "data": format!("traffic {i}")})
                };
                let _ = client.post(format!("{base}/jobs")).json(&body).send().await;
                tokio::time::sleep(Duration::from_millis(60 + (i * 53) % 120)).await;
            }
        })
    };
    // Overview: live numbers and both charts, fed without a reload (a
    // marker set in the page survives every sample).
    // Both loaded vendors (the metrics recorder is the test process's, so
    // other tests' vendors may be listed too, as not loaded).
    until(
        &c,
        "both vendors",
        "['sync', 'test-echo'].every(v => document.querySelector(`#vendor-table tbody tr[data-vendor='${v}']`))",
    )
    .await;
    js(&c, "window.sameDocument = true; return null").await;
    // Five 3-second samples (more time on a loaded machine: polls wait for their answers).
    let samples = "Number(document.querySelector('#chart-throughput').dataset.samples) >= 5";
    until_within(Duration::from_secs(60), &c, "5 samples", samples).await;
    let rate = js(&c, "return document.querySelector('#card-rate .value').textContent").await;
    assert!(rate.as_str().unwrap().parse::<f64>().is_ok_and(|r| r > 0.0), "no throughput shown: {rate}");
    let p95 =
        js(&c, "return document.querySelector('#vendor-table tr[data-vendor=sync] td:nth-child(8)').textContent").await;
    assert!(p95.as_str().unwrap().parse::<f64>().is_ok(), "no p95 latency for sync: {p95}");
    assert_eq!(js(&c, "return document.querySelectorAll('.uplot canvas').length").await, 2, "two charts");
    shot(&c, "overview").await;
    assert_eq!(js(&c, "return window.sameDocument === true").await, true, "the overview reloaded itself");
    traffic.abort();

    // Jobs: open the page, then submit through the API: completes, failures
    // (dead-lettered), one slow call. They appear without a reload.
    c.goto(&app.url("/ui/#/jobs")).await.unwrap();
    find(&c, "#job-rows tr[data-id]").await;
    js(&c, "window.sameDocument = true; return null").await;
    let mut complete = Vec::new();
    for i in 0..6 {
        complete.push(app.submit("sync", json!(format!("ui {i}"))).await);
    }
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(app.submit("test-echo", json!({"fail": "bad-request"})).await);
    }
    let slow = app.submit("test-echo", json!({"sleep_ms": 30_000})).await;
    let listed = |id: &str, status: &str| {
        format!("document.querySelector(\"#job-rows tr[data-id='{id}'][data-status='{status}']\")")
    };
    for id in &complete {
        until(&c, "a complete job listed", &listed(id, "complete")).await;
    }
    for id in &failed {
        until(&c, "a failed job listed", &listed(id, "failed")).await;
    }
    until(&c, "the slow job listed", &listed(&slow, "processing")).await;
    assert_eq!(js(&c, "return window.sameDocument === true").await, true, "the jobs page reloaded itself");
    let created =
        js(&c, "return [...document.querySelectorAll('#job-rows tr[data-id]')].map(r => r.dataset.created)").await;
    let created: Vec<&str> = created.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "not newest first: {created:?}");
    shot(&c, "jobs").await;

    // Filter the failed ones.
    find(&c, "#f-status").await.select_by_value("failed").await.unwrap();
    click(&c, "#apply-filters").await;
    until(&c, "only failed rows", "location.hash.includes('status=failed') && document.querySelectorAll('#job-rows tr[data-id]').length === 3 && [...document.querySelectorAll('#job-rows tr[data-id]')].every(r => r.dataset.status === 'failed')").await;

    // A failed job's timeline: submitted, its call, failed, dead-lettered.
    click(&c, &format!("#job-rows tr[data-id='{}'] a", failed[0])).await;
    let timeline = find(&c, "#timeline").await;
    until(
        &c,
        "the dead letter on the timeline",
        "document.querySelector('#timeline').textContent.includes('Dead-lettered')",
    )
    .await;
    let text = timeline.text().await.unwrap();
    for part in ["Submitted", "Call 1: failed", "Failed", "Dead-lettered"] {
        assert!(text.contains(part), "timeline lacks {part:?}: {text}");
    }
    // The call is a row of its own, from the job's attempt records.
    assert_eq!(
        js(&c, "return document.querySelectorAll('#timeline li.attempt').length").await,
        1,
        "one attempt row: {text}"
    );
    shot(&c, "job-timeline").await;

    // Cancel the running job from its page.
    eventually(WAIT, "the slow job to run", || async {
        (app.job(&slow).await["status"] == "processing").then_some(())
    })
    .await;
    c.goto(&app.url(&format!("/ui/#/jobs/{slow}"))).await.unwrap();
    until(&c, "the running job", "document.querySelector('#job-status')?.textContent === 'processing'").await;
    click(&c, "#cancel-job").await;
    confirm(&c).await;
    until(&c, "the job cancelled", "document.querySelector('#job-status')?.textContent === 'cancelled'").await;
    assert_eq!(app.job(&slow).await["status"], "cancelled");

    // Dead letters: filter by vendor, replay the filtered set in bulk.
    let before: Value =
        app.client.get(app.url("/admin/dead-letters")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let old_ids: Vec<String> =
        before["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(old_ids.len(), 3, "{before}");
    c.goto(&app.url("/ui/#/dead-letters")).await.unwrap();
    until(&c, "3 dead letters listed", "document.querySelectorAll('#dl-rows tr[data-id]').length === 3").await;
    find(&c, "#dl-vendor").await.select_by_value("test-echo").await.unwrap();
    find(&c, "#dl-reason").await.send_keys("bad").await.unwrap();
    until(&c, "the filter applied", "document.querySelector('#dl-count').textContent.startsWith('3 of 3')").await;
    shot(&c, "dead-letters").await;
    click(&c, "#dl-replay").await;
    confirm(&c).await;
    until(
        &c,
        "the replay reported",
        "document.querySelector('#bulk-result').textContent.includes('Replayed 3 dead letters')",
    )
    .await;
    let after: Value =
        app.client.get(app.url("/admin/dead-letters")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    for d in after["dead_letters"].as_array().unwrap() {
        assert!(
            !old_ids.contains(&d["id"].as_str().unwrap().to_string()),
            "a replayed dead letter is still there: {after}"
        );
    }

    // Plugins: what is loaded, with its hash and load time.
    c.goto(&app.url("/ui/#/plugins")).await.unwrap();
    let rows = until(&c, "both plugins", "document.querySelectorAll('#plugins-table tr[data-vendor]').length === 2 && document.querySelector('#plugins-table').textContent").await;
    let text = rows.as_str().unwrap();
    let vendors: Value =
        app.client.get(app.url("/vendors")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    for v in vendors["vendors"].as_array().unwrap() {
        assert!(text.contains(v["sha256"].as_str().unwrap()) && text.contains(v["file"].as_str().unwrap()), "{text}");
    }
    let rejected = js(&c, "return document.querySelector('#rejected-table tbody').textContent").await;
    assert!(rejected.as_str().unwrap().contains("wrong-world.wasm"), "{rejected}");
    let reason = vendors["rejected"][0]["reason"].as_str().unwrap();
    assert!(rejected.as_str().unwrap().contains(reason), "{rejected} lacks {reason}");
    let history = js(&c, "return [...document.querySelectorAll('#history-table tbody tr')].map(r => [...r.cells].map(td => td.textContent.trim()).join(' '))").await;
    let history: Vec<&str> = history.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(history.iter().any(|h| h.contains("reloaded test-echo echo-v1.wasm 2.0.0")), "{history:#?}");
    assert!(history.iter().any(|h| h.contains("loaded sync sync.wasm 0.1.0")), "{history:#?}");
    assert!(history.iter().any(|h| h.contains("rejected") && h.contains("wrong-world.wasm")), "{history:#?}");
    shot(&c, "plugins").await;

    // Usage: bob makes two calls too. Calls per hour by key and by vendor
    // (uPlot), a table that matches GET /usage, the limits and quotas used.
    for i in 0..2 {
        let r = app
            .client
            .post(app.url("/jobs"))
            .bearer_auth(BOB)
            .json(&json!({"vendor": "sync", "data": format!("bob {i}")}))
            .send()
            .await
            .unwrap();
        let id = r.json::<Value>().await.unwrap()["request_id"].as_str().unwrap().to_string();
        eventually(WAIT, "bob's job to complete", || async {
            let r = app.client.get(app.url(&format!("/jobs/{id}"))).bearer_auth(BOB).send().await.ok()?;
            (r.json::<Value>().await.ok()?["status"] == "complete").then_some(())
        })
        .await;
    }
    c.goto(&app.url("/ui/#/usage")).await.unwrap();
    // The replayed dead letters may still be calling, and usage is written
    // within a second of each call: read until the page and the API agree
    // and show bob's two calls.
    let per_key = "const m = {}; for (const r of document.querySelectorAll('#usage-table tbody tr[data-key]')) \
        m[r.dataset.key] = (m[r.dataset.key] || 0) + Number(r.dataset.calls); return m;";
    let calls = eventually(WAIT, "the usage table to match GET /usage", || async {
        let api: Value = app.client.get(app.url("/usage")).bearer_auth(ADMIN).send().await.ok()?.json().await.ok()?;
        let mut want = serde_json::Map::new();
        for r in api["usage"].as_array()? {
            let n = want.entry(r["key"].as_str()?.to_string()).or_insert(json!(0));
            *n = json!(n.as_u64()? + r["calls"].as_u64()?);
        }
        c.refresh().await.ok()?;
        c.wait().at_most(WAIT).for_element(Locator::Css("#usage-table tbody tr[data-key]")).await.ok()?;
        let shown = c.execute(per_key, vec![]).await.ok()?;
        (want.get("bob") == Some(&json!(2)) && shown == Value::Object(want.clone())).then_some(want)
    })
    .await;
    assert_eq!(calls["bob"], 2, "{calls:?}");
    assert!(calls["alice"].as_u64() > Some(10), "{calls:?}");
    // Both charts drew, one series per key and per vendor.
    until(
        &c,
        "the usage charts",
        "document.querySelectorAll('#chart-usage-keys .uplot canvas, #chart-usage-vendors .uplot canvas').length === 2",
    )
    .await;
    assert_eq!(js(&c, "return document.querySelector('#chart-usage-keys').dataset.series").await, "2");
    assert_eq!(js(&c, "return document.querySelector('#chart-usage-vendors').dataset.series").await, "2");
    let legend = js(&c, "return document.querySelector('#chart-usage-keys .u-legend').textContent").await;
    assert!(legend.as_str().unwrap().contains("alice") && legend.as_str().unwrap().contains("bob"), "{legend}");
    let drawn = "(() => { const cv = document.querySelector('#chart-usage-keys canvas'); \
        const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data; \
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()";
    assert!(js(&c, &format!("return {drawn}")).await.as_u64() > Some(1000), "the key chart's canvas is blank");
    // Limits: alice's quotas as GET /vendors counts them; bob has none.
    let vendors: Value =
        app.client.get(app.url("/vendors")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let quota = vendors["keys"][0]["quotas"].as_array().unwrap().iter().find(|q| q["vendor"] == "sync").unwrap();
    let text =
        js(&c, "return document.querySelector('#limits-table tr[data-key=alice] [data-quota=sync]').textContent").await;
    let used = quota["used"].as_u64().unwrap();
    let sync = vendors["vendors"].as_array().unwrap().iter().find(|v| v["id"] == "sync").unwrap();
    let today = sync["usage"]["today"]["keys"].as_array().unwrap().iter().find(|k| k["key"] == "alice").unwrap();
    assert_eq!(today["calls"].as_u64(), Some(used), "each call took one unit of the quota: {quota} {today}");
    let want = format!("{} / 100,000 per day", grouped(used));
    assert!(text.as_str().unwrap().contains(&want), "{text} lacks {want}");
    let bob = js(&c, "return document.querySelector('#limits-table tr[data-key=bob]').textContent").await;
    assert!(bob.as_str().unwrap().contains("none"), "{bob}");
    // Tall enough that the shot shows the tables under the charts.
    c.set_window_size(1366, 1300).await.unwrap();
    shot(&c, "usage").await;
    c.set_window_size(1366, 768).await.unwrap();
    // Filters: bob only, then by day.
    find(&c, "#u-key").await.select_by_value("bob").await.unwrap();
    until(&c, "only bob's rows", "location.hash.includes('key=bob') && document.querySelectorAll('#usage-table tbody tr[data-key]').length > 0 && [...document.querySelectorAll('#usage-table tbody tr[data-key]')].every(r => r.dataset.key === 'bob')").await;
    find(&c, "#u-view").await.select_by_value("day").await.unwrap();
    until(&c, "bob's day", "location.hash.includes('view=day') && document.querySelector('#usage-table tr[data-key=bob]')?.dataset.calls === '2'").await;

    // 1,000 jobs on one page (two pages of 500), still within the window.
    let batch: Vec<Value> = (0..1000).map(|i| json!({"vendor": "sync", "data": format!("bulk {i}")})).collect();
    let r = post(&app, "/jobs/batch", json!({"jobs": batch})).await;
    assert_eq!(r["results"].as_array().unwrap().len(), 1000);
    c.goto(&app.url("/ui/#/jobs?limit=500")).await.unwrap();
    until(&c, "a first page of 500", "document.querySelectorAll('#job-rows tr[data-id]').length === 500").await;
    click(&c, "#load-more").await;
    until(&c, "1,000 rows", "document.querySelectorAll('#job-rows tr[data-id]').length === 1000").await;
    fits(&c, "1,000 jobs at 1366 px").await;
    shot(&c, "jobs-1000").await;

    // Keyboard: Tab from the top reaches the skip link, then the pages.
    c.goto(&app.url("/ui/#/overview")).await.unwrap();
    find(&c, "#vendor-table").await;
    c.refresh().await.unwrap();
    find(&c, "#vendor-table").await;
    let mut reached = Vec::new();
    for _ in 0..7 {
        c.active_element().await.unwrap().send_keys("\u{e004}").await.unwrap();
        reached.push(js(&c, "return document.activeElement.textContent.trim()").await);
    }
    for page in ["Skip to content", "Overview", "Jobs", "Dead letters", "Plugins", "Usage"] {
        assert!(reached.iter().any(|r| r == page), "Tab never reaches {page:?}: {reached:?}");
    }

    // A 390 px phone: every page fits the width.
    c.set_window_size(390, 844).await.unwrap();
    for (hash, ready, name) in [
        ("#/overview", "#vendor-table", "overview-phone"),
        ("#/jobs", "#job-rows tr[data-id]", "jobs-phone"),
        ("#/dead-letters", "#dl-table", "dead-letters-phone"),
        ("#/plugins", "#plugins-table", "plugins-phone"),
        ("#/usage", "#usage-table", "usage-phone"),
    ] {
        c.goto(&app.url(&format!("/ui/{hash}"))).await.unwrap();
        find(&c, ready).await;
        fits(&c, name).await;
        shot(&c, name).await;
    }

    // Times are shown in the viewer's zone, and nothing went wrong in the page.
    let zone = js(&c, "return document.querySelector('#tz').textContent").await;
    assert_eq!(zone, format!("Times in {VIEWER_ZONE}"));
    let log = driver.log(&c).await;
    let errors: Vec<&Value> = log.iter().filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING").collect();
    assert!(errors.is_empty(), "the browser logged problems: {errors:#?}");
    c.close().await.unwrap();
    app.stop().await;
}

/// The session cookie stands for the admin key only with the console's
/// header; the files are served without a key, with a strict CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_session_is_http_only_strict_and_csrf_safe() {
    let plugins = plugins_dir(&[plugin("sync")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.auth.admin_key = ADMIN.into();
    cfg.auth.api_keys.insert("client-key".into(), "alice".into());
    let app = TestApp::start(cfg).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // The page itself needs no key (it holds no data), and is locked down.
    let r = http.get(app.url("/ui")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (308, "/ui/"));
    let r = http.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let etag = r.headers()["etag"].clone();
    let r = http.get(app.url("/ui/app.js")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    let r = http.get(app.url("/ui/")).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(http.get(app.url("/ui/nope.js")).send().await.unwrap().status(), 404);
    let s: Value = http.get(app.url("/ui/session")).send().await.unwrap().json().await.unwrap();
    assert_eq!(s, json!({"access": "key", "api_keys": true, "signed_in": false, "expires_at": null}));

    // Sign-in: JSON only, the admin key only.
    let login = |body: &str, ct: &str| {
        http.post(app.url("/ui/login")).header("content-type", ct.to_string()).body(body.to_string()).send()
    };
    assert_eq!(login(r#"{"key":"client-key"}"#, "application/json").await.unwrap().status(), 401);
    assert_eq!(login(&format!("key={ADMIN}"), "application/x-www-form-urlencoded").await.unwrap().status(), 415);
    let r = login(r#"{"wrong":1}"#, "application/json").await.unwrap();
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"].as_str().unwrap().contains("unknown field `wrong`"), "{b}");
    let r = login(&json!({"key": ADMIN}).to_string(), "application/json").await.unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(part), "cookie lacks {part}: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();

    // The cookie with the console's header is the admin key; without the
    // header (a cross-site form, a plain link) it is nothing.
    let with = |path: &str, header: bool| {
        let mut rb = http.get(app.url(path)).header("cookie", cookie.clone());
        if header {
            rb = rb.header("x-requested-with", "vendorhost-console");
        }
        rb.send()
    };
    for path in ["/admin/dead-letters", "/vendors", "/metrics", "/jobs"] {
        assert_eq!(with(path, true).await.unwrap().status(), 200, "{path} with the console's header");
        assert_eq!(with(path, false).await.unwrap().status(), 401, "{path} without it");
    }
    let r = http
        .post(app.url("/admin/dead-letters/bulk"))
        .header("cookie", cookie.clone())
        .json(&json!({"action": "discard", "ids": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a state change without the header");
    // The listing sees every key's jobs, as the admin key does.
    let alice = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth("client-key")
        .json(&json!({"vendor": "sync", "data": "x"}))
        .send()
        .await
        .unwrap();
    let id = alice.json::<Value>().await.unwrap()["request_id"].as_str().unwrap().to_string();
    let page: Value = with("/jobs", true).await.unwrap().json().await.unwrap();
    assert!(page["jobs"].as_array().unwrap().iter().any(|j| j["request_id"] == id.as_str()), "{page}");
    let s: Value = with("/ui/session", false).await.unwrap().json().await.unwrap();
    assert_eq!(s["signed_in"], true);

    // A forged or stretched token fails; signing out clears the cookie.
    let forged = format!("vendorhost_console=v1.{}.AAAA", i64::MAX);
    let r =
        http.get(app.url("/vendors")).header("cookie", forged).header("x-requested-with", "x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(http.post(app.url("/ui/logout")).send().await.unwrap().status(), 403);
    let r = http.post(app.url("/ui/logout")).header("x-requested-with", "vendorhost-console").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));

    // Bulk discard over the API: unknown ids are reported, not fatal.
    let r: Value = app
        .client
        .post(app.url("/admin/dead-letters/bulk"))
        .bearer_auth(ADMIN)
        .json(&json!({"action": "discard", "ids": ["nope"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"action": "discard", "done": [], "failed": [{"id": "nope", "code": "not_found", "message": "no dead letter \"nope\""}]})
    );
    let r = app
        .client
        .post(app.url("/admin/dead-letters/bulk"))
        .bearer_auth(ADMIN)
        .json(&json!({"action": "burn", "ids": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"].as_str().unwrap().contains("unknown variant `burn`"), "{b}");
    app.stop().await;
}
