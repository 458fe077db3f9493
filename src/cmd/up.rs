//! `custody up`: everything on one machine with embedded defaults. Starts a
//! nats-server on a free loopback port (JetStream under the data folder),
//! the ledger, the projection and the HTTP gateway, and on an empty ledger
//! submits the demo supply chain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use custody::natsd::{NatsCluster, NatsServer, Setup};
use custody::{client, demo, keys};
use custody_proto::Outcome;
use custody_wire::health::Health;

#[derive(clap::Args)]
pub struct Args {
    /// Data folder: NATS's JetStream, the ledger store and keys live here.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Genesis authority key file; created as DIR/authority.nk when absent.
    #[arg(long)]
    authority: Option<PathBuf>,
    /// Do not submit the demo supply chain.
    #[arg(long)]
    no_demo: bool,
    /// Rounds of the simulated world submitted after the worked example
    /// (about 120 stones each; 0 for none).
    #[arg(long, default_value_t = 5)]
    simulate: u32,
    /// Stop after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    exit_after_demo: bool,
    /// Where the HTTP gateway listens (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: std::net::SocketAddr,
    #[command(flatten)]
    http_limits: super::gateway::HttpArgs,
    #[command(flatten)]
    actors: super::authz::ActorsArgs,
    /// Run a JetStream cluster of this many nats-servers (3) on this
    /// machine instead of one: every custody stream on all three, two
    /// ledger replicas (a writer and a standby), two projections.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=3))]
    cluster: Option<u8>,
    /// Run NATS without authorization (anyone on loopback may publish
    /// anything; the ledger still checks every signature).
    #[arg(long)]
    no_auth: bool,
    /// Where Prometheus metrics (/metrics) and health (/healthz, /readyz)
    /// of every service here are served (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    ops: std::net::SocketAddr,
    /// Start from a backup (`custody backup --out`) on an empty data
    /// folder: audited, then restored before the ledger starts.
    #[arg(long, value_name = "BACKUP", requires = "ledger_key")]
    restore: Option<PathBuf>,
    /// With --restore: the ledger's signing key file, which must be the
    /// key the backup is signed with (pass the genesis authority's key
    /// file with --authority too).
    #[arg(long, value_name = "FILE")]
    ledger_key: Option<PathBuf>,
}

/// A service's NATS login in up's folder: `<name>-login.nk`, never to be
/// taken for the ledger's signing key (`ledger.nk` in its data folder).
fn login_file(service_dir: &Path, name: &str) -> PathBuf {
    service_dir.join(format!("{name}-login.nk"))
}

/// How long `up` waits for its services to stop after the first SIGTERM or
/// SIGINT before it exits anyway (its nats-server dies with it).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(a: Args, nats: Option<&str>) -> anyhow::Result<ExitCode> {
    // The first signal starts an orderly stop, whatever `up` is doing
    // (starting, serving, or waiting on a nats-server that died); if that
    // has not ended the process within STOP_GRACE, it exits.
    let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::stop_signal().await;
        let _ = signalled_tx.send(true);
        tokio::time::sleep(STOP_GRACE).await;
        eprintln!("custody up: the services did not stop within {} s of the signal; exiting", STOP_GRACE.as_secs());
        std::process::exit(1);
    });
    let nats_port = match nats {
        Some(url) => Some(port_of(url)?),
        None => None,
    };
    serve(a, nats_port, signalled).await
}

/// The port of the first URL of `--nats` (up's server listens there).
fn port_of(url: &str) -> anyhow::Result<u16> {
    let first = url.split(',').next().unwrap_or_default().trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let port = rest.rsplit_once(':').map(|(_, p)| p.trim_end_matches('/'));
    port.and_then(|p| p.parse().ok()).with_context(|| format!("--nats {url:?}: custody up listens on loopback at this URL's port; give nats://127.0.0.1:PORT"))
}

/// The port the last `up` in this folder used for something, if it is
/// still free; else none (a free one is found), said once.
fn again(what: &str, stored: Option<u16>) -> Option<u16> {
    let p = stored?;
    if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
        Some(p)
    } else {
        println!("{what}: port {p}, used at the last start in this folder, is taken now; using another");
        None
    }
}

async fn serve(mut a: Args, nats_port: Option<u16>, mut signalled: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.data).with_context(|| format!("cannot create {}", a.data.display()))?;
    // The same ports as the last start in this folder, where still free
    // (and where none was asked for), so that addresses stay put.
    let last_ports = match custody::context::Stored::read(&a.data) {
        Ok(last) => last.map(|c| c.ports).unwrap_or_default(),
        Err(e) => {
            println!("{e:#}: starting on new ports");
            custody::context::Ports::default()
        }
    };
    if a.http.port() == 0 {
        if let Some(p) = again("the page", last_ports.http) {
            a.http.set_port(p);
        }
    }
    if a.ops.port() == 0 {
        if let Some(p) = again("metrics", last_ports.ops) {
            a.ops.set_port(p);
        }
    }
    let authority_path = a.authority.clone().unwrap_or_else(|| a.data.join("authority.nk"));
    let authority = keys::load_or_create(&authority_path)?;
    let servers = usize::from(a.cluster.unwrap_or(1));
    // One ledger on one server; a writer and a standby on a cluster, each
    // with its own store, signing with the one ledger key auditors trust.
    let ledger_dirs: Vec<PathBuf> = if servers == 1 { vec![a.data.join("ledger")] } else { (1..=2).map(|i| a.data.join(format!("ledger-{i}"))).collect() };
    let backup = match &a.restore {
        Some(from) => {
            let checked = custody::backup::check(from, None)?;
            let m = &checked.manifest;
            anyhow::ensure!(
                m.authority == authority.public_key(),
                "the backup's genesis authority is {}; pass its key file with --authority (this one is {})",
                m.authority,
                authority.public_key()
            );
            let key_file = a.ledger_key.as_deref().context("--restore needs --ledger-key")?;
            super::backup::install_ledger_key(key_file, &ledger_dirs[0], &m.ledger_key)?;
            println!("backup {} audited: {} entries, root {}", from.display(), m.tree_size, m.root);
            Some(checked)
        }
        None => None,
    };
    let ledger_key = custody_ledger::notary::key_for_replicas(&ledger_dirs)?;

    // One nkey per service; the actors' keys come from the registry.
    let service_dir = a.data.join("keys/services");
    let service = |name: &str| -> anyhow::Result<(String, String)> {
        // `<name>-login.nk`: a NATS login, never to be taken for the
        // ledger's signing key (`ledger.nk` in its data folder). A folder
        // from before the rename keeps its keys.
        let file = login_file(&service_dir, name);
        let old = service_dir.join(format!("{name}.nk"));
        if !file.exists() && old.exists() {
            std::fs::rename(&old, &file).with_context(|| format!("cannot rename {} to {}", old.display(), file.display()))?;
        }
        let k = keys::load_or_create(&file)?;
        Ok((k.public_key(), k.seed().map_err(|e| anyhow::anyhow!("{e}"))?))
    };
    let (ledger_id, projection_id, gateway_id, authz_id, operator_id) =
        (service("ledger")?, service("projection")?, service("gateway")?, service("authz")?, service("operator")?);
    let services = custody_authz::Services {
        ledger: vec![ledger_id.0.clone()],
        projection: vec![projection_id.0.clone()],
        gateway: vec![gateway_id.0.clone()],
        authz: vec![authz_id.0.clone()],
        operator: vec![operator_id.0.clone()],
    };
    let seed = |id: &(String, String)| (!a.no_auth).then(|| id.1.clone());

    let auth_file = a.data.join("nats-auth.conf");
    if !a.no_auth {
        let bootstrap = custody_authz::Config {
            nats_url: String::new(),
            nkey: None,
            genesis: authority.public_key(),
            services: services.clone(),
            config_file: auth_file.clone(),
            nats_pid_files: Vec::new(),
            actors: a.actors.limits()?,
        };
        // Services and the genesis authority only, until authz has read
        // the registry off the ledger (a moment after start).
        custody_authz::service::write(&bootstrap, &custody_authz::Registry::new(&authority.public_key()))?;
    }
    let auth = (!a.no_auth).then_some(auth_file.as_path());
    let nats = if servers == 1 {
        let port = nats_port.or_else(|| again("NATS", last_ports.nats));
        let leaf_port = again("edges' leaf node port", last_ports.leaf).unwrap_or(0);
        let setup = Setup { include: auth.map(Path::to_path_buf), leaf_port: Some(leaf_port), port, ..Setup::default() };
        let server = NatsServer::start_as(&a.data.join("nats"), setup)?;
        NatsCluster { servers: vec![server] }
    } else {
        if nats_port.is_some() {
            println!(
                "--nats names one server's port; the {servers} servers of --cluster take free ports (printed below, and kept in {})",
                a.data.join(custody::context::FILE).display()
            );
        }
        NatsCluster::start(servers, &a.data, auth)?
    };
    let nats_url = nats.url();
    let authorization = if a.no_auth { " (no authorization: --no-auth)" } else { " (nkey authorization from the actor registry)" };
    for s in &nats.servers {
        let folder = s.store_dir.display();
        println!("NATS listening on {}{authorization}; JetStream in {folder}, sync_interval: always", s.url);
    }
    let leaves: Vec<&str> = nats.servers.iter().filter_map(|s| s.leaf_url.as_deref()).collect();
    let leaves_text = (!leaves.is_empty()).then(|| leaves.join(","));
    println!("edges connect with: custody edge --hub {} --key ACTOR.nk --data DIR", leaves.join(","));
    if servers > 1 {
        println!("  one JetStream cluster of {servers} servers: every custody stream on all of them, a receipt once two hold the entry");
    }
    // A nats-server that ends is started again on its port and folder
    // (authz finds it by its pid file); all stop when up does.
    let pid_files = nats.pid_files();
    let first_server = (nats.servers[0].port, nats.servers[0].leaf_url.as_deref().and_then(|u| port_of(u).ok()));
    let _nats = nats.keep(|said| {
        tracing::warn!("{said}");
        println!("{said}");
    })?;
    println!("genesis authority {} (key file {})", authority.public_key(), authority_path.display());
    println!("ledger key {} (signs checkpoints; audit with: custody audit --key {})", ledger_key.public_key(), ledger_key.public_key());

    if let Some(backup) = &backup {
        let client = custody_wire::connect::connect(&nats_url, "custody-restore", seed(&ledger_id).as_deref()).await?;
        let entries = custody::backup::restore(&client, backup, &ledger_dirs[0], servers).await?;
        println!("restored {entries} entries onto the committed stream and into {}", ledger_dirs[0].display());
    }

    // Each service's health, by the name it has in this process; the ops
    // listener serves them all, with the metrics.
    let names = |kind: &str| -> Vec<String> {
        if servers == 1 {
            vec![kind.to_owned()]
        } else {
            (1..=2).map(|i| format!("{kind} {i}")).collect()
        }
    };
    let ledger_health: Vec<Health> = names("ledger").iter().map(|n| Health::new("ledger", n)).collect();
    let projection_health: Vec<Health> = names("projection").iter().map(|n| Health::new("projection", n)).collect();
    let gateway_health = Health::new("gateway", "gateway");
    let authz_health = Health::new("authz", "authz");
    let mut healths: Vec<Health> = ledger_health.iter().chain(&projection_health).cloned().collect();
    healths.push(gateway_health.clone());
    if !a.no_auth {
        healths.push(authz_health.clone());
    }
    let ops = custody::ops::serve(a.ops, healths.clone()).await?;
    custody::ops::watch_disks(&[&a.data]);
    println!("{}", custody::ops::announce(ops));

    // Every service up runs, by name: the first to end is reported, and
    // up stops the others rather than run on without it.
    let mut running: tokio::task::JoinSet<(&'static str, anyhow::Result<()>)> = tokio::task::JoinSet::new();
    let (astop_tx, astop_rx) = tokio::sync::oneshot::channel::<()>();
    if !a.no_auth {
        let config = custody_authz::Config {
            nats_url: nats_url.clone(),
            nkey: seed(&authz_id),
            genesis: authority.public_key(),
            services: services.clone(),
            config_file: auth_file.clone(),
            nats_pid_files: pid_files,
            actors: a.actors.limits()?,
        };
        running.spawn(async move {
            let done = custody_authz::run(config, authz_health, async move {
                let _ = astop_rx.await;
            });
            ("authorization (authz)", done.await.map_err(anyhow::Error::from))
        });
    }

    // Each service stops when `stop` says so.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let authority_key: custody_proto::ActorKey = authority.public_key().parse().map_err(|e: String| anyhow::anyhow!(e))?;
    if servers > 1 {
        // On a cluster each replica and projection is a process of its own,
        // so that one can be killed, paused or restarted alone; up restarts
        // one that ends, and stops and reaps them all when it stops.
        let me = std::env::current_exe().context("cannot find this program to run the replicas")?;
        let key_file = |name: &str| (!a.no_auth).then(|| login_file(&service_dir, name));
        let replicas = servers.to_string();
        for (i, dir) in ledger_dirs.iter().enumerate() {
            let name: &'static str = ["ledger 1", "ledger 2"][i];
            println!("{name}: store in {} (writer or standby: whichever holds the writer lease; its own process)", dir.display());
            let args: Vec<std::ffi::OsString> = [
                "ledger".into(),
                "--nats".into(),
                nats_url.clone().into(),
                "--data".into(),
                dir.clone().into_os_string(),
                "--authority".into(),
                authority.public_key().into(),
                "--replicas".into(),
                replicas.clone().into(),
                "--name".into(),
                name.into(),
            ]
            .into();
            running.spawn(supervise(name, me.clone(), key_file("ledger"), args, stop.clone()));
        }
        for i in 0..ledger_dirs.len() {
            let dir = a.data.join(format!("projection-{}", i + 1));
            let name: &'static str = ["projection 1", "projection 2"][i];
            println!("{name}: store in {} (answers queries with the others; its own process)", dir.display());
            let args: Vec<std::ffi::OsString> = ["projection".into(), "--nats".into(), nats_url.clone().into(), "--data".into(), dir.into_os_string()].into();
            running.spawn(supervise(name, me.clone(), key_file("projection"), args, stop.clone()));
        }
        // Their health, as each process says it over NATS, for up's /readyz.
        let mirrors: Vec<(String, Health)> = ledger_health
            .iter()
            .cloned()
            .zip(["ledger 1", "ledger 2"])
            .map(|(h, n)| (n.to_owned(), h))
            .chain((0..ledger_dirs.len()).map(|i| (a.data.join(format!("projection-{}", i + 1)).display().to_string(), projection_health[i].clone())))
            .collect();
        let (mirror_url, mirror_seed) = (nats_url.clone(), seed(&operator_id));
        let mut mirror_stop = stop.clone();
        running.spawn(async move {
            let done = tokio::select! {
                done = mirror_health(&mirror_url, mirror_seed.as_deref(), mirrors) => done,
                _ = mirror_stop.wait_for(|s| *s) => Ok(()),
            };
            ("health of the child processes", done)
        });
    }
    for (i, dir) in ledger_dirs.iter().enumerate().filter(|_| servers == 1) {
        let mut config = custody_ledger::Config::new(nats_url.clone(), dir.clone(), authority_key.clone());
        config.nkey = seed(&ledger_id);
        config.replicas = servers;
        config.health = ledger_health[i].clone();
        let name: &'static str = if servers == 1 { "ledger" } else { ["ledger 1", "ledger 2"][i] };
        println!("{name}: store in {} ({})", dir.display(), if servers == 1 { "the writer" } else { "writer or standby: whichever holds the writer lease" });
        let done = custody_ledger::run(config, stopped(stop.clone()));
        running.spawn(async move { (name, done.await.map_err(anyhow::Error::from)) });
    }
    for i in (0..ledger_dirs.len()).filter(|_| servers == 1) {
        let dir = a.data.join(if servers == 1 { "projection".to_owned() } else { format!("projection-{}", i + 1) });
        let name: &'static str = if servers == 1 { "projection" } else { ["projection 1", "projection 2"][i] };
        println!("{name}: store in {} (answers queries with the others)", dir.display());
        let mut config = custody_projection::Config::new(nats_url.clone(), dir, seed(&projection_id));
        config.health = projection_health[i].clone();
        let done = custody_projection::run(config, stopped(stop.clone()));
        running.spawn(async move { (name, done.await.map_err(anyhow::Error::from)) });
    }

    let (gstop_tx, gstop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let gateway_url = nats_url.clone();
    let http_limits = within_descriptors(a.http_limits.limits()?);
    let gateway_seed = seed(&gateway_id);
    running.spawn(async move {
        let done = custody_gateway::run(
            &gateway_url,
            gateway_seed.as_deref(),
            a.http,
            http_limits,
            gateway_health,
            |addr| {
                let _ = bound_tx.send(addr);
            },
            async move {
                let _ = gstop_rx.await;
            },
        )
        .await;
        ("gateway", done.map_err(anyhow::Error::from))
    });
    let http = bound_rx.await.context("the HTTP gateway did not start")?;
    // Where everything is, for every command run from here (or with
    // --context): `custody origin S1` needs no flag.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let context = custody::context::Stored {
        nats: nats_url.clone(),
        nkey: (!a.no_auth).then(|| absolute(login_file(&service_dir, "gateway"))),
        operator_nkey: (!a.no_auth).then(|| absolute(login_file(&service_dir, "operator"))),
        authority: Some(absolute(authority_path.clone())),
        ledger_key: Some(ledger_key.public_key()),
        page: Some(format!("http://{http}/")),
        metrics: Some(format!("http://{ops}/metrics")),
        leaf: leaves_text.clone(),
        ports: custody::context::Ports {
            nats: (servers == 1).then_some(first_server.0),
            leaf: first_server.1.filter(|_| servers == 1),
            http: Some(http.port()),
            ops: Some(ops.port()),
        },
    };
    context.write(&a.data)?;
    println!("context written to {} (commands run from here, or with --context {}, use it)", a.data.join(custody::context::FILE).display(), a.data.display());

    // The demo loader submits for every actor of the demo: the operator.
    let nc = custody_wire::connect::connect(&nats_url, "custody-up", seed(&operator_id).as_deref()).await?;
    let head = wait_for_head(&nc).await?;
    println!("ledger ready at seq {head}");
    if !a.no_demo && head == 0 {
        let cast = demo::Cast::load_or_create(nkeys::KeyPair::from_seed(&authority.seed()?)?, &a.data.join("keys"))?;
        println!(
            "submitting the demo supply chain (DOMAIN.md's worked example, set in the last {} days; one late record: L6); actor keys in {}",
            demo::STORY_DAYS,
            a.data.join("keys").display()
        );
        let now = chrono::Utc::now();
        let mut events = cast.worked_example();
        events.push(cast.second_split());
        events.extend(cast.inspection());
        demo::set_in_time(&mut events, now);
        events.push(cast.late_record(now));
        for (key, payload) in events {
            let envelope = custody_proto::envelope::sign(key, payload.to_string().as_bytes())?;
            let outcome = client::submit(&nc, envelope.into()).await?;
            let kind = payload["kind"].as_str().unwrap_or("?");
            match outcome {
                Outcome::Receipt(r) => println!("  seq {:>3} {kind:<16} {} {}", r.seq, r.id, &r.hash.to_hex()[..16]),
                Outcome::Rejected(r) => println!("  refused {kind:<13} {}: {} ({})", r.id.unwrap_or_default(), r.code, r.message),
            }
        }
    }
    // The binary as the user can call it, wherever it was built.
    let me = std::env::current_exe().ok().and_then(|p| {
        let cwd = std::env::current_dir().ok()?;
        Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
    });
    let me = me.map_or_else(|| "custody".to_owned(), |p| p.display().to_string());
    if !a.no_demo && head == 0 && a.simulate > 0 {
        println!("submitting a simulated world ({} rounds, KP 2022 production mix)...", a.simulate);
        let world = super::simulate::submit(&nc, &authority, custody::sim::Size { seed: 1, rounds: a.simulate }, Some(chrono::Utc::now())).await?;
        println!("  {} events; stones worth a look:", world.events.len());
        println!("    http://{http}/?lot={}  (Botswana only, clean)", world.clean);
        println!("    http://{http}/?lot={}  (partly Russian: prohibited under us-2024)", world.prohibited);
        println!("    http://{http}/?lot={}  (declared, origin unknown: undetermined)", world.undetermined);
    }
    println!("\nthe page: http://{http}/?lot=S1  (API: http://{http}/v1/openapi.json)");
    if !a.no_demo {
        println!("  a step recorded a month after it happened (a late record): http://{http}/?lot=L6");
    }
    // Commands find the context in ./data by themselves; elsewhere they
    // are told where it is.
    if a.data == Path::new(custody::context::DEFAULT_DIR) {
        println!("try, in another terminal, from this folder (commands find {}):", a.data.join(custody::context::FILE).display());
    } else {
        println!("try, in another terminal:");
        println!("  export CUSTODY_CONTEXT={}", std::path::absolute(&a.data).unwrap_or_else(|_| a.data.clone()).display());
    }
    for args in [
        "verify",
        "origin S1",
        "admissible S1 --rules us-2024   # today; --date YYYY-MM-DD for another day",
        "genealogy S1",
        "origin L5   # rough inspected by a verification node",
    ] {
        println!("  {me} {args}");
    }
    println!("  {me} status   # one line per service, as the operator; metrics: http://{ops}/metrics");
    println!("at the border (README, \"At the border\"):");
    println!("  {me} certify S1 --rules us-2024 --rules eu-2025 --out S1.certificate.json");
    println!("  {me} verify-certificate S1.certificate.json --key {}   # offline, trusting only the ledger key", ledger_key.public_key());
    println!(
        "  {me} verify-certificate S1.certificate.json --key {} --online http://{http} --max-age 1d   # and has anything happened since?",
        ledger_key.public_key()
    );
    println!("  {me} filing S1 --form us-country-of-mining --certificate S1.certificate.json --key {} --csv", ledger_key.public_key());
    if !a.no_auth {
        let auth = authority_path.display();
        println!("a new actor gets its credentials in three steps:");
        println!("  {me} keygen --out me.nk                      # its own key; prints U...");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        println!("  echo '{{\"id\":\"reg-me\",\"kind\":\"actor.registered\",\"actor\":\"{}\",\"occurred_at\":\"{now}\",\"subject\":\"U...\",\"name\":\"Me\",\"roles\":[\"miner\"],\"country\":\"BW\"}}' \\", authority.public_key());
        println!("    | {me} --nkey {auth} submit --key {auth} -      # the authority registers it");
        println!("  {me} --nkey me.nk submit --key me.nk events.ndjson   # it connects as itself, at once");
    }
    let mut ended = None;
    if !a.exit_after_demo {
        // "serving" means every service here is ready (a projection has
        // caught up, authz has read the registry), so a command typed at
        // once gets answers; at most a few seconds after the ledger.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while healths.iter().any(|h| !h.status().ready) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for h in healths.iter().filter(|h| !h.status().ready) {
            let s = h.status();
            println!("{} is not ready yet: {}", s.name, s.why.unwrap_or_default());
        }
        println!("serving; Ctrl-C to stop");
        tokio::select! {
            _ = signalled.wait_for(|s| *s) => {}
            first = running.join_next() => ended = first,
        }
    }
    let _ = stop_tx.send(true);
    let _ = gstop_tx.send(());
    let _ = astop_tx.send(());
    if let Some(first) = ended {
        let (name, why) = match first {
            Ok((name, Ok(()))) => (name, "it ended by itself".to_owned()),
            Ok((name, Err(e))) => (name, format!("{e:#}")),
            Err(e) => ("a service", format!("it crashed: {e}")),
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async { while running.join_next().await.is_some() {} }).await;
        anyhow::bail!("the {name} stopped ({why}); custody up stops with it, since the system is not whole without it");
    }
    let stopping = async {
        while let Some(done) = running.join_next().await {
            let (name, result) = done?;
            result.with_context(|| format!("the {name} failed while stopping"))?;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(STOP_GRACE, stopping).await {
        Ok(done) => done?,
        Err(_) => anyhow::bail!("the services did not stop within {} s (is nats-server gone?); stopped anyway", STOP_GRACE.as_secs()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the ledger for its head until it answers (a cluster takes a few
/// seconds to elect its JetStream leaders first).
async fn wait_for_head(nc: &async_nats::Client) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(500), nc.request(custody_wire::subjects::HEAD_SUBJECT, "".into())).await {
            let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
            return Ok(v["seq"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the ledger did not come up")
}

/// The gateway shares this process's descriptors with the ledger, the
/// projection and authz (their sled files, NATS connections, snapshot
/// writes): its connections get at most half of them, less 256, so a
/// flood of sockets can never leave a service unable to open a file.
fn within_descriptors(mut limits: custody_gateway::HttpLimits) -> custody_gateway::HttpLimits {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we own and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return limits;
    }
    let budget = (limit.rlim_cur / 2).saturating_sub(256).max(64);
    if (limits.max_connections as u64) > budget {
        tracing::warn!(asked = limits.max_connections, budget, descriptors = limit.rlim_cur, "HTTP connections capped below the process's descriptor limit");
        limits.max_connections = budget as usize;
    }
    limits
}

/// Runs `program args` (as `key_file`'s identity) and starts it again
/// whenever it ends, until `stop`; then asks it to stop (SIGTERM), waits
/// up to [`STOP_GRACE`] and kills it. Every child is waited for (reaped).
async fn supervise(
    name: &'static str,
    program: PathBuf,
    key_file: Option<PathBuf>,
    args: Vec<std::ffi::OsString>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (&'static str, anyhow::Result<()>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let mut std_cmd = std::process::Command::new(&program);
        // It dies with up, even with a kill -9 of up.
        custody::natsd::die_with_parent(&mut std_cmd);
        // The child takes its settings from these arguments alone.
        std_cmd.env_remove("CUSTODY_CONFIG").env_remove("CUSTODY_NKEY").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        if let Some(k) = &key_file {
            std_cmd.arg("--nkey").arg(k);
        }
        std_cmd.args(&args);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return (name, Err(anyhow::anyhow!("cannot start it: {e}"))),
        };
        let started = std::time::Instant::now();
        println!("{name}: process {}", child.id().unwrap_or(0));
        let ended = tokio::select! {
            status = child.wait() => Some(status.map_or_else(|e| e.to_string(), |s| s.to_string())),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = ended else {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            if tokio::time::timeout(STOP_GRACE * 4 / 5, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            return (name, Ok(()));
        };
        if *stop.borrow() {
            return (name, Ok(()));
        }
        // One that dies at once again and again is started less often.
        pause = if started.elapsed() > Duration::from_secs(30) { Duration::from_secs(1) } else { (pause * 2).min(Duration::from_secs(30)) };
        tracing::warn!(%status, restart_in = ?pause, "the {name} process ended; starting it again");
        println!("{name}: ended ({status}); starting it again in {} s", pause.as_secs());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return (name, Ok(())),
        }
    }
}

/// Keeps `mirrors` (a child's name, and the health up serves for it) up to
/// date with what each child process says over NATS, every second; one
/// that does not answer is not ready.
async fn mirror_health(url: &str, seed: Option<&str>, mirrors: Vec<(String, Health)>) -> anyhow::Result<()> {
    let nc = custody_wire::connect::connect(url, "custody-up-health", seed).await?;
    loop {
        let statuses = custody_wire::health::gather(&nc, &["ledger", "projection"], Duration::from_millis(500)).await.unwrap_or_default();
        for (name, health) in &mirrors {
            match statuses.iter().find(|s| &s.name == name) {
                Some(s) => {
                    health.set_fault("process", None);
                    let s = s.clone();
                    health.update(|mine| *mine = s);
                }
                None => health.set_fault("process", Some(format!("the {name} process does not answer"))),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
