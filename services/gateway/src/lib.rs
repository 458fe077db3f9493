//! The custody HTTP gateway: DOMAIN.md's HTTP surface over NATS. Lot answers
//! come from any projection (request-reply), entries and verification from
//! the committed stream. Every error is JSON `{"code", "message"}` with a 4xx
//! status, or 503/504 when nothing answers; input never causes a panic.
//! *Invariant: holds no custody rule and no state but how far `verify`
//! got; it only translates.*
// Helpers return the HTTP error response itself as their `Err`, as axum
// handlers do; boxing it would buy nothing on a path that answers HTTP.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use custody_wire::certify::Change;
use custody_wire::health::Health;
use custody_wire::query::{AnswerCode, ErrorAnswer};
use custody_wire::subjects;
use futures::FutureExt as _;
use serde_json::{json, Value};

mod report;
mod svg;

/// The OpenAPI document of this surface.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The regulators' page: plain HTML, CSS and script, no CDN.
const PAGE: &str = include_str!("page.html");
/// The public flows, for anyone (`/statistics`).
const STATISTICS_PAGE: &str = include_str!("statistics.html");

/// How long a query may wait for a projection.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct App {
    /// For queries to the projection.
    nats: async_nats::Client,
    /// What `/v1/ledger/verify` has verified so far. One verification runs
    /// at a time; the others wait for it and answer from where it ended.
    verified: Arc<tokio::sync::Mutex<Verified>>,
    /// Signed requests honoured lately: each is honoured once.
    replays: Arc<std::sync::Mutex<custody_proto::request::Replays>>,
    /// Requests in progress per client address, and how many one may have.
    in_progress: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    per_client: usize,
    /// People signed in on the page: challenges issued, sessions open.
    sessions: Arc<std::sync::Mutex<Sessions>>,
    /// The ledgers' refusals by code, as last gathered, and when: one
    /// gathering serves every request for [`REFUSALS_FRESH`].
    refusals: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>,
}

/// How long gathered refusal counts are served before asking again.
const REFUSALS_FRESH: Duration = Duration::from_secs(10);
/// How long the ledger replicas are given to say what they refused.
const REFUSALS_WAIT: Duration = Duration::from_millis(300);

/// How long a challenge may be answered, and a session lasts.
const CHALLENGE_LIFE: Duration = Duration::from_secs(60);
const SESSION_LIFE: Duration = Duration::from_secs(3600);
/// Most challenges and sessions held at once (the oldest go first): no
/// client can use up the gateway's memory by asking for more.
const MAX_SESSIONS: usize = 10_000;
/// The session cookie's name.
const SESSION_COOKIE: &str = "custody_session";

/// Challenges issued and sessions open, each with when it ends.
#[derive(Default)]
struct Sessions {
    challenges: HashMap<String, std::time::Instant>,
    open: HashMap<String, (String, std::time::Instant)>,
}

impl Sessions {
    fn prune(&mut self) {
        let now = std::time::Instant::now();
        self.challenges.retain(|_, end| *end > now);
        self.open.retain(|_, (_, end)| *end > now);
        while self.challenges.len() >= MAX_SESSIONS {
            let Some(oldest) = self.challenges.iter().min_by_key(|(_, end)| **end).map(|(k, _)| k.clone()) else { break };
            self.challenges.remove(&oldest);
        }
        while self.open.len() >= MAX_SESSIONS {
            let Some(oldest) = self.open.iter().min_by_key(|(_, (_, end))| *end).map(|(k, _)| k.clone()) else { break };
            self.open.remove(&oldest);
        }
    }
}

/// 32 random bytes, as hex.
fn token() -> String {
    use rand::RngExt as _;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address a connection comes from (set on each of its requests).
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::IpAddr);

/// How far the committed stream was verified, or the first thing wrong in
/// it (an append-only stream that broke stays broken).
enum Verified {
    Good(custody_audit::verify::Checker),
    Bad(custody_audit::verify::Bad),
}

/// The HTTP status of each answer code: the one place they are mapped.
fn status(code: AnswerCode) -> StatusCode {
    use AnswerCode::*;
    match code {
        UnknownLot | NotInTree | TreeTooSmall | UnknownEntry | NotFound => StatusCode::NOT_FOUND,
        BadCredentials => StatusCode::UNAUTHORIZED,
        UnknownActor | ActorRevoked | NotPermitted => StatusCode::FORBIDDEN,
        Internal | BadAnswer | BadEntry => StatusCode::BAD_GATEWAY,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Timeout => StatusCode::GATEWAY_TIMEOUT,
        BadRequest | InvalidRequest | InvalidDate | UnknownRules | InvalidRules | RulesTooLarge | AnswerTooLarge | InvalidPath | InvalidSeq
        | InvalidParameter | MissingParameter => StatusCode::BAD_REQUEST,
    }
}

fn error(code: AnswerCode, message: impl Into<String>) -> Response {
    (status(code), Json(custody_wire::query::error_answer(code, message))).into_response()
}

/// The routes, over a NATS connection, with at most `per_client` requests
/// in progress per client address.
pub fn router(nats: async_nats::Client, per_client: usize) -> Router {
    let checker = custody_audit::verify::Checker::new(Box::new(|_| {}));
    let app = App {
        nats,
        verified: Arc::new(tokio::sync::Mutex::new(Verified::Good(checker))),
        replays: Default::default(),
        in_progress: Default::default(),
        per_client,
        sessions: Default::default(),
        refusals: Default::default(),
    };
    Router::new()
        .route("/v1/search", get(search))
        .route("/v1/lots", get(lots))
        .route("/v1/session/challenge", get(challenge))
        .route("/v1/session", post(sign_in).get(session).delete(sign_out))
        .route(
            "/v1/rules",
            get(|State(app): State<App>, Query(q): Query<HashMap<String, String>>| async move {
                // With `?date=`, also which preset of each market is in force on it.
                app.query(subjects::QUERY_RULES, q.get("date").map_or_else(|| json!({}), |d| json!({"date": d}))).await
            }),
        )
        .route("/v1/statistics", get(statistics))
        .route("/statistics", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], STATISTICS_PAGE) }))
        .route("/v1/lots/{lot}/origin", get(origin))
        .route("/v1/lots/{lot}/admissibility", get(admissibility))
        .route("/v1/lots/{lot}/genealogy", get(genealogy))
        .route("/v1/lots/{lot}/certificate", get(certificate))
        .route("/v1/lots/{lot}/report.pdf", get(report))
        .route("/v1/certificates/verify", post(verify_certificate))
        .route("/v1/submissions", post(submissions))
        .route("/v1/ledger/entries/{seq}", get(entry))
        .route("/v1/ledger/entries/{seq}/proof", get(proof))
        .route("/v1/ledger/checkpoint", get(checkpoint))
        .route("/v1/ledger/consistency", get(consistency))
        .route("/v1/ledger/map", post(map))
        .route("/v1/ledger/verify", get(verify))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), one_client))
        .route_layer(axum::middleware::from_fn(counted))
        .fallback(|| async {
            let response = error(AnswerCode::NotFound, "no such path; see /v1/openapi.json");
            count("unmatched", response.status(), None);
            response
        })
        .with_state(app)
}

/// One client's requests in progress: at most `per_client` at once (past
/// it, 503 at once), and every question it makes the services is queued
/// with that client's own (`custody_wire::fair`), named by its address
/// (or, once a handler has verified a signed request, by its key).
async fn one_client(State(app): State<App>, request: Request, next: axum::middleware::Next) -> Response {
    let Some(Peer(ip)) = request.extensions().get::<Peer>().copied() else {
        return next.run(request).await;
    };
    {
        let mut map = app.in_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = map.entry(ip).or_default();
        if *mine >= app.per_client {
            let why = format!("you have {} requests in progress here, the most one client may; wait for their answers", app.per_client);
            return error(AnswerCode::Unavailable, why);
        }
        *mine += 1;
    }
    /// Gives the place back however the request ends (even if dropped).
    struct Done(App, std::net::IpAddr);
    impl Drop for Done {
        fn drop(&mut self) {
            let mut map = self.0.in_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = map.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.1);
                }
            }
        }
    }
    let _done = Done(app, ip);
    custody_wire::query::on_behalf_of(format!("addr:{ip}"), next.run(request)).await
}

/// Counts a request by route (its pattern, never the path itself: the
/// asker chooses that) and status, and times it.
async fn counted(request: Request, next: axum::middleware::Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    count(&route, response.status(), Some(started.elapsed()));
    response
}

/// `custody_gateway_requests_total{service, route, status}` and, when
/// timed, `custody_gateway_request_seconds{service, route}`; `service`
/// names the instance, as every service's series do.
fn count(route: &str, status: StatusCode, took: Option<Duration>) {
    let service = SERVICE.get().map_or("gateway", String::as_str).to_owned();
    metrics::counter!("custody_gateway_requests_total", "service" => service.clone(), "route" => route.to_owned(), "status" => status.as_u16().to_string())
        .increment(1);
    if let Some(took) = took {
        metrics::histogram!("custody_gateway_request_seconds", "service" => service, "route" => route.to_owned()).record(took.as_secs_f64());
    }
}

/// This process's gateway instance name (its health's), for its series.
static SERVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Connect(#[from] custody_wire::connect::ConnectError),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// What HTTP clients may hold of the gateway, together and each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; past it, a new one is answered 503 and
    /// closed. Far below the process's descriptor limit, so that a flood
    /// of sockets never starves the services sharing the process.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how
    /// long an idle kept-alive connection stays open.
    pub header_timeout: Duration,
    /// The longest a connection lives, whatever it does.
    pub connection_lifetime: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Requests one client address may have in progress at once.
    pub per_client: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 2_048,
            header_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(300),
            body_timeout: Duration::from_secs(10),
            per_client: 64,
        }
    }
}

/// Serves on `listen` until `shutdown`; `on_bound` learns the real address
/// (for a port 0). `health` says whether it can serve: while connected to
/// NATS.
pub async fn run(
    nats_url: &str,
    nkey: Option<&str>,
    listen: SocketAddr,
    limits: HttpLimits,
    health: Health,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let _ = SERVICE.set(health.name());
    let nats = custody_wire::connect::connect(nats_url, "custody-gateway", nkey).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| GatewayError::Listen { listen, source })?;
    on_bound(listener.local_addr()?);
    health.update(|s| s.role = "serving".into());
    let mut background = tokio::task::JoinSet::new();
    background.spawn(custody_wire::health::answer_status(nats.clone(), health.clone()).map(drop));
    // Ready while connected (answer_status watches the connection).
    health.set_ready(Ok(()));
    let app = router(nats, limits.per_client).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout));
    serve_bounded(listener, app, limits, shutdown).await;
    Ok(())
}

/// Serves `app` on `listener`, each connection holding one of
/// `limits.max_connections` places (past them: 503 and closed), with a
/// header-read and idle timeout and a longest life.
async fn serve_bounded(listener: tokio::net::TcpListener, app: Router, limits: HttpLimits, shutdown: impl Future<Output = ()>) {
    let places = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait, never spin or stop.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let Ok(place) = places.clone().try_acquire_owned() else {
            count("over_capacity", StatusCode::SERVICE_UNAVAILABLE, None);
            connections.spawn(turn_away(stream, limits.max_connections));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(tower_http::add_extension::AddExtension::new(app.clone(), Peer(peer.ip())));
        connections.spawn(async move {
            let _place = place;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
    }
    // Those in flight get a moment to finish, then are dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
}

/// Answers a connection past the limit 503, in JSON like every refusal,
/// and closes it.
async fn turn_away(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt as _;
    let body = custody_wire::query::error_answer(AnswerCode::Unavailable, format!("the gateway is serving its limit of {max} connections: try again shortly"))
        .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

impl App {
    /// A projection query; its error codes become HTTP statuses.
    async fn query(&self, subject: &str, body: Value) -> Response {
        self.ask("projection", subject, body).await
    }

    /// A request to `who` (the projection or the ledger) over NATS, as
    /// the HTTP answer.
    async fn ask(&self, who: &str, subject: &str, body: Value) -> Response {
        match self.answer(who, subject, body).await {
            Ok(answer) => Json(answer).into_response(),
            Err(response) => response,
        }
    }

    /// The answer of `who` to a request; an error answer, or no answer, as
    /// the HTTP response to send instead.
    async fn answer(&self, who: &str, subject: &str, body: Value) -> Result<Value, Response> {
        use custody_wire::query::RequestError;
        let answer = match custody_wire::query::request(&self.nats, subject, &body, QUERY_TIMEOUT).await {
            Ok(answer) => answer,
            Err(RequestError::Timeout { .. }) => return Err(error(AnswerCode::Timeout, format!("no {who} answered in time"))),
            Err(RequestError::Unavailable { why, .. }) => return Err(error(AnswerCode::Unavailable, format!("no {who} is answering: {why}"))),
            Err(RequestError::NotJson { .. }) => return Err(error(AnswerCode::BadAnswer, format!("the {who}'s answer is not JSON"))),
        };
        let status = match (answer.get("code"), ErrorAnswer::of(&answer)) {
            (None, _) => return Ok(answer),
            (Some(_), Some(e)) => status(e.code),
            // A code this gateway does not know (a newer service): the request's fault.
            (Some(_), None) => StatusCode::BAD_REQUEST,
        };
        Err((status, Json(answer)).into_response())
    }
}

/// A path segment axum could not decode (not UTF-8, say) is our JSON 400.
fn segment(p: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    p.map(|Path(s)| s).map_err(|e| error(AnswerCode::InvalidPath, format!("the path cannot be read: {e}")))
}

/// The origin answer; with `?format=csv`, its custody path as CSV (one
/// row a step, the lot's origin repeated on each).
async fn origin(State(app): State<App>, lot: Result<Path<String>, PathRejection>, Query(q): Query<HashMap<String, String>>) -> Response {
    let lot = match segment(lot) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if q.get("format").map(String::as_str) != Some("csv") {
        return app.query(subjects::QUERY_ORIGIN, json!({"lot": lot})).await;
    }
    let mut origin = match app.answer("projection", subjects::QUERY_ORIGIN, json!({"lot": lot})).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    let steps = origin.get_mut("path").map(Value::take).and_then(|p| p.as_array().cloned()).unwrap_or_default();
    let shared = json!({"lot": origin["lot"], "mine_origin": shares_text(&origin["mine_origin"]), "customs_origin": origin["customs_origin"], "as_of_seq": origin["as_of_seq"]});
    csv_response(custody_wire::table::csv(&steps, &["seq", "date", "kind", "country", "note", "late_record", "vouched.by"], &shared, "lot"))
}

/// Shares as a spreadsheet reads them: "BW 0.6000; RU 0.4000".
fn shares_text(mine_origin: &Value) -> Value {
    let shares: Vec<String> = mine_origin
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{} {}", s["country"].as_str().unwrap_or(""), s["share"].as_str().unwrap_or("")))
        .collect();
    json!(shares.join("; "))
}

fn csv_response(csv: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response()
}

/// `?q=`: a lot id, or the number on a paper (a KP certificate, an export
/// declaration, an invoice, a lab report, a verification); with
/// `&format=csv`, the lots found as CSV.
async fn search(State(app): State<App>, Query(params): Query<HashMap<String, String>>) -> Response {
    let Some(q) = params.get("q") else {
        return error(AnswerCode::MissingParameter, "search needs ?q= with a lot id or the number on a paper (KP certificate, invoice, lab report, ...)");
    };
    if params.get("format").map(String::as_str) != Some("csv") {
        return app.query(subjects::QUERY_SEARCH, json!({"q": q})).await;
    }
    let found = match app.answer("projection", subjects::QUERY_SEARCH, json!({"q": q})).await {
        Ok(f) => f,
        Err(response) => return response,
    };
    let mut rows = found["found"].as_array().cloned().unwrap_or_default();
    for row in &mut rows {
        let into: Vec<&str> = row["made_into"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        row["made_into"] = json!(into.join("; "));
    }
    let shared = json!({"query": found["query"], "as_of_seq": found["as_of_seq"], "truncated": found["truncated"]});
    csv_response(custody_wire::table::csv(&rows, &["lot", "matched", "seq", "state", "carats", "consumed", "made_into"], &shared, "search"))
}

/// The filters `GET /v1/lots` takes.
const LOT_FILTERS: [&str; 12] = ["holder", "mined_in", "state", "consumed", "rules", "verdict", "date", "from", "to", "after", "limit", "format"];

/// A page of lots, filtered (`custody_wire::query::LotsQuery`), as JSON
/// or, with `?format=csv`, CSV. `holder=me` (or a key) lists what one
/// actor holds: who holds what is a business secret, so only to that
/// actor itself, signed in or signing the request, and to regulators.
async fn lots(State(app): State<App>, Query(q): Query<HashMap<String, String>>, headers: axum::http::HeaderMap, uri: axum::http::Uri) -> Response {
    if let Some(k) = q.keys().find(|k| !LOT_FILTERS.contains(&k.as_str())) {
        let why = format!("{:?} is not a filter of /v1/lots; they are {}", custody_proto::ids::truncate(k), LOT_FILTERS.join(", "));
        return error(AnswerCode::InvalidParameter, why);
    }
    let mut body = serde_json::Map::new();
    for k in ["mined_in", "state", "rules", "verdict", "date", "from", "to", "after"] {
        if let Some(v) = q.get(k) {
            body.insert(k.into(), json!(v));
        }
    }
    if let Some(c) = q.get("consumed") {
        let Ok(c) = c.parse::<bool>() else { return error(AnswerCode::InvalidParameter, "consumed is true or false") };
        body.insert("consumed".into(), json!(c));
    }
    if let Some(l) = q.get("limit") {
        let Ok(l) = l.parse::<usize>() else { return error(AnswerCode::InvalidParameter, "limit is a number of lots (1 to 200)") };
        body.insert("limit".into(), json!(l));
    }
    let subject = match q.get("holder") {
        None => subjects::QUERY_LOTS.to_owned(),
        Some(holder) => {
            let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
            match caller(&app, &headers, "GET", &path).await {
                Ok(Some(c)) => {
                    let key = if holder == "me" { c.key.clone() } else { holder.clone() };
                    if key.parse::<custody_proto::ActorKey>().is_err() {
                        return error(AnswerCode::InvalidParameter, "holder is me, or an actor's public key (U...)");
                    }
                    if key != c.key && !c.regulator {
                        let why = format!("who holds what is a business secret: {} may list its own lots (holder=me), a regulator anyone's", c.key);
                        return error(AnswerCode::NotPermitted, why);
                    }
                    subjects::holdings(&key)
                }
                Ok(None) => {
                    let why = "who holds what is a business secret: sign in (or sign the request) to list your own lots with holder=me";
                    return error(AnswerCode::BadCredentials, why);
                }
                Err(r) => return r,
            }
        }
    };
    let answer = match app.answer("projection", &subject, Value::Object(body)).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    if q.get("format").map(String::as_str) != Some("csv") {
        return Json(answer).into_response();
    }
    let mut rows = answer["lots"].as_array().cloned().unwrap_or_default();
    for row in &mut rows {
        row["mine_origin"] = shares_text(&row["mine_origin"]);
    }
    let lead = ["lot", "state", "carats", "consumed", "created", "held_in", "mine_origin"];
    csv_response(custody_wire::table::csv(&rows, &lead, &json!({"as_of_seq": answer["as_of_seq"], "next": answer["next"]}), "page"))
}

/// The public flows, as JSON, or as CSV with `?format=csv` (one row per
/// flow, each naming the entry counted to; the JSON alone carries the
/// figures about the mass held now).
async fn statistics(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = match app.answer("projection", subjects::QUERY_STATISTICS, json!({})).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    if q.get("format").map(String::as_str) != Some("csv") {
        s["refusals"] = refusals(&app).await;
        return Json(s).into_response();
    }
    let rows = s["flows"].as_array().cloned().unwrap_or_default();
    let lead = ["mined_in", "to", "quarter", "carats", "stones", "value_usd"];
    csv_response(custody_wire::table::csv(&rows, &lead, &json!({"as_of_seq": s["as_of"]["seq"]}), "as_of"))
}

/// What the ledger replicas answering now refused, by code, since each
/// started: only codes met by at least [`Refused::ACTORS`] different
/// actors (the rest summed as withheld). Refusals are not ledger
/// entries, so these figures cannot be recomputed from a backup.
async fn refusals(app: &App) -> Value {
    use custody_wire::health::Refused;
    let mut cached = app.refusals.lock().await;
    if let Some((at, v)) = cached.as_ref() {
        if at.elapsed() < REFUSALS_FRESH {
            return v.clone();
        }
    }
    let statuses = custody_wire::health::gather(&app.nats, &["ledger"], REFUSALS_WAIT).await.unwrap_or_default();
    let mut by_code: std::collections::BTreeMap<String, Refused> = std::collections::BTreeMap::new();
    for status in statuses.iter().filter(|s| s.service == "ledger") {
        for (code, r) in &status.refused {
            let t = by_code.entry(code.clone()).or_default();
            t.refusals += r.refusals;
            // Replicas may have met the same actors: the most any one met
            // is all that is known for sure.
            t.actors = t.actors.max(r.actors);
        }
    }
    let (shown, thin): (Vec<_>, Vec<_>) = by_code.into_iter().partition(|(_, r)| r.actors >= Refused::ACTORS);
    let since = statuses.iter().filter_map(|s| s.refused_since.clone()).min();
    let v = json!({
        "by_code": shown.iter().map(|(code, r)| json!({"code": code, "refusals": r.refusals})).collect::<Vec<_>>(),
        "withheld": thin.iter().map(|(_, r)| r.refusals).sum::<u64>(),
        "since": since,
        "replicas": statuses.iter().filter(|s| s.service == "ledger").count(),
        "note": "submissions the ledger replicas answering now refused since each started, by code; a code met by fewer than 3 actors is counted under withheld. Refusals are not ledger entries, so they cannot be recomputed from a backup.",
    });
    *cached = Some((std::time::Instant::now(), v.clone()));
    v
}

async fn admissibility(State(app): State<App>, lot: Result<Path<String>, PathRejection>, Query(q): Query<HashMap<String, String>>) -> Response {
    let lot = match segment(lot) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (Some(rules), Some(date)) = (q.get("rules"), q.get("date")) else {
        return error(AnswerCode::MissingParameter, "admissibility needs ?rules=NAME&date=YYYY-MM-DD");
    };
    app.query(subjects::QUERY_ADMISSIBILITY, json!({"lot": lot, "rules": rules, "date": date})).await
}

/// JSON, or an SVG picture with `?format=svg` or `Accept: image/svg+xml`.
async fn genealogy(
    State(app): State<App>,
    lot: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let lot = match segment(lot) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Some(f) = q.get("format").filter(|f| !["json", "svg"].contains(&f.as_str())) {
        return error(AnswerCode::InvalidParameter, format!("format {:?}: the genealogy comes as json or svg", custody_proto::ids::truncate(f)));
    }
    let wants_svg =
        q.get("format").is_some_and(|f| f == "svg") || headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("image/svg+xml"));
    let answer = app.query(subjects::QUERY_GENEALOGY, json!({"lot": lot})).await;
    if !wants_svg || answer.status() != StatusCode::OK {
        return answer;
    }
    let Ok(bytes) = axum::body::to_bytes(answer.into_body(), 64 << 20).await else {
        return error(AnswerCode::BadAnswer, "the genealogy is too large to draw");
    };
    let Ok(g) = serde_json::from_slice::<Value>(&bytes) else {
        return error(AnswerCode::BadAnswer, "the projection's answer is not JSON");
    };
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg::genealogy(&g)).into_response()
}

/// The markets a report judges for: each under its preset in force on the
/// date (`custody.query.rules` with the date says which).
const REPORT_MARKETS: [(&str, &str); 3] = [("us", "United States"), ("eu", "European Union"), ("uk", "United Kingdom")];

/// The origin report as a PDF (`?date=YYYY-MM-DD`, default today): the
/// origin, each market's verdict under the rule set in force on the date,
/// the journey, and a QR code opening the page that checks its
/// certificate. As public as the answers it summarises.
async fn report(
    State(app): State<App>,
    lot: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let lot = match segment(lot) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // "2026-12-02T10:00:00.123Z": its day is the default date, to the
    // second it is when the report was made.
    let now = custody_proto::Timestamp::now().to_string();
    let date = q.get("date").cloned().unwrap_or_else(|| now.chars().take(10).collect());
    let origin = match app.answer("projection", subjects::QUERY_ORIGIN, json!({"lot": lot})).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    let titles = match app.answer("projection", subjects::QUERY_RULES, json!({"date": date})).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    let mut answers = Vec::new();
    for (jurisdiction, market) in REPORT_MARKETS {
        let Some(rules) = titles["in_force"][jurisdiction].as_str().map(str::to_owned) else { continue };
        match app.answer("projection", subjects::QUERY_ADMISSIBILITY, json!({"lot": lot, "rules": rules, "date": date})).await {
            Ok(a) => {
                let title = titles["presets"].as_array().into_iter().flatten().find(|p| p["name"] == rules.as_str()).and_then(|p| p["title"].as_str());
                answers.push((format!("{market}: {}", title.unwrap_or(&rules)), a));
            }
            Err(response) => return response,
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)))
        .unwrap_or("localhost");
    // The lot id as it may stand in a link and a file name.
    let plain = lot.replace(|c: char| !c.is_ascii_alphanumeric() && !"-_.".contains(c), "_");
    let check_url = format!("http://{host}/?lot={plain}&date={date}");
    let made_at = format!("{}Z", now.chars().take(19).collect::<String>());
    let pdf = report::pdf(&report::Report {
        origin: &origin,
        verdicts: answers.iter().map(|(t, a)| (t.clone(), a)).collect(),
        date: &date,
        check_url: &check_url,
        made_at: &made_at,
    });
    let disposition = format!("inline; filename=\"{plain}.origin-report.pdf\"");
    ([(header::CONTENT_TYPE, "application/pdf".to_owned()), (header::CONTENT_DISPOSITION, disposition)], pdf).into_response()
}

/// An origin certificate: `?rules=us-2024,eu-2025&date=YYYY-MM-DD`. It
/// carries every envelope of the lot's history, with the parties' keys and
/// prices that entries show only to regulators and parties: so it goes only
/// to a signed request from a regulator.
async fn certificate(
    State(app): State<App>,
    lot: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use custody_wire::certify::CertifyError;
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let signer = match caller(&app, &headers, "GET", &path).await {
        Ok(Some(c)) if c.regulator => c.key,
        Ok(Some(c)) => return error(AnswerCode::NotPermitted, format!("{} is not a regulator; a certificate carries every party's envelopes", c.key)),
        Ok(None) => {
            let why = "a certificate carries every envelope of the lot's history, with the parties' keys and prices: sign the request as a regulator (Authorization: Custody <key>:<time>:<signature>), or run custody certify with a regulator's key";
            return error(AnswerCode::BadCredentials, why);
        }
        Err(r) => return r,
    };
    let lot = match segment(lot) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (Some(rules), Some(date)) = (q.get("rules"), q.get("date")) else {
        return error(AnswerCode::MissingParameter, "a certificate needs ?rules=NAME[,NAME...]&date=YYYY-MM-DD");
    };
    let rules: Vec<String> = rules.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
    let query = custody_wire::query::CertificateQuery { lot, rules, date: date.clone() };
    // A verified regulator's certificates are queued as that regulator's.
    match custody_wire::query::on_behalf_of(format!("key:{signer}"), custody_wire::certify::certify(&app.nats, &query)).await {
        Ok(cert) => Json(cert).into_response(),
        Err(CertifyError::Answer(e)) => error(e.code, e.message),
        Err(CertifyError::Request(custody_wire::query::RequestError::Timeout { .. })) => error(AnswerCode::Timeout, "the certificate took too long to make"),
        Err(e) => error(AnswerCode::Unavailable, e.to_string()),
    }
}

/// Checks a posted certificate against `?key=N...`: a projection checks it
/// from the certificate alone (never from its own state) and recomputes
/// its answers. Certificates larger than one NATS message are checked
/// with `custody verify-certificate` instead.
async fn verify_certificate(State(app): State<App>, Query(q): Query<HashMap<String, String>>, body: axum::body::Bytes) -> Response {
    let Some(key) = q.get("key") else {
        return error(AnswerCode::MissingParameter, "give the ledger's public key you trust: ?key=N...");
    };
    let certificate: Value = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return Json(json!({"valid": false, "findings": [{"check": "format", "message": format!("the file is not JSON: {e}")}]})).into_response(),
    };
    let request = json!({"certificate": certificate, "key": key});
    let max = app.nats.server_info().max_payload;
    if request.to_string().len() > max {
        let why = format!("the certificate is larger than the {max} bytes one NATS message carries; check it with custody verify-certificate");
        return error(AnswerCode::AnswerTooLarge, why);
    }
    let answer = app.query(subjects::QUERY_VERIFY_CERTIFICATE, request).await;
    if answer.status() == StatusCode::OK {
        // A valid certificate: and has anything happened since?
        let Ok(bytes) = axum::body::to_bytes(answer.into_body(), 16 << 20).await else { return error(AnswerCode::BadAnswer, "unreadable answer") };
        let mut report: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if report["valid"] == true {
            if let Ok(cert) = serde_json::from_value::<custody_proto::certificate::OriginCertificate>(certificate) {
                report["since"] = match since(&app, &cert, key).await {
                    Ok((c, changed)) => json!({"as_of": {"tree_size": c.tree_size, "time": c.time}, "changed": changed}),
                    Err(why) => json!({"error": why}),
                };
            }
        }
        return Json(report).into_response();
    }
    if answer.status() != StatusCode::BAD_REQUEST {
        return answer;
    }
    // Not a certificate at all: a finding, not a fault.
    let Ok(bytes) = axum::body::to_bytes(answer.into_body(), 1 << 20).await else { return error(AnswerCode::BadAnswer, "unreadable answer") };
    let e: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Json(json!({"valid": false, "findings": [{"check": "format", "message": e["message"]}]})).into_response()
}

/// What happened to a certificate's lot, ancestors and signers since its
/// checkpoint: the newest checkpoint, the consistency proof to it and the
/// lot map's heads of the same subjects, from the ledger, checked against
/// the key the page was given (`custody_proto::certificate::changes_since`,
/// as `verify-certificate --online` does over HTTP).
async fn since(app: &App, cert: &custody_proto::certificate::OriginCertificate, key: &str) -> Result<(custody_proto::Checkpoint, Vec<Change>), String> {
    let subjects: Vec<custody_proto::lotmap::Subject> = cert.map.iter().flat_map(|p| p.subjects.iter().cloned()).collect();
    if subjects.is_empty() {
        return Err("the certificate proves no history whole, so there is nothing to compare".into());
    }
    let ask = |subject: &'static str, body: Value| async move {
        let v = custody_wire::query::request(&app.nats, subject, &body, QUERY_TIMEOUT).await.map_err(|e| e.to_string())?;
        match ErrorAnswer::of(&v) {
            Some(e) => Err(e.message),
            None => Ok(v),
        }
    };
    let mut newest: Option<custody_proto::Checkpoint> = None;
    let mut now = Vec::new();
    for chunk in subjects.chunks(MAX_MAP_SUBJECTS) {
        let mut body = custody_wire::certify::map_request(chunk);
        if let Some(c) = &newest {
            body["at"] = json!(c.tree_size);
        }
        let v = ask(subjects::PROOF_SUBJECT, body).await?;
        if newest.is_none() {
            newest = Some(serde_json::from_value(v["checkpoint"].clone()).map_err(|e| format!("the ledger's checkpoint: {e}"))?);
        }
        now.push(serde_json::from_value(v["map"].clone()).map_err(|e| format!("the ledger's map proof: {e}"))?);
    }
    let newest = newest.ok_or("no checkpoint")?;
    let (from, to) = (cert.checkpoint.tree_size, newest.tree_size);
    let consistency: Vec<custody_proto::Hash> = if from >= to {
        Vec::new()
    } else {
        let v = ask(subjects::CONSISTENCY_SUBJECT, json!({"from": from, "to": to})).await?;
        v["proof"].as_array().into_iter().flatten().filter_map(|h| h.as_str().and_then(custody_proto::Hash::from_hex)).collect()
    };
    let short = custody_proto::certificate::changes_since(cert, key, &newest, &consistency, &now)?;
    let reader = custody_wire::follow::Reader::ledger(&app.nats);
    let mut changed = Vec::new();
    for s in short {
        let kind = match s.held {
            Some(h) => reader.get(h.last).await.ok().flatten().and_then(|m| custody_wire::follow::entry_of(&m).ok()).and_then(|e| {
                let event = custody_proto::Event::decode(&custody_proto::Opened::payload_of(&e.envelope).ok()?).ok()?;
                Some(event.body.kind().to_owned())
            }),
            None => None,
        };
        changed.push(Change::of(&s, kind));
    }
    Ok((newest, changed))
}

/// Who is asking, from a signed request (see `custody_proto::request`).
struct Caller {
    key: String,
    regulator: bool,
}

/// The caller of a request: `None` when it is not signed; an error
/// response when the signature is bad or the key is not a live actor.
async fn caller(app: &App, headers: &axum::http::HeaderMap, method: &str, path: &str) -> Result<Option<Caller>, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        // A person signed in on the page: the session names the key.
        return match session_key(app, headers) {
            Some(key) => judge(app, key).await.map(Some),
            None => Ok(None),
        };
    };
    let value = value.to_str().map_err(|_| error(AnswerCode::BadCredentials, "the Authorization header is not text"))?;
    let key = app
        .replays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .verify_once(value, method, path, custody_proto::Timestamp::now())
        .map_err(|why| error(AnswerCode::BadCredentials, why))?;
    judge(app, key).await.map(Some)
}

/// The session token the request's cookie carries, if any.
fn session_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let mut cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).map(str::trim);
    cookies.find_map(|c| c.strip_prefix(SESSION_COOKIE).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
}

/// The key of the session the request's cookie names, if it is open.
fn session_key(app: &App, headers: &axum::http::HeaderMap) -> Option<String> {
    let token = session_token(headers)?;
    let sessions = app.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    sessions.open.get(&token).filter(|(_, end)| *end > std::time::Instant::now()).map(|(key, _)| key.clone())
}

/// Who `key` is now: a live actor (registered, not revoked), judged from
/// an answer at or past the ledger's head; an error response otherwise.
async fn judge(app: &App, key: String) -> Result<Caller, Response> {
    // A revocation receipted before this request must not be missed: the
    // answer must reflect at least the ledger's head as it is now (a
    // projection behind it may not know of the revocation yet).
    let Ok(head) = custody_wire::query::request(&app.nats, subjects::HEAD_SUBJECT, &json!({}), QUERY_TIMEOUT).await else {
        return Err(error(AnswerCode::Unavailable, "the ledger did not say how far it is, so a revocation cannot be ruled out; ask again shortly"));
    };
    let head = head["seq"].as_u64().unwrap_or(u64::MAX);
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    let answer = loop {
        let Ok(answer) = custody_wire::query::request(&app.nats, subjects::QUERY_ACTOR, &json!({"key": key}), QUERY_TIMEOUT).await else {
            return Err(error(AnswerCode::Unavailable, "no projection answered who the caller is"));
        };
        let as_of = answer["as_of_seq"].as_u64();
        if answer.get("code").is_some() || as_of.is_some_and(|s| s >= head) {
            break answer;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(error(
                AnswerCode::Unavailable,
                format!(
                    "the projection is behind the ledger (entry {} of {head}): it cannot yet tell whether {key} was revoked; ask again shortly",
                    as_of.unwrap_or(0)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if answer.get("code").is_some() {
        return Err(error(AnswerCode::UnknownActor, format!("{key} is not a registered actor")));
    }
    if answer["revoked"] == true {
        return Err(error(AnswerCode::ActorRevoked, format!("{key} was revoked")));
    }
    let regulator = answer["roles"].as_array().is_some_and(|r| r.iter().any(|x| x == "regulator"));
    Ok(Caller { key, regulator })
}

/// A challenge to sign in with (valid for a minute, once).
async fn challenge(State(app): State<App>) -> Response {
    let c = token();
    let mut sessions = app.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    sessions.prune();
    sessions.challenges.insert(c.clone(), std::time::Instant::now() + CHALLENGE_LIFE);
    Json(json!({"challenge": c, "sign": custody_proto::request::session_text(&c), "expires_in": CHALLENGE_LIFE.as_secs()})).into_response()
}

#[derive(serde::Deserialize)]
struct SignIn {
    key: String,
    challenge: String,
    signature: String,
}

/// Signs a person in: the challenge signed by a live actor's key, in the
/// browser (the key never leaves it). Opens a session for an hour, named
/// by an HttpOnly, SameSite cookie; every request under it is judged
/// again (a revocation ends it at once).
async fn sign_in(State(app): State<App>, body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>) -> Response {
    let Ok(Json(s)) = body else {
        return error(
            AnswerCode::BadRequest,
            "sign in with {\"key\", \"challenge\", \"signature\"}: the challenge from /v1/session/challenge, signed with your key",
        );
    };
    let issued = app.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).challenges.remove(&s.challenge);
    if issued.is_none_or(|end| end <= std::time::Instant::now()) {
        return error(AnswerCode::BadCredentials, "that challenge was not issued here, was used already, or is older than a minute: ask for a new one");
    }
    if let Err(why) = custody_proto::request::verify_session(&s.key, &s.challenge, &s.signature) {
        return error(AnswerCode::BadCredentials, why);
    }
    let who = match judge(&app, s.key).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let t = token();
    {
        let mut sessions = app.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.prune();
        sessions.open.insert(t.clone(), (who.key.clone(), std::time::Instant::now() + SESSION_LIFE));
    }
    let cookie = format!("{SESSION_COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_LIFE.as_secs());
    ([(header::SET_COOKIE, cookie)], Json(json!({"key": who.key, "regulator": who.regulator, "expires_in": SESSION_LIFE.as_secs()}))).into_response()
}

/// Who is signed in, if anyone.
async fn session(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    match session_key(&app, &headers) {
        Some(key) => match judge(&app, key).await {
            Ok(who) => Json(json!({"key": who.key, "regulator": who.regulator})).into_response(),
            Err(r) => r,
        },
        None => Json(json!({"key": null, "regulator": false})).into_response(),
    }
}

/// Signs out: the session ends here and the cookie is cleared.
async fn sign_out(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        app.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).open.remove(&token);
    }
    ([(header::SET_COOKIE, format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"))], Json(json!({"signed_out": true}))).into_response()
}

/// Fields of an event only regulators and its parties may see.
const CONFIDENTIAL: [&str; 3] = ["actor", "to", "certificate.value_usd"];

/// Removes the confidential fields of `event` unless `caller` is a
/// regulator or one of its parties (its actor or counterparty).
fn confidential(event: &mut Value, caller: Option<&Caller>) -> bool {
    let shown = caller.is_some_and(|c| c.regulator || event["actor"].as_str() == Some(c.key.as_str()) || event["to"].as_str() == Some(c.key.as_str()));
    if !shown {
        if let Some(o) = event.as_object_mut() {
            o.remove("actor");
            o.remove("to");
        }
        if let Some(c) = event.get_mut("certificate").and_then(Value::as_object_mut) {
            c.remove("value_usd");
        }
    }
    shown
}

async fn entry(State(app): State<App>, seq: Result<Path<String>, PathRejection>, headers: axum::http::HeaderMap, uri: axum::http::Uri) -> Response {
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let who = match caller(&app, &headers, "GET", &path).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let seq = match segment(seq) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(seq) = seq.parse::<u64>().ok().filter(|s| *s >= 1) else {
        return error(AnswerCode::InvalidSeq, format!("{:?} is not a ledger seq (a whole number from 1)", seq.chars().take(40).collect::<String>()));
    };
    let msg = match custody_wire::follow::Reader::ledger(&app.nats).get(seq).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(AnswerCode::UnknownEntry, format!("the ledger has no entry {seq}")),
        Err(e) => return error(AnswerCode::Unavailable, format!("the committed stream cannot be read: {e}")),
    };
    let entry = match custody_wire::follow::entry_of(&msg) {
        Ok(e) => e,
        Err(why) => return error(AnswerCode::BadEntry, why),
    };
    let envelope: Value = serde_json::from_slice(&entry.envelope).unwrap_or(Value::Null);
    let mut event: Value = envelope["payload"]
        .as_str()
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null);
    let hash_valid = custody_proto::Entry::compute_hash(entry.seq, &entry.prev_hash, &entry.recorded_at, &entry.envelope) == entry.hash;
    // The envelope carries the signer and the whole payload: parties and
    // regulators only.
    let shown = confidential(&mut event, who.as_ref());
    let mut body = json!({
        "seq": entry.seq,
        "prev_hash": entry.prev_hash.to_hex(),
        "hash": entry.hash.to_hex(),
        "recorded_at": entry.recorded_at.to_rfc3339(),
        "hash_valid": hash_valid,
        "event": event,
    });
    if shown {
        body["envelope"] = envelope;
    } else {
        body["redacted"] = json!(CONFIDENTIAL.iter().chain(["envelope"].iter()).collect::<Vec<_>>());
    }
    Json(body).into_response()
}

/// A seq from the path, or our JSON 400.
fn seq_of(seq: Result<Path<String>, PathRejection>) -> Result<u64, Response> {
    let seq = segment(seq)?;
    seq.parse::<u64>()
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| error(AnswerCode::InvalidSeq, format!("{:?} is not a ledger seq (a whole number from 1)", seq.chars().take(40).collect::<String>())))
}

/// A tree size from the query string, or our JSON 400.
fn size_param(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Response> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| error(AnswerCode::InvalidParameter, format!("{name} must be a whole number, not {:?}", v.chars().take(40).collect::<String>())))
        })
        .transpose()
}

/// The ledger's latest signed checkpoint.
async fn checkpoint(State(app): State<App>) -> Response {
    app.ask("ledger", subjects::CHECKPOINT_SUBJECT, json!({})).await
}

/// Entry `seq`'s inclusion proof, in the tree of `?tree_size=` entries or
/// in the latest checkpoint's (which then comes with it).
async fn proof(State(app): State<App>, seq: Result<Path<String>, PathRejection>, Query(q): Query<HashMap<String, String>>) -> Response {
    let seq = match seq_of(seq) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = json!({"seq": seq});
    match size_param(&q, "tree_size") {
        Ok(Some(n)) => body["tree_size"] = json!(n),
        Ok(None) => {}
        Err(r) => return r,
    }
    app.ask("ledger", subjects::PROOF_SUBJECT, body).await
}

/// The proof that the tree of `?from=` entries is a prefix of `?to=`'s.
async fn consistency(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let (from, to) = match (size_param(&q, "from"), size_param(&q, "to")) {
        (Ok(Some(f)), Ok(Some(t))) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
        _ => return error(AnswerCode::MissingParameter, "consistency needs ?from=SIZE&to=SIZE"),
    };
    app.ask("ledger", subjects::CONSISTENCY_SUBJECT, json!({"from": from, "to": to})).await
}

/// Most lots and actors one map request names.
const MAX_MAP_SUBJECTS: usize = 2_000;

/// The lot map's heads of the lots and actors named in the body
/// (`{"lots": [..], "actors": [..]}`, with `"at": SIZE` for a checkpoint
/// handed out with a map proof in the last two minutes), proven against
/// the latest checkpoint: how a certificate's holder learns whether
/// anything happened to its lots since. Public: a head says how many
/// entries act on a lot, never what they say.
async fn map(State(app): State<App>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        #[serde(default)]
        lots: Vec<String>,
        #[serde(default)]
        actors: Vec<String>,
        at: Option<u64>,
    }
    let ask: Ask = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(AnswerCode::BadRequest, format!("the body is {{\"lots\": [..], \"actors\": [..], \"at\"?: SIZE}}: {e}")),
    };
    if ask.lots.len() + ask.actors.len() > MAX_MAP_SUBJECTS || ask.lots.len() + ask.actors.len() == 0 {
        return error(AnswerCode::InvalidParameter, format!("name 1 to {MAX_MAP_SUBJECTS} lots and actors"));
    }
    // Heads as of the newest checkpoint the ledger's witnesses cosigned
    // (a fresh one when it has none).
    let mut body = json!({"lots": ask.lots, "actors": ask.actors, "witnessed": true});
    if let Some(at) = ask.at {
        body["at"] = json!(at);
    }
    app.ask("ledger", subjects::PROOF_SUBJECT, body).await
}

/// How long a submission over HTTP waits for the ledger's answer; past it,
/// 504 and the same bytes may be sent again (an event id makes a retry
/// harmless: the first receipt comes back).
const SUBMISSION_WAIT: Duration = Duration::from_secs(30);

/// `POST /v1/submissions`: a DSSE envelope (`application/json`), or a
/// batch of them one per line (`application/x-ndjson`, at most 1,000), put
/// on the signer's submission subject exactly as a producer over NATS
/// would; the ledger's reply is the body, byte for byte. The envelope's
/// signature is what authenticates it, as on NATS: the ledger checks it,
/// the signer's registration and its quota.
async fn submissions(State(app): State<App>, headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Response {
    let batch = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/x-ndjson"));
    let first = if batch { body.split(|b| *b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or_default() } else { &body[..] };
    let subject = subjects::submit(&subjects::signer(first));
    let mut nats_headers = async_nats::HeaderMap::new();
    if batch {
        nats_headers.insert(subjects::HDR_BATCH, subjects::BATCH_NDJSON);
    }
    let asked = app.nats.request_with_headers(subject, nats_headers, body);
    let reply = match tokio::time::timeout(SUBMISSION_WAIT, asked).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
            return error(AnswerCode::Unavailable, "no ledger is taking submissions now; send the same bytes again shortly");
        }
        Ok(Err(e)) => return error(AnswerCode::Unavailable, format!("the submission could not be sent to the ledger: {e}")),
        Err(_) => return error(AnswerCode::Timeout, "the ledger did not answer in time; send the same bytes again (the first receipt comes back)"),
    };
    // A refusal (of one envelope, or of a whole batch) is 422, a quota's
    // 429 with Retry-After; an answer to a batch, every outcome in it, 200.
    let refusal = serde_json::from_slice::<custody_proto::Refusal>(&reply.payload).ok();
    let status = match &refusal {
        Some(r) if r.code == custody_proto::Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::OK,
    };
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], reply.payload).into_response();
    if let Some(ms) = refusal.and_then(|r| r.retry_after_ms) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

/// Verifies the committed stream incrementally: each entry is checked once
/// by this gateway, however many ask, and a request costs the entries
/// committed since the last one. Concurrent requests queue on the lock and
/// the later ones find the work done.
async fn verify(State(app): State<App>) -> Response {
    let bad = |b: &custody_audit::verify::Bad| Json(json!({"ok": false, "seq": b.seq, "error": b.why})).into_response();
    let mut verified = app.verified.lock().await;
    let checker = match &mut *verified {
        Verified::Bad(b) => return bad(b),
        Verified::Good(checker) => checker,
    };
    let before = match checker.head() {
        Ok(h) => h.map_or(0, |h| h.0),
        Err(b) => return bad(&b),
    };
    let reader = custody_wire::follow::Reader::ledger(&app.nats);
    match custody_audit::verify::extend_stream(&reader, checker).await {
        Ok(Ok(head)) => {
            let (seq, hash) = head.map_or((0, String::new()), |(s, h)| (s, h.to_hex()));
            Json(
                json!({"ok": true, "entries": seq, "head": hash, "verified_through": {"seq": seq, "hash": hash}, "newly_verified": seq.saturating_sub(before)}),
            )
            .into_response()
        }
        Ok(Err(b)) => {
            let answer = bad(&b);
            *verified = Verified::Bad(b);
            answer
        }
        Err(e) => error(AnswerCode::Unavailable, format!("the committed stream cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidential_fields_go_only_to_regulators_and_parties() {
        let event = json!({"kind": "exported", "actor": "UEXPORTER", "to": "UIMPORTER", "lots": ["L1"],
            "certificate": {"number": "RU-1", "value_usd": "1000.00"}});
        let caller = |key: &str, regulator: bool| Some(Caller { key: key.into(), regulator });
        // (who asks, sees everything)
        let table: Vec<(&str, Option<Caller>, bool)> = vec![
            ("nobody (unsigned)", None, false),
            ("a stranger", caller("USTRANGER", false), false),
            ("the exporter", caller("UEXPORTER", false), true),
            ("the consignee", caller("UIMPORTER", false), true),
            ("a regulator", caller("UREGULATOR", true), true),
        ];
        for (who, c, sees) in table {
            let mut e = event.clone();
            assert_eq!(confidential(&mut e, c.as_ref()), sees, "{who}");
            for field in ["/actor", "/to", "/certificate/value_usd"] {
                assert_eq!(e.pointer(field).is_some(), sees, "{who}: {field} in {e}");
            }
            // What is not confidential stays for everyone.
            assert_eq!(e["lots"], json!(["L1"]), "{who}");
            assert_eq!(e["certificate"]["number"], "RU-1", "{who}");
        }
    }

    #[test]
    fn every_answer_code_has_one_status() {
        use AnswerCode::*;
        let table = [
            (UnknownLot, 404),
            (BadCredentials, 401),
            (ActorRevoked, 403),
            (NotPermitted, 403),
            (Timeout, 504),
            (Unavailable, 503),
            (Internal, 502),
            (InvalidDate, 400),
        ];
        for (code, want) in table {
            assert_eq!(status(code).as_u16(), want, "{code:?}");
        }
    }
}
