//! What an operator reads off a running process (`--ops ADDR`): the
//! Prometheus metrics of every service in it at `/metrics`, `/healthz`
//! (the process answers) and `/readyz` (every service in it is ready:
//! 200, or 503 with why not), from the services' own
//! [`Health`](custody_wire::health::Health) handles.
//!
//! The services write their metrics through the `metrics` facade; this
//! module installs the one Prometheus recorder of the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use custody_wire::health::{Health, Status};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `--ops`, for every command that runs a service.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpsArgs {
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz)
    /// on this address (port 0: a free one); none when absent.
    #[arg(long, env = "CUSTODY_OPS", value_name = "ADDR")]
    pub ops: Option<SocketAddr>,
}

impl OpsArgs {
    /// Starts the listener if asked for, and says where it is; `data`:
    /// the folders whose file system's free space it reports.
    pub async fn start(&self, healths: Vec<Health>, data: &[&Path]) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = self.ops else { return Ok(None) };
        let bound = serve(addr, healths).await?;
        watch_disks(data);
        println!("{}", announce(bound));
        Ok(Some(bound))
    }
}

/// The line that says where the ops listener is.
pub fn announce(bound: SocketAddr) -> String {
    format!("ops listening on http://{bound} (/metrics, /healthz, /readyz)")
}

/// Latency buckets, in seconds: 100 µs to 10 s.
const SECONDS: [f64; 15] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Submissions per batch: 1 to the ledger's largest batch.
const SUBMISSIONS: [f64; 12] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 1500.0, 2048.0];

/// Every series custody serves, with the `# HELP` line a scrape shows: the
/// one list of them (`tests/ops.rs` checks each served series has one).
pub const SERIES: [(&str, &str); 15] = [
    ("custody_submissions_total", "Submissions answered by a ledger replica, by outcome (receipt or refused) and refusal code."),
    ("custody_ledger_head_seq", "The last seq in this ledger replica's store."),
    ("custody_ledger_writer", "1 while this ledger replica holds the writer lease, else 0."),
    ("custody_ledger_batch_submissions", "Submissions the writer admitted at once."),
    ("custody_ledger_commit_seconds", "From sending an atomic batch to the committed stream's acknowledgement."),
    ("custody_ledger_store_append_seconds", "Appending a batch to the replica's store, fsync included."),
    ("custody_ledger_receipt_seconds", "From a batch's first submission taken in to its outcomes sent."),
    ("custody_projection_applied_seq", "The last seq the projection applied."),
    ("custody_projection_lag", "Committed entries the projection has not applied yet."),
    ("custody_projection_snapshot_failures_total", "Snapshots of the projection's state that could not be written."),
    ("custody_query_seconds", "Time to answer one projection query, by subject."),
    ("custody_gateway_requests_total", "HTTP requests the gateway answered, by route pattern and status."),
    ("custody_gateway_request_seconds", "Time to answer one HTTP request, by route pattern."),
    ("custody_edge_outbox_depth", "Envelopes an edge holds that the hub has not yet receipted."),
    ("custody_disk_free_ratio", "Share of the file system holding the service's data folder that is free to write (0 to 1), by folder."),
];

/// Free share of the file system under `dir` (statvfs), if it can be read.
fn free_ratio(dir: &Path) -> Option<f64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` is written by statvfs
    // before it is read, only when it reports success.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    (st.f_blocks > 0).then(|| st.f_bavail as f64 / st.f_blocks as f64)
}

/// Sets `custody_disk_free_ratio{path}` for each folder now and every 15 s.
pub fn watch_disks(data: &[&Path]) {
    let dirs: Vec<PathBuf> = data.iter().map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf())).collect();
    if dirs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            for d in &dirs {
                if let Some(r) = free_ratio(d) {
                    metrics::gauge!("custody_disk_free_ratio", "path" => d.display().to_string()).set(r);
                }
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    });
}

/// Gives every series its `# HELP` text.
fn describe() {
    for (name, help) in SERIES {
        if name.ends_with("_total") {
            metrics::describe_counter!(name, help);
        } else if name.ends_with("_seconds") || name.ends_with("_submissions") {
            metrics::describe_histogram!(name, help);
        } else {
            metrics::describe_gauge!(name, help);
        }
    }
}

/// The process's Prometheus recorder, installed on first use.
fn recorder() -> anyhow::Result<&'static PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)?
        .set_buckets_for_metric(Matcher::Full("custody_ledger_batch_submissions".into()), &SUBMISSIONS)?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    // Histograms are folded in as they are scraped, and now and then
    // without a scrape, so that they hold no more than a few seconds.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle))
}

/// Serves the ops endpoints on `addr` in the background; returns where.
pub async fn serve(addr: SocketAddr, healths: Vec<Health>) -> anyhow::Result<SocketAddr> {
    let metrics = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for --ops"))?;
    let bound = listener.local_addr()?;
    let statuses = move || healths.iter().map(Health::status).collect::<Vec<Status>>();
    let ready = statuses.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move {
                metrics.run_upkeep();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }),
        )
        .route("/healthz", get(move || async move { Json(serde_json::json!({"alive": true, "services": statuses()})) }))
        .route("/readyz", get(move || async move { readiness(ready()) }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the ops listener stopped");
        }
    });
    Ok(bound)
}

/// 200 when every service is ready, else 503; each one's status either way.
fn readiness(statuses: Vec<Status>) -> Response {
    let ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({"ready": ready, "services": statuses}))).into_response()
}

/// CPU seconds this process has used, user and system, on every thread:
/// what a bench divides by its work, a figure less at the mercy of other
/// processes on a shared machine than a rate is.
pub fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// A field of this process's `/proc/self/status` (`VmRSS`, `VmHWM`), in
/// kB (Linux; `None` elsewhere).
pub fn resident_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}
