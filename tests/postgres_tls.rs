//! poold talks to PostgreSQL over TLS as the URL asks (`sslmode`, `sslrootcert`, as libpq
//! reads them): with `verify-full` a node checks the server's certificate against the given
//! authority and its host name, and encrypts every connection; a certificate the authority did
//! not sign stops the node at start, saying why. (The fixture's server offers TLS to every
//! test: see `tests/common/postgres.rs`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestApp, postgres};
use serde_json::json;

#[tokio::test]
async fn a_node_checks_the_servers_certificate_and_encrypts_every_connection() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let checked = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        postgres::tls_root().display()
    );
    let app = TestApp::start(Path::new(&checked), &["--workers", "1"]).await;
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(app.wait_job(&id).await["status"], "completed");
    let values: Vec<_> = app
        .results(&id)
        .await
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, [json!(1), json!(4), json!(9)]);

    // Every connection the node holds (writer, readers, listener) is encrypted.
    let connections = postgres::query_json(
        &url,
        "select coalesce(json_agg(s.ssl), '[]')::text
         from pg_stat_activity as a join pg_stat_ssl as s using (pid)
         where a.application_name = 'poold' and a.datname = current_database()",
    )
    .await;
    let connections = connections.as_array().expect("a list");
    assert!(connections.len() >= 2, "{connections:?}");
    assert!(
        connections.iter().all(|ssl| ssl == true),
        "connections without TLS: {connections:?}"
    );

    // A node told to trust another authority refuses the server and says why.
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = postgres::certificate_authority("someone else").unwrap();
    let other_root = dir.path().join("other.pem");
    std::fs::write(&other_root, other).unwrap();
    let wrong = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        other_root.display()
    );
    let mut refused = TestApp::launch(Path::new(&wrong), &["--workers", "1"]);
    let status = refused.wait_exit(Duration::from_secs(20));
    let log = refused.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cannot open database") && log.to_lowercase().contains("certificate"),
        "the reason is told: {log}"
    );
}
