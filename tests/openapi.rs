//! The committed `openapi/openapi.json` must match the spec the code generates.
//! Rewrite it with `UPDATE_OPENAPI=1 cargo test --release --test openapi`.

#[test]
fn committed_openapi_matches_the_code() {
    let generated = poold::api::openapi()
        .to_pretty_json()
        .expect("spec serializes")
        + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; run `UPDATE_OPENAPI=1 cargo test --release --test openapi` and commit it"
    );
}
