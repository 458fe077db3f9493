//! Fair shares of expensive work: one queue per client, served in turn.
//!
//! A certificate check, a proof or a genealogy costs the service far more
//! than asking for it costs the asker, and anyone may ask. Work therefore
//! waits in a queue of its own client (a signed identity, or a source
//! address for unsigned callers: see [`crate::query::asker_of`]), and the
//! workers take one job from each client with work in turn. A client that
//! floods fills only its own queue: past [`Limits::per_client`] waiting
//! jobs it is refused at once, and everyone else's job waits at most one
//! job per other client. A job that waited longer than
//! [`Limits::max_wait`] is not done but answered "unavailable" (its asker
//! has stopped waiting by then).
//!
//! [`Fair`] is the pure queue; [`Pool`] runs it with a few workers.
//!
//! *Invariant: a client's refusals and waits depend on its own queue and
//! on how many clients have work, never on how much work any one other
//! client sends.*

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much may wait, for each client and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs one client may have waiting.
    pub per_client: usize,
    /// Jobs waiting in all (so that many clients cannot fill memory).
    pub total: usize,
    /// Longest a job waits before it is answered "unavailable" undone.
    pub max_wait: Duration,
}

/// Why a job was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("you already have {0} requests of this kind waiting; wait for their answers")]
    Client(usize),
    #[error("{0} requests of this kind are waiting; try again in a moment")]
    Total(usize),
}

/// One queue per client, taken from in turn.
#[derive(Debug)]
pub struct Fair<J> {
    limits: Limits,
    queues: HashMap<String, VecDeque<(Instant, J)>>,
    /// Clients with waiting jobs, in the order they are served.
    turn: VecDeque<String>,
    waiting: usize,
}

impl<J> Fair<J> {
    pub fn new(limits: Limits) -> Fair<J> {
        Fair { limits, queues: HashMap::new(), turn: VecDeque::new(), waiting: 0 }
    }

    /// Queues `job` of `client`, asked at `now`.
    pub fn push(&mut self, client: &str, job: J, now: Instant) -> Result<(), Full> {
        let mine = self.queues.get(client).map_or(0, VecDeque::len);
        if mine >= self.limits.per_client {
            return Err(Full::Client(mine));
        }
        if self.waiting >= self.limits.total {
            return Err(Full::Total(self.waiting));
        }
        if mine == 0 {
            self.turn.push_back(client.to_owned());
        }
        self.queues.entry(client.to_owned()).or_default().push_back((now, job));
        self.waiting += 1;
        Ok(())
    }

    /// The next client's oldest job, with how long it waited by `now`.
    pub fn pop(&mut self, now: Instant) -> Option<(J, Duration)> {
        let client = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&client)?;
        let (asked, job) = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&client);
        } else {
            self.turn.push_back(client);
        }
        self.waiting -= 1;
        Some((job, now.saturating_duration_since(asked)))
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }
}

/// What a worker is given: a job to do, or one that waited too long.
pub enum Turn<J> {
    Go(J),
    TooLate(J, Duration),
}

/// A [`Fair`] queue served by a fixed number of tokio workers.
pub struct Pool<J> {
    queue: Arc<Mutex<Fair<J>>>,
    ready: Arc<tokio::sync::Notify>,
}

impl<J> Clone for Pool<J> {
    fn clone(&self) -> Pool<J> {
        Pool { queue: self.queue.clone(), ready: self.ready.clone() }
    }
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `workers` workers, each handing one job at a time to `work`;
    /// they live as long as the runtime, like the service that owns them.
    pub fn start<F, Fut>(workers: usize, limits: Limits, work: F) -> Pool<J>
    where
        F: Fn(Turn<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let pool = Pool { queue: Arc::new(Mutex::new(Fair::new(limits))), ready: Arc::new(tokio::sync::Notify::new()) };
        let work = Arc::new(work);
        for _ in 0..workers.max(1) {
            let (pool, work) = (pool.clone(), work.clone());
            tokio::spawn(async move {
                loop {
                    let next = pool.lock().pop(Instant::now());
                    match next {
                        Some((job, waited)) if waited > limits.max_wait => work(Turn::TooLate(job, waited)).await,
                        Some((job, _)) => work(Turn::Go(job)).await,
                        None => pool.ready.notified().await,
                    }
                }
            });
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fair<J>> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `job` for `client`, or says why not (the caller answers at once).
    pub fn offer(&self, client: &str, job: J) -> Result<(), Full> {
        self.lock().push(client, job, Instant::now())?;
        // A permit is kept if no worker is waiting, so none is missed.
        self.ready.notify_one();
        Ok(())
    }
}

/// A request waiting in a [`Pool`]: what was asked, and where the answer goes.
pub struct Asked {
    pub subject: String,
    pub payload: bytes::Bytes,
    reply: async_nats::Subject,
}

impl Asked {
    /// Sends `answer`, or `answer_too_large` when it would not fit in a
    /// NATS message (the server would drop it and the asker time out).
    pub async fn answer(self, client: &async_nats::Client, answer: &serde_json::Value) {
        let body = crate::query::within_limit(answer.to_string(), client.server_info().max_payload);
        let _ = client.publish(self.reply, body.into()).await;
    }
}

/// The answer to a question that waited `waited` for its turn: not done.
pub fn too_late(waited: Duration) -> serde_json::Value {
    let why = format!("too many questions are waiting here ({} s in line); try again in a moment", waited.as_secs());
    crate::query::error_answer(crate::query::AnswerCode::Unavailable, why)
}

/// A pool of `workers` that answer each question with `answer` (blocking
/// work, so off the runtime's threads), hand the answer to `after` with
/// the time it took (to count it, or act on it), and send what `after`
/// gives back; a question that waited too long is answered [`too_late`].
pub fn answering<A, H, F>(client: &async_nats::Client, workers: usize, limits: Limits, answer: A, after: H) -> Pool<Asked>
where
    A: Fn(&str, &[u8]) -> serde_json::Value + Send + Sync + 'static,
    H: Fn(String, serde_json::Value, Duration) -> F + Send + Sync + 'static,
    F: Future<Output = serde_json::Value> + Send + 'static,
{
    let (client, answer, after) = (client.clone(), Arc::new(answer), Arc::new(after));
    Pool::start(workers, limits, move |turn: Turn<Asked>| {
        let (client, answer, after) = (client.clone(), answer.clone(), after.clone());
        async move {
            let (asked, value) = match turn {
                Turn::TooLate(asked, waited) => (asked, too_late(waited)),
                Turn::Go(asked) => {
                    let started = Instant::now();
                    let (subject, payload) = (asked.subject.clone(), asked.payload.clone());
                    let value = tokio::task::spawn_blocking(move || answer(&subject, &payload))
                        .await
                        .unwrap_or_else(|_| crate::query::error_answer(crate::query::AnswerCode::Internal, "the answer failed"));
                    let value = after(asked.subject.clone(), value, started.elapsed()).await;
                    (asked, value)
                }
            };
            asked.answer(&client, &value).await;
        }
    })
}

/// Queues each request of `requests` under its asker
/// ([`crate::query::asker_of`]) in `pools[choose(subject)]`; one the pool
/// refuses is answered `unavailable` at once, saying why. Ends with
/// `requests`.
pub async fn queue(
    client: &async_nats::Client,
    mut requests: impl futures::Stream<Item = async_nats::Message> + Unpin,
    pools: &[Pool<Asked>],
    choose: impl Fn(&str) -> usize,
) {
    use futures::StreamExt as _;
    while let Some(msg) = requests.next().await {
        let asker = crate::query::asker_of(&msg);
        let Some(reply) = msg.reply else { continue };
        let Some(pool) = pools.get(choose(msg.subject.as_str())) else { continue };
        let asked = Asked { subject: msg.subject.to_string(), payload: msg.payload, reply: reply.clone() };
        if let Err(full) = pool.offer(&asker, asked) {
            let busy = crate::query::error_answer(crate::query::AnswerCode::Unavailable, full.to_string());
            let _ = client.publish(reply, busy.to_string().into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { per_client: 4, total: 10, max_wait: Duration::from_secs(4) };

    #[test]
    fn a_flood_fills_only_its_own_queue_and_others_go_next() {
        let now = Instant::now();
        let mut fair = Fair::new(LIMITS);
        for i in 0..4 {
            fair.push("flood", i, now).unwrap();
        }
        assert_eq!(fair.push("flood", 99, now), Err(Full::Client(4)));
        fair.push("quiet", 100, now).unwrap();
        // One of the flood's, then the quiet client's, whatever the flood holds.
        assert_eq!(fair.pop(now).map(|j| j.0), Some(0));
        assert_eq!(fair.pop(now).map(|j| j.0), Some(100));
        let rest: Vec<i32> = std::iter::from_fn(|| fair.pop(now).map(|j| j.0)).collect();
        assert_eq!(rest, [1, 2, 3]);
        assert!(fair.is_empty());
    }

    #[test]
    fn many_clients_cannot_queue_past_the_total() {
        let now = Instant::now();
        let mut fair = Fair::new(LIMITS);
        for i in 0..10 {
            fair.push(&format!("c{i}"), i, now).unwrap();
        }
        assert_eq!(fair.push("late", 10, now), Err(Full::Total(10)));
        assert_eq!(fair.len(), 10);
    }

    #[test]
    fn the_wait_is_reported() {
        let now = Instant::now();
        let mut fair = Fair::new(LIMITS);
        fair.push("a", 1, now).unwrap();
        assert_eq!(fair.pop(now + Duration::from_secs(5)), Some((1, Duration::from_secs(5))));
    }

    #[tokio::test]
    async fn the_pool_does_each_job_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let limits = Limits { per_client: 100, total: 100, max_wait: Duration::from_secs(60) };
        let pool = Pool::start(2, limits, move |turn: Turn<u32>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(match turn {
                    Turn::Go(j) => (j, true),
                    Turn::TooLate(j, _) => (j, false),
                });
            }
        });
        for j in 0..20 {
            pool.offer(&format!("c{}", j % 3), j).unwrap();
        }
        let mut seen: Vec<u32> = Vec::new();
        for _ in 0..20 {
            let (j, done) = rx.recv().await.unwrap();
            assert!(done, "job {j} was done, not refused");
            seen.push(j);
        }
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
