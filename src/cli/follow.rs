//! Following a job: read its server-sent events until `end`, showing progress and writing
//! results in order as they arrive. A dropped connection is re-attached with `Last-Event-ID`
//! (so no result is lost or written twice). Progress is an indicatif bar when stderr is a
//! terminal, else a plain line at most every [`PLAIN_EVERY`] (no control characters).

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::client::{Client, error_chain, problem};

/// How often a plain progress line is printed, at most.
const PLAIN_EVERY: Duration = Duration::from_secs(1);
/// Give up re-attaching after this long without a working connection.
const REATTACH_FOR: Duration = Duration::from_secs(120);

/// Progress as the user sees it: a bar on a terminal, plain lines otherwise.
pub enum Progress {
    Bar(ProgressBar),
    Plain {
        last: Option<Instant>,
        /// Items sent at the last upload line (lines repeat only on change).
        sent: u64,
    },
}

impl Progress {
    pub fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress::Plain {
                last: None,
                sent: u64::MAX,
            };
        }
        let bar = ProgressBar::no_length();
        bar.set_style(spinner_style());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::Bar(bar)
    }

    /// Items sent so far while uploading.
    pub fn uploading(&mut self, sent: u64) {
        match self {
            Progress::Bar(bar) => bar.set_message(format!("uploading: {sent} items sent")),
            Progress::Plain { last, sent: shown } => {
                if *shown != sent && last.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    eprintln!("uploading: {sent} items sent");
                    *last = Some(Instant::now());
                    *shown = sent;
                }
            }
        }
    }

    /// A `progress` event's data, or the final job.
    pub fn update(&mut self, p: &Value, force: bool) {
        let done = p["done"].as_u64().unwrap_or(0);
        let failed = p["failed"].as_u64().unwrap_or(0);
        let total = p["total"].as_u64();
        let rate = p["rate"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1} items/s"));
        let eta = p["eta_s"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |s| format!("{s:.0}s"));
        match self {
            Progress::Bar(bar) => {
                if let Some(total) = total
                    && bar.length() != Some(total)
                {
                    bar.set_style(bar_style());
                    bar.set_length(total);
                }
                bar.set_position(done);
                bar.set_message(format!("{rate}  ETA {eta}  {failed} failed"));
            }
            Progress::Plain { last, .. } => {
                if force || last.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    let total = total.map_or_else(|| "?".to_string(), |t| t.to_string());
                    eprintln!("progress: {done}/{total} done, {failed} failed, {rate}, ETA {eta}");
                    *last = Some(Instant::now());
                }
            }
        }
    }

    pub fn note(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Plain { .. } => eprintln!("{line}"),
        }
    }

    /// The job ended: settle the bar and print a summary line.
    pub fn finish(&mut self, job: &Value) {
        if let Progress::Bar(bar) = self {
            // Keep the last rate and ETA shown; settle the counts.
            if let Some(total) = job["total"].as_u64() {
                bar.set_style(bar_style());
                bar.set_length(total);
            }
            bar.set_position(job["done"].as_u64().unwrap_or(0));
            bar.finish();
        }
        eprintln!("{}", super::show::job_summary(job));
    }

    pub fn abandon(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} done  {msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}  {msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// Where results go: a file, or stdout for `-`.
fn open_output(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

/// Follow job `id` to its end; returns the final job. With `output`, results are written
/// there in index order as they arrive.
pub async fn follow(client: &Client, id: &str, output: Option<&Path>) -> anyhow::Result<Value> {
    let mut progress = Progress::new();
    let answer = follow_with(client, id, output, &mut progress).await;
    if answer.is_err() {
        progress.abandon();
    }
    answer
}

async fn follow_with(
    client: &Client,
    id: &str,
    output: Option<&Path>,
    progress: &mut Progress,
) -> anyhow::Result<Value> {
    let mut output = output.map(open_output).transpose()?;
    let query = if output.is_some() {
        ""
    } else {
        "?results=false"
    };
    let path = format!("/v1/jobs/{id}/events{query}");
    let mut last_result: Option<u64> = None;
    let mut last_good = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut request = client.request(Method::GET, &path);
        if let Some(k) = last_result {
            request = request.header("Last-Event-ID", k.to_string());
        }
        let lost = match request.send().await {
            Ok(response) if response.status().is_success() => {
                let mut events = Events::default();
                let mut body = response.bytes_stream();
                let mut lost = "the event stream ended early".to_string();
                while let Some(bytes) = body.next().await {
                    let bytes = match bytes {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            lost = error_chain(&e);
                            break;
                        }
                    };
                    last_good = Instant::now();
                    backoff = Duration::from_millis(200);
                    for event in events.feed(&bytes) {
                        let data: Value = serde_json::from_str(&event.data)
                            .with_context(|| format!("bad event data {:?}", event.data))?;
                        match event.name.as_str() {
                            "progress" => progress.update(&data, false),
                            "result" => {
                                if let Some(out) = output.as_mut() {
                                    writeln!(out, "{}", event.data)?;
                                }
                                last_result = event.id.as_deref().and_then(|i| i.parse().ok());
                            }
                            "end" => {
                                if let Some(out) = output.as_mut() {
                                    out.flush()?;
                                }
                                progress.finish(&data);
                                return Ok(data);
                            }
                            _ => {}
                        }
                    }
                }
                lost
            }
            Ok(response) if response.status().is_client_error() => {
                return Err(problem(response).await);
            }
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => error_chain(&e),
        };
        if last_good.elapsed() > REATTACH_FOR {
            return Err(anyhow!(
                "lost job {id}'s event stream ({lost}) and could not re-attach for {}s",
                REATTACH_FOR.as_secs()
            ));
        }
        if let Some(out) = output.as_mut() {
            out.flush()?;
        }
        progress.note(&format!("connection lost ({lost}); re-attaching"));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

/// A server-sent-events parser fed with the body's bytes as they come.
#[derive(Default)]
pub struct Events {
    buffer: Vec<u8>,
    current: Event,
}

impl Events {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buffer[start..start + end];
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            start += end + 1;
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if !event.name.is_empty() || !event.data.is_empty() {
                    events.push(event);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.name = value.to_string(),
                "id" => self.current.id = Some(value.to_string()),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                _ => {} // comments (keep-alives) and unknown fields
            }
        }
        self.buffer.drain(..start);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::{Event, Events};

    #[test]
    fn events_split_across_reads_and_comments_are_skipped() {
        let mut events = Events::default();
        assert!(events.feed(b": keep-alive\n\nevent: res").is_empty());
        let got = events.feed(b"ult\nid: 4\ndata: {\"index\":4}\n\nevent: end\r\ndata: {}\r\n\r\n");
        assert_eq!(
            got,
            vec![
                Event {
                    name: "result".into(),
                    id: Some("4".into()),
                    data: "{\"index\":4}".into()
                },
                Event {
                    name: "end".into(),
                    id: None,
                    data: "{}".into()
                },
            ]
        );
    }
}
