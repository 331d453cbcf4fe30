//! A fuzz test of the door (the hardening issue): proptest posts random job requests to the real
//! server — JSON and NDJSON bodies whose fields have the right or the wrong type, huge, tiny,
//! NaN and negative-zero numbers, deep nesting, long and odd Unicode strings, big and empty
//! arrays, unknown fields — and after each one checks that the answer is 2xx or 4xx (never a 5xx
//! or a dropped connection) and that a canary job still completes. At the end the server's log
//! must hold no panic. `POOLD_FUZZ_CASES` sets the number of cases (default 300).

mod common;

use common::TestApp;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

fn cases() -> u32 {
    std::env::var("POOLD_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// Number literals, valid JSON or not.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-0.0".to_string()),
        Just("0".to_string()),
        Just("1e308".to_string()),
        Just("1e309".to_string()),
        Just("-1e-400".to_string()),
        Just("1e300".to_string()),
        Just("NaN".to_string()),
        Just("-Infinity".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775809".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        (0u32..5).prop_map(|n| n.to_string()),
    ]
}

/// String literals: empty, long, control characters, bidi overrides, emoji, lone surrogates.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""""#.to_string()),
        (0usize..200_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        Just(r#""\u0000\u001f\"\\""#.to_string()),
        Just("\"\u{202e}\u{200b}\u{feff}é😀\u{10ffff}\"".to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\udc00\ud800""#.to_string()),
        Just("\"unterminated".to_string()),
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""square""#.to_string()),
        Just(r#""echo""#.to_string()),
    ]
}

/// Any value: scalars, arrays and objects, shallow or nested up to thousands of levels deep.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number(),
        string(),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    let nested = leaf.clone().prop_recursive(4, 32, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((string(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        30 => nested,
        1 => (90usize..110).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        1 => (0usize..3000).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        1 => (0usize..1500).prop_map(|d| format!("{}{}", "{\"a\":".repeat(d), "}".repeat(d))),
    ]
}

/// A valid JSON value: numbers at the edges of f64 and i64, `-0.0`, long and odd Unicode
/// strings, nested arrays and objects (sometimes at or past the nesting limit).
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "-0.0",
            "0",
            "1e308",
            "-1e-320",
            "1.7976931348623157e308",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "true",
            "false",
            "null",
        ])
        .prop_map(str::to_string),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        "\\PC{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        (0usize..100_000).prop_map(|n| format!("\"{}\"", "é".repeat(n))),
        Just(r#""\u0000\u202e\ud83d\ude00""#.to_string()),
    ];
    let nested = leaf.prop_recursive(4, 32, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("\\PC{0,8}", inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        40 => nested,
        1 => (95usize..105).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
    ]
}

/// An items array: empty, big, of valid values or of anything; now and then not an array.
fn items() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("[]".to_string()),
        2 => (0usize..20_000).prop_map(|n| format!("[{}]", vec!["1"; n].join(","))),
        16 => prop::collection::vec(json_value(), 0..10).prop_map(|v| format!("[{}]", v.join(","))),
        2 => prop::collection::vec(value(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        1 => value(),
    ]
}

/// A field: mostly absent or well-typed, now and then anything at all.
fn field(name: &'static str, good: BoxedStrategy<String>) -> BoxedStrategy<Option<String>> {
    prop_oneof![
        20 => Just(None),
        18 => good.prop_map(move |v| Some(format!("\"{name}\":{v}"))),
        1 => value().prop_map(move |v| Some(format!("\"{name}\":{v}"))),
    ]
    .boxed()
}

/// A job request as JSON text: `function` and `items` nearly always there, each other field
/// absent, well-typed (edge values included) or anything; now and then an unknown field.
fn job() -> impl Strategy<Value = String> {
    let functions = prop_oneof![
        3 => prop::sample::select(vec!["square", "echo", "pow", "add", "fail", "cube", "sha256"])
            .prop_map(|f| format!("\"{f}\"")),
        1 => string(),
    ];
    let required = |name: &'static str, good: BoxedStrategy<String>| {
        prop_oneof![
            40 => good.prop_map(move |v| Some(format!("\"{name}\":{v}"))),
            1 => Just(None),
            1 => value().prop_map(move |v| Some(format!("\"{name}\":{v}"))),
        ]
    };
    let small = |range: std::ops::Range<i64>| range.prop_map(|n| n.to_string()).boxed();
    (
        required("function", functions.boxed()),
        required("items", items().boxed()),
        field("kwargs", prop_oneof![Just(r#"{"exp": 2}"#.to_string()), Just(r#"{"rounds": 3}"#.to_string()), Just("{}".to_string())].boxed()),
        field("star", prop_oneof![Just("true".to_string()), Just("false".to_string())].boxed()),
        field("chunksize", prop_oneof![8 => small(1..2000), 1 => number()].boxed()),
        field("timeout_s", prop_oneof![4 => Just("0.5".to_string()), 4 => Just("1e-300".to_string()), 1 => number()].boxed()),
        field("max_attempts", prop_oneof![8 => small(1..4), 1 => number()].boxed()),
        field("on_error", prop_oneof![Just(r#""continue""#.to_string()), Just(r#""fail_fast""#.to_string()), string()].boxed()),
        field("priority", prop_oneof![8 => small(-5..5), 1 => number()].boxed()),
        field("metadata", prop_oneof![Just(r#"{"team": "a"}"#.to_string()), json_value()].boxed()),
        prop_oneof![30 => Just(None), 1 => value().prop_map(|v| Some(format!("\"bogus\":{v}")))],
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f, g, h, i, j, k) = fields;
            let present: Vec<String> = [a, b, c, d, e, f, g, h, i, j, k].into_iter().flatten().collect();
            format!("{{{}}}", present.join(","))
        })
}

/// A request: a JSON body, or an NDJSON upload (line 1 the job, then item lines of anything).
fn request() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        3 => job().prop_map(|body| ("application/json", body)),
        1 => (job(), prop::collection::vec(prop_oneof![4 => json_value(), 1 => value()], 0..50)).prop_map(|(spec, lines)| {
            // Line 1 must not carry `items`: drop them (a bad line 1 is tested by the JSON cases).
            let spec: String = match serde_json::from_str::<serde_json::Value>(&spec) {
                Ok(serde_json::Value::Object(mut o)) => {
                    o.remove("items");
                    serde_json::Value::Object(o).to_string()
                }
                _ => spec,
            };
            ("application/x-ndjson", format!("{spec}\n{}\n", lines.join("\n")))
        }),
    ]
}

/// Answers by status, for the summary.
static STATUSES: std::sync::Mutex<std::collections::BTreeMap<u16, u32>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

async fn check(app: &TestApp, content_type: &str, body: String) -> Result<(), TestCaseError> {
    let shown = body.chars().take(300).collect::<String>();
    let response = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer to {shown}: {e}")))?;
    let status = response.status();
    *STATUSES.lock().unwrap().entry(status.as_u16()).or_default() += 1;
    let text = response.text().await.unwrap_or_default();
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "{status} for {shown}: {text}"
    );
    let canary = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .json(&json!({"function": "square", "items": [1, 2, 3], "priority": 100}))
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("canary not answered after {shown}: {e}")))?;
    prop_assert_eq!(canary.status(), 201, "canary after {}", shown);
    let canary: serde_json::Value = canary.json().await.unwrap();
    let id = canary["id"].as_str().unwrap();
    let job: serde_json::Value = app
        .get(&format!("/v1/jobs/{id}?wait=30"))
        .await
        .json()
        .await
        .unwrap();
    prop_assert_eq!(
        &job["status"],
        "completed",
        "canary after {}: {}",
        shown,
        job
    );
    Ok(())
}

#[test]
fn random_requests_get_2xx_or_4xx_and_the_pool_keeps_working() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A per-item limit bounds whatever the accepted jobs ask of the workers.
    let app = runtime.block_on(TestApp::spawn_with(&["--task-timeout", "2"]));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&request(), |(content_type, body)| {
        runtime.block_on(check(&app, content_type, body))
    });
    if let Err(e) = outcome {
        panic!("{e}\nserver log:\n{}", app.log_text());
    }
    let log = app.log_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    // Ready again once any worker stopped by a time limit is replaced.
    runtime.block_on(app.wait_ready());
    println!(
        "{} random requests, each followed by a canary job; answers by status: {:?}",
        cases(),
        STATUSES.lock().unwrap()
    );
}
