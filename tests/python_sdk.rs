//! The Python SDK's own tests (`python/tests`, stdlib `unittest`) against this build's
//! `poold`, so that `cargo test --release` (and `.ci/run`) covers the SDK too. They start the
//! real binary with `python -m poold.worker` workers; see `python/tests/poold_server.py`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::python;

/// The suite takes seconds; this only stops a hung run.
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn python_sdk_unittests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("unittest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(python())
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(root)
        .env("POOLD_BIN", env!("CARGO_BIN_EXE_poold"))
        .env("PYTHONPATH", "python")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start python3 -m unittest");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{output}");
    let status = status.unwrap_or_else(|| panic!("the Python SDK tests hung:\n{output}"));
    assert!(
        status.success(),
        "the Python SDK tests failed ({status}):\n{output}"
    );
    assert!(
        output.contains("\nOK") && !output.contains("Ran 0 tests"),
        "no tests ran:\n{output}"
    );
}
