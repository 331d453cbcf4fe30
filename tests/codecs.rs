//! The `codec` job field and qualified function names, against the real binary: the built-in
//! worker accepts json only (a pickle job is a 422 `unsupported_codec`), pickle items and kwargs
//! are checked for their shape only, and a Python worker (`python -m poold.worker`) serves
//! exactly the modules and callables its command line lists, by `module:qualname`.

mod common;

use common::TestApp;
use serde_json::{Value, json};

/// Base64 pickles (protocol 5), made with
/// `base64.b64encode(pickle.dumps(v, 5))`: the argument tuple `("ff", 16)`, and `255`.
const PICKLED_ARGS_FF_16: &str = "gAWVCgAAAAAAAACMAmZmlEsQhpQu";
const PICKLED_255: &str = "gAVL/y4=";

async fn problem(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post_job(&body).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("problem JSON"))
}

/// poold with Python workers serving `targets`.
async fn python_app(targets: &str) -> TestApp {
    common::spawn_sdk_workers(targets, &[]).await
}

#[tokio::test]
async fn the_built_in_worker_accepts_json_only_and_pickle_jobs_are_checked() {
    let app = TestApp::spawn().await;
    let functions: Value = app.get("/v1/functions").await.json().await.unwrap();
    assert_eq!(functions["codecs"], json!(["json"]));

    let (status, body) = problem(
        &app,
        json!({"function": "square", "items": ["gAVLDC4="], "codec": "pickle"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("unsupported_codec"))
    );
    assert!(
        body["detail"].as_str().unwrap().contains("--allow-pickle"),
        "{body}"
    );

    // Checks of the job's own fields come before the workers' offer.
    let cases = [
        (
            json!({"items": ["gAVLDC4="], "codec": "pickle", "kwargs": {"exp": 3}}),
            "kwargs[\"exp\"] is 3",
        ),
        (
            json!({"items": [1], "codec": "marshal"}),
            "unknown variant `marshal`",
        ),
    ];
    for (mut body, named) in cases {
        body["function"] = json!("square");
        let (status, problem) = problem(&app, body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }

    // A json job says so, and shows no cap by default.
    let id = app
        .submit(json!({"function": "square", "items": [2]}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["codec"].as_str(), &job["max_concurrency"]),
        (Some("json"), &Value::Null)
    );
}

#[tokio::test]
async fn a_python_worker_serves_what_it_lists_by_qualified_name() {
    let app = python_app("time builtins:int json:dumps").await;
    let functions: Value = app.get("/v1/functions").await.json().await.unwrap();
    let listed: Vec<(&str, Value)> = functions["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["aliases"].clone()))
        .collect();
    assert!(
        listed.contains(&("time:sleep", json!(["sleep"]))),
        "{functions}"
    );
    assert!(
        listed.contains(&("builtins:int", Value::Null)),
        "{functions}"
    );
    assert!(listed.contains(&("json:dumps", Value::Null)), "{functions}");
    assert!(
        !listed
            .iter()
            .any(|(name, _)| name.starts_with("json:loads"))
    );
    assert_eq!(functions["codecs"], json!(["json"]));

    let int = app
        .submit(json!({"function": "builtins:int", "items": [["ff", 16], ["7"]], "star": true}))
        .await;
    let sleep = app
        .submit(json!({"function": "sleep", "items": [0, 0.01]}))
        .await;
    let dumps = app
        .submit(json!({"function": "json:dumps", "items": [[1, 2]], "kwargs": {"indent": 1}}))
        .await;
    for (id, expected) in [
        (int, json!([255, 7])),
        (sleep, json!([null, null])),
        (dumps, json!(["[\n 1,\n 2\n]"])),
    ] {
        let job = app.wait_job(&id).await;
        assert_eq!(
            (job["status"].as_str(), job["failed"].as_u64()),
            (Some("completed"), Some(0))
        );
        let values: Vec<Value> = app
            .results(&id)
            .await
            .into_iter()
            .map(|r| r["value"].clone())
            .collect();
        assert_eq!(Value::Array(values), expected);
    }

    for unlisted in ["os:getcwd", "json:loads", "builtins:eval", "int", "sqrt"] {
        let (status, body) = problem(&app, json!({"function": unlisted, "items": [1]})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("unknown_function")),
            "{unlisted}"
        );
    }
    let (status, body) = problem(
        &app,
        json!({"function": "builtins:int", "items": [PICKLED_ARGS_FF_16], "codec": "pickle", "star": true}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("unsupported_codec"))
    );
}

#[tokio::test]
async fn with_allow_pickle_a_python_worker_runs_pickle_jobs_as_opaque_strings() {
    let app = python_app("builtins:int --allow-pickle").await;
    let functions: Value = app.get("/v1/functions").await.json().await.unwrap();
    assert_eq!(functions["codecs"], json!(["json", "pickle"]));
    let id = app
        .submit(json!({
            "function": "builtins:int",
            "items": [PICKLED_ARGS_FF_16, PICKLED_255],
            "star": true,
            "codec": "pickle",
        }))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["codec"].as_str(), job["done"].as_u64()),
        (Some("pickle"), Some(2))
    );
    let results = app.results(&id).await;
    // int("ff", 16) is 255, pickled; int(*255) is a TypeError (255 is no sequence), whose
    // pickled exception travels with it.
    assert_eq!(results[0]["value"], PICKLED_255);
    let error = &results[1]["error"];
    assert_eq!(error["type"], "TypeError");
    assert!(
        error["pickle"].as_str().is_some_and(|p| !p.is_empty()),
        "{error}"
    );

    // poold checks only the shape of pickles: base64 strings, named when they are not.
    let cases = [
        (json!([1]), "item 0 is 1"),
        (
            json!([PICKLED_255, "not base64!"]),
            "item 1 is \"not base64!\"",
        ),
    ];
    for (items, named) in cases {
        let body = json!({"function": "builtins:int", "items": items, "codec": "pickle"});
        let (status, problem) = problem(&app, body).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_request"))
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }
    let response = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("content-type", "application/x-ndjson")
        .body(format!(
            "{}\n\"{PICKLED_255}\"\n[1]\n",
            json!({"function": "builtins:int", "codec": "pickle"})
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("line 3: codec is pickle"),
        "{problem}"
    );
}
