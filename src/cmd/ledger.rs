use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use custody_proto::ActorKey;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the ledger's store.
    #[arg(long, global = true, default_value = "data/ledger")]
    data: PathBuf,
    /// Genesis authority: a public key (U...) or a seed file.
    #[arg(long, global = true, env = "CUSTODY_AUTHORITY")]
    authority: Option<String>,
    /// Seconds between signed checkpoints while entries arrive.
    #[arg(long, default_value_t = 10.0)]
    checkpoint_every: f64,
    /// TEST SWITCH, never for a real ledger: read the ledger's clock (RFC
    /// 3339) from FILE at each batch, so that tests can record events on
    /// time at past dates; the system clock while FILE is absent.
    #[arg(long, value_name = "FILE")]
    test_clock_file: Option<PathBuf>,
    /// Seconds this replica's clock may be off the NATS servers' (read
    /// from the lease's own writes) before it stops writing: a fast clock
    /// would record entries in the future and move grandfathering
    /// verdicts. Default 60; not checked with --test-clock-file unless
    /// given; 0: not checked.
    #[arg(long, value_name = "SECONDS")]
    max_clock_skew: Option<f64>,
    /// Servers holding each custody stream: 1 on one machine, 3 on a
    /// three-server cluster (a receipt then waits for two of them).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Seconds the writer lease outlives its holder's last renewal: how
    /// long a standby waits after the writer dies before it takes over.
    #[arg(long, default_value_t = 4.0)]
    lease_ttl: f64,
    /// This replica's name in the writer lease (default: its host and data
    /// folder). Unique per store: a replica restarted under its own name
    /// takes its lease back at once.
    #[arg(long)]
    name: Option<String>,
    /// The log's name in its checkpoint notes (C2SP origin), e.g.
    /// `ledger.custody.example`; default `custody/` and the ledger's key.
    #[arg(long, global = true)]
    origin: Option<String>,
    /// A witness that cosigns each checkpoint, as `VKEY=URL` (its C2SP
    /// verifier key, printed by `custody witness key`, and its base URL).
    /// Repeatable. With witnesses, certificates stand on cosigned
    /// checkpoints only.
    #[arg(long = "witness", value_name = "VKEY=URL")]
    witnesses: Vec<String>,
    /// Each actor's sustained submissions a second (its token bucket's
    /// rate); over it, `rate_limited` with when to retry. 0: no quota.
    /// The genesis authority is never limited.
    #[arg(long, default_value_t = 200.0)]
    actor_rate: f64,
    /// Submissions an actor may send at once after a quiet spell.
    #[arg(long, default_value_t = 20_000)]
    actor_burst: u32,
    /// A role's own quota, as `ROLE=RATE/BURST` (`miner=50/5000`);
    /// repeatable. An actor gets the most generous of its roles' quotas,
    /// or --actor-rate/--actor-burst when none of its roles has one.
    #[arg(long = "role-quota", value_name = "ROLE=RATE/BURST")]
    role_quotas: Vec<String>,
    #[command(flatten)]
    ops: custody::ops::OpsArgs,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Open the store offline, as a start would: check the hash chain over
    /// every entry, verify signatures (on every core) and replay events
    /// after the saved write model's mark (all of them without one), then
    /// save the write model so the next start verifies only what follows.
    /// Prints the head and the state's digest. Run it with the ledger
    /// stopped; a store that does not check is refused (exit 1).
    Check {
        /// One JSON object instead of sentences.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a damaged or lost store from the committed stream,
    /// re-verifying every entry; the old store is moved aside.
    Recover,
    /// Print the ledger's public key (N...), which signs its checkpoints.
    /// Give it to auditors. A folder without one is refused (a wrong
    /// --data would print a brand-new key nobody should trust), unless
    /// --create makes it, for a new ledger.
    Key {
        #[arg(long)]
        create: bool,
    },
    /// Print the ledger's C2SP verifier key (origin+id+base64), the one a
    /// witness is configured with (`custody witness --log`); refused as
    /// `key` is when the folder has no key, unless --create (before a new
    /// ledger's first start, to configure its witnesses).
    Vkey {
        #[arg(long)]
        create: bool,
    },
}

/// The ledger's signing key in `data`: loaded, or made with `create`;
/// a folder without one is refused, saying why.
fn signing_key(data: &std::path::Path, create: bool) -> anyhow::Result<nkeys::KeyPair> {
    let file = data.join(custody_ledger::notary::KEY_FILE);
    if create || file.exists() {
        return Ok(custody_ledger::notary::load_or_create_key(data)?);
    }
    anyhow::bail!(
        "{} has no ledger signing key ({}): is --data the ledger's own folder? A new ledger makes one when it starts, or with `custody ledger --data {} key --create`; never hand auditors a key made here by mistake",
        data.display(),
        file.display(),
        data.display()
    )
}

/// The genesis authority from a public key or a key file.
pub fn authority(arg: &str) -> anyhow::Result<ActorKey> {
    let key = custody::keys::public_key_of(arg).context("--authority")?;
    key.parse().map_err(|e: String| anyhow::anyhow!("--authority: {e}"))
}

pub async fn run(nats: &str, a: Args) -> anyhow::Result<ExitCode> {
    if let Some(Action::Key { create }) = a.action {
        println!("{}", signing_key(&a.data, create)?.public_key());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Action::Vkey { create }) = a.action {
        let key = signing_key(&a.data, create)?.public_key();
        let origin = a.origin.clone().unwrap_or_else(|| custody_ledger::notary::default_origin(&key));
        println!("{}", custody_proto::note::NoteKey::from_nkey(&origin, custody_proto::note::ED25519, &key)?.vkey());
        return Ok(ExitCode::SUCCESS);
    }
    let authority = authority(a.authority.as_deref().context("--authority (or CUSTODY_AUTHORITY) is needed")?)?;
    match a.action {
        Some(Action::Check { json }) => return check(&a.data, &authority, json),
        None => {
            let mut config = custody_ledger::Config::new(nats, a.data, authority);
            config.nkey = custody::client::identity();
            config.max_clock_skew = match (a.max_clock_skew, a.test_clock_file.is_some()) {
                (Some(0.0), _) => None,
                (Some(s), _) => {
                    anyhow::ensure!(s > 0.0 && s.is_finite(), "--max-clock-skew must be a number of seconds (0: not checked)");
                    Some(std::time::Duration::from_secs_f64(s))
                }
                (None, true) => None,
                (None, false) => Some(std::time::Duration::from_secs(60)),
            };
            if let Some(file) = a.test_clock_file {
                tracing::warn!(file = %file.display(), "test clock: recorded_at is read from this file; never use this for a real ledger");
                config.clock = custody_ledger::clock::Clock::from_file(file);
            }
            anyhow::ensure!(a.checkpoint_every > 0.0 && a.checkpoint_every.is_finite(), "--checkpoint-every must be a positive number of seconds");
            config.checkpoint_every = std::time::Duration::from_secs_f64(a.checkpoint_every);
            anyhow::ensure!(a.lease_ttl >= 1.0 && a.lease_ttl.is_finite(), "--lease-ttl must be at least 1 second");
            config.lease_ttl = std::time::Duration::from_secs_f64(a.lease_ttl);
            anyhow::ensure!(matches!(a.replicas, 1..=5), "--replicas must be between 1 and 5");
            config.replicas = a.replicas;
            config.origin = a.origin;
            anyhow::ensure!(a.actor_rate >= 0.0 && a.actor_rate.is_finite(), "--actor-rate must be a number of submissions a second (0: no quota)");
            anyhow::ensure!(a.actor_burst >= 1, "--actor-burst must be at least 1");
            let mut roles = Vec::new();
            for q in &a.role_quotas {
                let (role, limits) = q.split_once('=').with_context(|| format!("--role-quota {q}: give ROLE=RATE/BURST"))?;
                let role: custody_proto::Role =
                    serde_json::from_value(serde_json::json!(role)).map_err(|_| anyhow::anyhow!("--role-quota {q}: {role:?} is not a role"))?;
                let limits = custody_ledger::quota::Limits::parse(limits).map_err(|e| anyhow::anyhow!("--role-quota {q}: {e}"))?;
                roles.push((role, limits));
            }
            let default = custody_ledger::quota::Limits { rate: a.actor_rate, burst: f64::from(a.actor_burst) };
            config.quota = (a.actor_rate > 0.0).then_some(custody_ledger::quota::Rates { default, roles });
            config.witnesses =
                a.witnesses.iter().map(|w| custody_ledger::cosign::WitnessPeer::parse(w)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
            if let Some(name) = a.name {
                config.health = custody_wire::health::Health::new("ledger", &name);
                config.name = name;
            }
            a.ops.start(vec![config.health.clone()], &[&config.data_dir]).await?;
            custody_ledger::run(config, super::stop_signal()).await?;
        }
        Some(Action::Key { .. } | Action::Vkey { .. }) => {}
        Some(Action::Recover) => {
            let client = custody::client::connect(nats).await?;
            let (entries, moved) = custody::backup::recover_store(&client, &a.data, &authority).await?;
            println!(
                "{}",
                serde_json::json!({
                    "recovered": entries,
                    "store": a.data.display().to_string(),
                    "old_store_moved_to": moved.map(|p| p.display().to_string()),
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `custody ledger check`: what a start checks, offline; saves the state.
fn check(data: &std::path::Path, authority: &ActorKey, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(data.exists(), "{} does not exist: is --data the ledger's folder?", data.display());
    let started = std::time::Instant::now();
    let mut ledger = match custody_ledger::ledger::Ledger::open(data, authority) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("The store at {} does not check: {e}. A ledger would refuse to start on it.", data.display());
            return Ok(ExitCode::from(1));
        }
    };
    let checked_s = started.elapsed().as_secs_f64();
    let resumed = ledger.mark().map(|m| m.0);
    let replayed = ledger.replayed();
    let saved = ledger.save().context("cannot save the write model")?;
    let (head, hash) = ledger.head().map_or((0, String::new()), |(s, h)| (s, h.to_hex()));
    // The digest hashes the whole lot map (as a writer's first checkpoint
    // after a start does) and encodes the whole model: timed apart.
    let digested = std::time::Instant::now();
    let digest = ledger.digest().to_hex();
    let digest_s = digested.elapsed().as_secs_f64();
    if json {
        let out = serde_json::json!({"head": head, "hash": hash, "resumed_from": resumed, "replayed": replayed, "digest": digest, "saved": saved, "seconds": checked_s, "digest_s": digest_s,
            "peak_rss_mb": custody::ops::resident_kb("VmHWM").map(|k| k / 1024)});
        println!("{out}");
    } else {
        let from = resumed.map_or("no saved write model: every entry".to_owned(), |m| format!("the saved write model at entry {m}, then {replayed} entries"));
        println!("The store at {} checks: {head} entries, the hash chain whole; signatures verified from {from}, in {checked_s:.1} s.", data.display());
        println!("State digest {digest}.");
        println!(
            "{}",
            if saved {
                format!("Saved the write model at entry {head}: the next start verifies only what follows.")
            } else {
                "The saved write model was already current.".to_owned()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
