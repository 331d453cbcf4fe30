//! Plain-text views of the server's JSON for `jobs`, `status`, `pool` and `functions`.

use serde_json::Value;

/// Print `value` as pretty JSON with `json`, else through `view`. A closed stdout (`| head`)
/// is not an error.
pub fn print(json: bool, value: &Value, view: fn(&Value) -> String) {
    use std::io::Write;
    let text = if json {
        serde_json::to_string_pretty(value).expect("JSON prints") + "\n"
    } else {
        view(value)
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

pub fn jobs_table(list: &Value) -> String {
    let rows = list["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|job| {
            vec![
                text(&job["id"]),
                text(&job["status"]),
                text(&job["function"]),
                format!("{}/{}", text(&job["done"]), text(&job["total"])),
                text(&job["failed"]),
                text(&job["created_at"]),
            ]
        })
        .collect();
    table(
        &["ID", "STATUS", "FUNCTION", "DONE", "FAILED", "CREATED"],
        rows,
    )
}

/// One line: `job ID STATUS: done/total done, F failed[: error]`.
pub fn job_summary(job: &Value) -> String {
    let mut line = format!(
        "job {} {}: {}/{} done, {} failed",
        text(&job["id"]),
        text(&job["status"]),
        text(&job["done"]),
        text(&job["total"]),
        text(&job["failed"]),
    );
    if let Some(seconds) = run_time(job) {
        line.push_str(&format!(" in {seconds:.1}s"));
        if let Some(done) = job["done"].as_u64().filter(|&d| d > 0 && seconds > 0.0) {
            line.push_str(&format!(" ({:.0} items/s)", done as f64 / seconds));
        }
    }
    if let Some(error) = job["error"].as_str() {
        line.push_str(": ");
        line.push_str(error);
    }
    line
}

/// Seconds from a job's start to its end, when it has both.
fn run_time(job: &Value) -> Option<f64> {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    let at = |field: &str| OffsetDateTime::parse(job[field].as_str()?, &Rfc3339).ok();
    Some((at("finished_at")? - at("started_at")?).as_seconds_f64())
}

pub fn job_details(job: &Value) -> String {
    let fields = [
        ("id", text(&job["id"])),
        ("status", text(&job["status"])),
        ("function", text(&job["function"])),
        ("kwargs", text(&job["kwargs"])),
        ("star", text(&job["star"])),
        ("chunksize", text(&job["chunksize"])),
        ("on_error", text(&job["on_error"])),
        ("priority", text(&job["priority"])),
        ("codec", text(&job["codec"])),
        ("max_concurrency", text(&job["max_concurrency"])),
        (
            "progress",
            format!(
                "{}/{} done, {} failed",
                text(&job["done"]),
                text(&job["total"]),
                text(&job["failed"])
            ),
        ),
        ("created_at", text(&job["created_at"])),
        ("started_at", text(&job["started_at"])),
        ("finished_at", text(&job["finished_at"])),
        ("error", text(&job["error"])),
    ];
    fields
        .iter()
        .map(|(name, value)| format!("{name:<15} {value}\n"))
        .collect()
}

pub fn pool_table(pool: &Value) -> String {
    let accepting = if pool["accepting"] == true {
        "accepting jobs"
    } else {
        "closed to new jobs"
    };
    let mut out = format!(
        "{} workers, {accepting}, {} queued chunks\n",
        text(&pool["size"]),
        text(&pool["queued_chunks"])
    );
    let rows = pool["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                text(&w["id"]),
                text(&w["pid"]),
                text(&w["state"]),
                text(&w["job_id"]),
                text(&w["tasks_completed"]),
                text(&w["restarts"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ID", "PID", "STATE", "JOB", "TASKS", "RESTARTS"],
        rows,
    ));
    out
}

pub fn functions_table(functions: &Value) -> String {
    let rows = functions["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let doc = f["doc"].as_str().unwrap_or("").lines().next().unwrap_or("");
            vec![text(&f["name"]), doc.to_string()]
        })
        .collect();
    table(&["NAME", "DOC"], rows)
}
