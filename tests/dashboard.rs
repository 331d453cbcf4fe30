//! The web dashboard in a real browser: headless Chromium driven through ChromeDriver
//! (`tests/browser`) against the real poold binary with real workers (`tests/common`).
//! Each test ends by checking that the page asked no other host for anything and that the
//! browser logged no error (a CSP violation is one), and saves screenshots (their paths are
//! printed; `UPDATE_SCREENSHOTS=1` also copies the README's to `docs/dashboard/`).
//!
//! Needs `chromium` and `chromium-driver` (Debian); without them the tests say so and pass,
//! except under `CI=true`.

mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, DESKTOP};
use common::TestApp;
use futures::StreamExt;
use serde_json::{Value, json};

/// The browser tests share two CPUs with the servers and workers they test: one at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// For `assert_clean`: no error is expected in the browser log.
fn no_errors(_: &str) -> bool {
    false
}

#[tokio::test]
async fn overview_shows_the_workers_failed_items_and_rate_and_flips_the_pool() {
    let _one = ONE_BROWSER.lock().await;
    let app = TestApp::spawn().await;
    let Some(browser) = Browser::start("overview", &app.url).await else {
        return;
    };
    let failing = app
        .submit(json!({"function": "fail", "items": ["disk full"]}))
        .await;
    app.wait_job(&failing).await;

    browser.goto("/").await;
    for pid in app.wait_workers("idle").await {
        browser
            .wait_for(&format!("#workers tr[data-pid='{pid}']"))
            .await;
    }
    browser
        .wait_js(
            "the failed item in the list",
            "document.querySelector('#failed-items')?.innerText.includes('ValueError') && \
             document.querySelector('#failed-items').innerText.includes('disk full')",
        )
        .await;

    // Items per second: the sum of the workers' items_completed, sampled every second.
    let sleeper = app
        .submit(json!({"function": "sleep", "items": vec![0.05; 160], "chunksize": 1}))
        .await;
    let rate = browser
        .wait_js(
            "a non-zero rate while a job runs",
            "(() => { const r = parseFloat(document.querySelector('#items-rate').innerText); \
              return r > 0 ? r : null; })()",
        )
        .await;
    assert!(rate.as_f64().unwrap() > 0.0);
    // Half way through the job the chart has a few seconds of it: the picture for the README.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.job(&sleeper).await["done"].as_u64().unwrap() < 100 {
        assert!(Instant::now() < deadline, "the sleep job stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshot("overview").await;
    app.wait_job(&sleeper).await;

    // Close, confirmed in the page's own dialog, then open again.
    browser.click("#pool-toggle").await;
    browser.wait_for("#confirm-dialog[open]").await;
    browser.click("#confirm-yes").await;
    app.wait_pool("a closed pool", |p| p["accepting"] == false)
        .await;
    browser
        .wait_for("#pool-state[data-accepting='false']")
        .await;
    let refused = app
        .post_job(&json!({"function": "square", "items": [1]}))
        .await;
    assert_eq!(refused.status(), 503);
    browser.click("#pool-toggle").await;
    app.wait_pool("an open pool", |p| p["accepting"] == true)
        .await;
    browser.wait_for("#pool-state[data-accepting='true']").await;

    // Phone width: one column, nothing wider than the screen.
    browser.set_size((390, 844)).await;
    browser
        .wait_js(
            "the page to fit a phone-width window",
            "document.documentElement.scrollWidth <= window.innerWidth && window.innerWidth < 500",
        )
        .await;
    browser.screenshot("phone").await;
    browser.set_size(DESKTOP).await;

    // Dark when the system is.
    browser.color_scheme("dark").await;
    browser
        .wait_js(
            "the dark theme",
            "getComputedStyle(document.body).backgroundColor === 'rgb(14, 17, 22)'",
        )
        .await;
    browser.screenshot("overview-dark").await;
    browser.assert_clean(no_errors).await;
    browser.close().await;
}

/// `slow_square(x)`: x*x after 50 ms, printing a line (the item's log); raises for x < 0.
const FUNCS: &str = r#"
import time

def slow_square(x):
    """slow_square(x): x * x, after 50 ms; ValueError for a negative x."""
    time.sleep(0.05)
    if x < 0:
        raise ValueError(f"negative: {x}")
    print(f"squaring {x}")
    return x * x
"#;

#[tokio::test]
async fn a_running_jobs_bar_reaches_100_and_its_page_shows_results_in_order_and_tracebacks() {
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("funcs.py"), FUNCS).unwrap();
    let funcs = dir.path().join("funcs.py").display().to_string();
    let app = common::spawn_sdk_workers(&funcs, &[]).await;
    let Some(browser) = Browser::start("jobs", &app.url).await else {
        return;
    };
    // A few finished jobs around the one to watch: completed, failed fast, cancelled.
    let done = app
        .submit(json!({"function": "slow_square", "items": [1, 2, 3]}))
        .await;
    let failed = app
        .submit(json!({"function": "slow_square", "items": [-1, 2], "on_error": "fail_fast"}))
        .await;
    let cancelled = app
        .submit(json!({"function": "slow_square", "items": vec![5; 400], "chunksize": 1, "priority": -1}))
        .await;
    app.post(&format!("/v1/jobs/{cancelled}/cancel")).await;
    for id in [&done, &failed, &cancelled] {
        app.wait_job(id).await;
    }
    browser.goto("/ui/jobs").await;
    for status in ["completed", "failed", "cancelled"] {
        browser
            .wait_for(&format!("tbody [data-status='{status}']"))
            .await;
    }

    // 80 items of 50 ms on 2 workers: about 2 s, seen by a list that polls every second.
    let items: Vec<i64> = (0..80)
        .map(|i| if [7, 23].contains(&i) { -i } else { i })
        .collect();
    let id = app
        .submit(json!({"function": "slow_square", "items": items, "chunksize": 1}))
        .await;
    let bar = format!("tr[data-job-id='{id}'] [role=progressbar]");
    let mut seen = Vec::new();
    let mut shot = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = browser
            .js(&format!(
                "document.querySelector(\"{bar}\")?.getAttribute('aria-valuenow') ?? null"
            ))
            .await;
        if let Some(percent) = value.as_str().and_then(|v| v.parse::<f64>().ok()) {
            if seen.last() != Some(&percent) {
                seen.push(percent);
                if (10.0..95.0).contains(&percent) && !shot {
                    browser.screenshot("jobs").await;
                    shot = true;
                }
            }
            if percent == 100.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bar never reached 100 %: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !shot {
        browser.screenshot("jobs").await;
    }
    assert!(
        seen.iter().any(|p| *p > 0.0 && *p < 100.0),
        "the bar never showed progress between 0 and 100 %: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the bar went back: {seen:?}"
    );
    browser
        .wait_js(
            "the row to say completed",
            &format!(
                "document.querySelector(\"tr[data-job-id='{id}']\").innerText.includes('completed')"
            ),
        )
        .await;

    // The job page, through the row's link.
    browser.click(&format!("tr[data-job-id='{id}'] a")).await;
    browser.wait_for("#job-fields").await;
    let indexes = browser
        .wait_js(
            "the first page of results",
            "(() => { const rows = [...document.querySelectorAll('tr.result')]; \
              return rows.length === 50 ? rows.map(r => Number(r.dataset.index)) : null; })()",
        )
        .await;
    assert_eq!(indexes, json!((0..50).collect::<Vec<_>>()));
    assert_eq!(browser.text("tr.result[data-index='9'] .value").await, "81");
    assert_eq!(browser.text("[data-field='status']").await, "completed");

    // A failed item folds open its traceback on click; a value's row shows its log.
    browser.click("tr.result[data-index='7']").await;
    let traceback = browser
        .wait_js(
            "the traceback",
            "document.querySelector(\"tr.result[data-index='7'] + tr.detail:not([hidden]) pre.traceback\")?.innerText",
        )
        .await;
    let traceback = traceback.as_str().unwrap();
    assert!(
        traceback.contains("Traceback (most recent call last)"),
        "{traceback}"
    );
    assert!(
        traceback.contains("ValueError: negative: -7"),
        "{traceback}"
    );
    browser.click("tr.result[data-index='2']").await;
    let log = browser
        .wait_js(
            "the log",
            "document.querySelector(\"tr.result[data-index='2'] + tr.detail:not([hidden]) pre.log\")?.innerText",
        )
        .await;
    assert_eq!(log, "squaring 2\n");
    browser
        .js("document.querySelector(\"tr.result[data-index='7']\").scrollIntoView({block: 'center'})")
        .await;
    browser.screenshot("job-results").await;

    // Only the failed items (GET …/results?failed=true), then the next page of all of them.
    browser.click("#results-failed-only").await;
    browser
        .wait_js(
            "the failed items only",
            "[...document.querySelectorAll('tr.result')].map(r => r.dataset.index).join() === '7,23'",
        )
        .await;
    browser.click("[data-mode='all']").await;
    browser.wait_for("tr.result[data-index='49']").await;
    browser.click("#results-next").await;
    let indexes = browser
        .wait_js(
            "the second page",
            "(() => { const rows = [...document.querySelectorAll('tr.result')]; \
              return rows.length && rows[0].dataset.index === '50' ? rows.map(r => Number(r.dataset.index)) : null; })()",
        )
        .await;
    assert_eq!(indexes, json!((50..80).collect::<Vec<_>>()));
    browser.assert_clean(no_errors).await;
    browser.close().await;
}

#[tokio::test]
async fn cancel_and_delete_are_confirmed_in_the_page_and_done_through_the_api() {
    let _one = ONE_BROWSER.lock().await;
    let app = TestApp::spawn().await;
    let Some(browser) = Browser::start("cancel", &app.url).await else {
        return;
    };
    let id = app
        .submit(json!({"function": "sleep", "items": [30, 30, 30, 30], "chunksize": 1}))
        .await;
    app.wait_any_busy().await;
    browser.goto(&format!("/ui/jobs/{id}")).await;

    // "Keep running" leaves it alone.
    browser.click("#cancel-job").await;
    browser.wait_for("#confirm-dialog[open]").await;
    browser.click("#confirm-no").await;
    browser
        .wait_js(
            "the dialog to close",
            "!document.querySelector('#confirm-dialog').open",
        )
        .await;
    assert_eq!(app.job(&id).await["status"], "running");

    browser.click("#cancel-job").await;
    browser.wait_for("#confirm-dialog[open]").await;
    browser.screenshot("confirm").await;
    browser.click("#confirm-yes").await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    browser
        .wait_js(
            "the page to show the cancelled job",
            "document.querySelector('[data-field=status]')?.innerText === 'cancelled'",
        )
        .await;
    browser.wait_for("#delete-job").await;

    browser.click("#delete-job").await;
    browser.wait_for("#confirm-dialog[open]").await;
    browser.click("#confirm-yes").await;
    browser
        .wait_js(
            "the jobs list with the deletion notice",
            "location.pathname === '/ui/jobs' && document.querySelector('.notice.info')?.innerText.includes('Deleted job')",
        )
        .await;
    let gone = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(gone.status(), 404);

    // The deleted job's page says so, with the API's 404 problem.
    browser.goto(&format!("/ui/jobs/{id}")).await;
    let text = browser
        .wait_js(
            "the not-found message",
            "document.querySelector('#main h1')?.innerText === 'Job not found' && document.querySelector('#main').innerText",
        )
        .await;
    let text = text.as_str().unwrap();
    assert!(text.contains("404 job_not_found"), "{text}");
    browser.screenshot("not-found").await;
    browser
        .assert_clean(|message| {
            message.contains(&format!("/v1/jobs/{id}")) && message.contains("status of 404")
        })
        .await;
    browser.close().await;
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_refuses_a_wrong_one_and_shows_data_with_the_right_one() {
    let _one = ONE_BROWSER.lock().await;
    let mut app = TestApp::spawn_with(&["--api-token", "s3cret-token"]).await;
    app.use_token("s3cret-token");
    let Some(browser) = Browser::start("token", &app.url).await else {
        return;
    };
    browser.goto("/").await;
    browser.wait_for("#token-dialog[open]").await;
    assert!(browser.text("#main").await.contains("API token needed"));
    browser.screenshot("token").await;

    browser.type_into("#token-input", "wrong-token").await;
    browser.click("#token-submit").await;
    let message = browser
        .wait_js(
            "the 401 message",
            "(() => { const e = document.querySelector('#token-error'); \
              return document.querySelector('#token-dialog').open && !e.hidden ? e.innerText : null; })()",
        )
        .await;
    let message = message.as_str().unwrap();
    assert!(
        message.contains("401") && message.contains("wrong"),
        "{message}"
    );

    browser.type_into("#token-input", "s3cret-token").await;
    browser.click("#token-submit").await;
    for pid in app.wait_workers("idle").await {
        browser
            .wait_for(&format!("#workers tr[data-pid='{pid}']"))
            .await;
    }
    let stored = browser.js("sessionStorage.getItem('poold.token')").await;
    assert_eq!(stored, Value::from("s3cret-token"));

    // The NDJSON download sends the token too (a plain link could not): the file arrives.
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    app.wait_job(&id).await;
    browser.goto(&format!("/ui/jobs/{id}")).await;
    let downloads = browser.shots.join("downloads");
    let _ = std::fs::remove_dir_all(&downloads);
    browser.allow_downloads(&downloads).await;
    browser.click("#download-ndjson").await;
    let file = downloads.join(format!("{id}.ndjson"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no download at {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"index\":0,\"value\":1}\n{\"index\":1,\"value\":4}\n{\"index\":2,\"value\":9}\n"
    );
    // The two refused requests (no token, then the wrong one) are logged by the browser as
    // failed loads; nothing else may be.
    browser
        .assert_clean(|message| message.contains("/v1/") && message.contains("status of 401"))
        .await;
    browser.close().await;
}

#[tokio::test]
async fn a_million_item_job_page_shows_one_page_of_results_and_draws_a_few_times_a_second() {
    let _one = ONE_BROWSER.lock().await;
    let app = TestApp::spawn().await;
    let Some(browser) = Browser::start("million", &app.url).await else {
        return;
    };
    let items: Vec<u64> = (0..1_000_000).collect();
    let id = app
        .submit(json!({"function": "square", "items": items}))
        .await;
    browser.goto(&format!("/ui/jobs/{id}")).await;
    let percent =
        "Number(document.querySelector('#job-progress')?.getAttribute('aria-valuenow') ?? -1)";
    browser
        .wait_js("progress on the page", &format!("{percent} > 0"))
        .await;
    let renders = "Number(document.querySelector('#job-progress').dataset.renders)";
    let first_renders = browser.js(renders).await.as_f64().unwrap();
    let started = Instant::now();

    // While it runs: one page of results in the table, and the page answers at once.
    let mut slowest = Duration::ZERO;
    let mut live_shot = false;
    loop {
        let asked = Instant::now();
        let state = browser
            .js(&format!(
                "[{percent}, document.querySelectorAll('tr.result').length]"
            ))
            .await;
        slowest = slowest.max(asked.elapsed());
        let (done, rows) = (state[0].as_f64().unwrap(), state[1].as_u64().unwrap());
        assert!(rows <= 50, "{rows} result rows in the page");
        if !live_shot && (40.0..100.0).contains(&done) {
            browser.screenshot("job").await;
            live_shot = true;
        }
        if done == 100.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job took too long"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let drawn = browser.js(renders).await.as_f64().unwrap() - first_renders;
    println!("{drawn} renders in {seconds:.1} s; slowest script round trip {slowest:?}");
    // At least twice a second while the job runs (once when it ran for less than a second:
    // on a fast machine the built-in worker squares a million items in well under one).
    let least = (2.0 * seconds).floor().clamp(1.0, 2.0);
    assert!(
        drawn >= least,
        "the page drew progress only {drawn} times in {seconds:.1} s"
    );
    // The page draws at most 4 times a second (plus the last one); allow one frame of slack.
    assert!(
        drawn <= 4.0 * seconds + 2.0,
        "{drawn} renders in {seconds:.1} s"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the page took {slowest:?} to answer a script while the job ran"
    );

    // The last page, by index: 999950..999999 with their squares.
    browser.type_into(".goto input", "999999").await;
    browser.click(".goto button").await;
    let last = browser
        .wait_js(
            "the last page",
            "(() => { const rows = [...document.querySelectorAll('tr.result')]; \
              return rows.length === 50 && rows[0].dataset.index === '999950' \
                ? rows[49].querySelector('.value').innerText : null; })()",
        )
        .await;
    assert_eq!(last, json!((999_999u64 * 999_999).to_string()));
    browser.assert_clean(no_errors).await;
    browser.close().await;
}

#[tokio::test]
async fn event_streams_reconnect_after_poold_restarts_without_a_gap_or_a_duplicate() {
    let _one = ONE_BROWSER.lock().await;
    let mut app = TestApp::spawn().await;
    let Some(browser) = Browser::start("reconnect", &app.url).await else {
        return;
    };
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.1; 40], "chunksize": 1}))
        .await;
    browser.goto(&format!("/ui/jobs/{id}")).await;
    browser.wait_for("#job-progress").await;
    // Besides the page's own progress stream, the page's stream reader (api.js) follows the
    // job's results, whose ids it must resume from.
    browser
        .js(&format!(
            "(() => {{ window.seen = []; window.states = []; window.ended = false; \
               import('/ui/assets/api.js').then(({{ eventStream }}) => eventStream(\
                 '/v1/jobs/{id}/events', {{ signal: new AbortController().signal, \
                   onState: (s) => window.states.push(s), \
                   onEvent: (e) => {{ if (e.event === 'result') window.seen.push(e.data.index); \
                                      if (e.event === 'end') window.ended = true; }} }}))\
               .catch((e) => {{ window.failure = String(e); }}); return true; }})()"
        ))
        .await;
    browser
        .wait_js("some results", "window.seen.length >= 6")
        .await;

    // kill -9 and start again on the same port and database: the job resumes.
    let address = app.url.trim_start_matches("http://").to_string();
    app.kill9();
    browser
        .wait_js(
            "the page to notice",
            "document.querySelector('#live').dataset.state === 'reconnecting' && window.states.includes('reconnecting')",
        )
        .await;
    let restarted = TestApp::start(&app.db, &["--bind", &address]).await;
    browser.wait_js("the stream's end", "window.ended").await;
    let seen = browser.js("window.seen").await;
    assert_eq!(
        seen,
        json!((0..40).collect::<Vec<_>>()),
        "every result once, in order"
    );
    assert_eq!(browser.js("window.failure ?? null").await, Value::Null);
    browser
        .wait_js(
            "the page to follow the job to its end",
            "document.querySelector('#job-progress').getAttribute('aria-valuenow') === '100' && \
             document.querySelector('[data-field=status]')?.innerText === 'completed'",
        )
        .await;
    assert_eq!(restarted.job(&id).await["status"], "completed");
    browser.screenshot("reconnected").await;
    // While poold was down the browser logged the failed connections; nothing else.
    browser
        .assert_clean(|message| message.contains("net::ERR_"))
        .await;
    browser.close().await;
}

#[tokio::test]
async fn the_jobs_list_pages_and_filters_ten_thousand_jobs() {
    let _one = ONE_BROWSER.lock().await;
    let app = TestApp::spawn().await;
    let Some(browser) = Browser::start("many-jobs", &app.url).await else {
        return;
    };
    // 10,000 one-item jobs, but every 1,000th one fails fast on its first item (so 10 are
    // `failed`; a job whose every item has a result would be `completed`).
    let submitted = Instant::now();
    let failing: Vec<Value> = std::iter::once(json!("x"))
        .chain((0..200).map(|i| json!(i)))
        .collect();
    let bodies: Vec<Value> = (0..10_000)
        .map(|i| {
            if i % 1000 == 999 {
                json!({"function": "square", "items": failing, "chunksize": 1, "on_error": "fail_fast"})
            } else {
                json!({"function": "square", "items": [i]})
            }
        })
        .collect();
    let ids: Vec<String> = futures::stream::iter(bodies.into_iter().map(|b| app.submit(b)))
        .buffered(16)
        .collect()
        .await;
    println!("10,000 jobs submitted in {:?}", submitted.elapsed());
    for failing in ids.iter().skip(999).step_by(1000) {
        app.wait_job(failing).await;
    }
    println!("… and the failing ones ran by {:?}", submitted.elapsed());
    // Newest first is by id (a UUIDv7 starts with its creation time), not submission order.
    let mut newest = ids;
    newest.sort_unstable_by(|a, b| b.cmp(a));

    let opened = Instant::now();
    browser.goto("/ui/jobs").await;
    let first_row = "document.querySelector('tbody tr')?.dataset.jobId";
    browser
        .wait_js(
            "the newest jobs",
            &format!(
                "document.querySelectorAll('tbody tr').length === 50 && {first_row} === '{}'",
                newest[0]
            ),
        )
        .await;
    println!("the first page showed in {:?}", opened.elapsed());
    browser.click("#older-page").await;
    browser
        .wait_js(
            "the second page",
            &format!("{first_row} === '{}'", newest[50]),
        )
        .await;
    assert_eq!(browser.text(".pager .muted").await, "51–100");
    browser.click("#older-page").await;
    browser
        .wait_js(
            "the third page",
            &format!("{first_row} === '{}'", newest[100]),
        )
        .await;
    assert_eq!(browser.text(".pager .muted").await, "101–150");
    // The browser's back button, then the page's Newer: pages 2 and 1.
    browser.js("history.back()").await;
    browser
        .wait_js("page 2 again", &format!("{first_row} === '{}'", newest[50]))
        .await;
    assert_eq!(browser.text(".pager .muted").await, "51–100");
    browser.click("#newer-page").await;
    browser
        .wait_js(
            "the first page again",
            &format!("{first_row} === '{}'", newest[0]),
        )
        .await;

    browser.click("a[href='/ui/jobs?status=failed']").await;
    let statuses = browser
        .wait_js(
            "the failed jobs only",
            "(() => { const rows = [...document.querySelectorAll('tbody tr')]; \
              return rows.length === 10 ? rows.map(r => r.querySelector('[data-status]').dataset.status) : null; })()",
        )
        .await;
    assert_eq!(statuses, json!(vec!["failed"; 10]));
    assert_eq!(
        browser
            .js("document.querySelector('#older-page').disabled")
            .await,
        true
    );
    browser.screenshot("failed-filter").await;

    // Only pages were asked for: every list request names a limit of 50.
    let lists = browser
        .js("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/v1/jobs?'))")
        .await;
    let lists: Vec<String> = serde_json::from_value(lists).unwrap();
    assert!(!lists.is_empty());
    assert!(lists.iter().all(|u| u.contains("limit=50")), "{lists:?}");
    browser.assert_clean(no_errors).await;
    browser.close().await;
}
