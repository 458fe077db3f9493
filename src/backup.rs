//! Backups of a running ledger, and restoring one onto an empty
//! deployment.
//!
//! A backup is a folder of three files:
//! - `entries.ndjson`: the committed stream from seq 1 to one signed
//!   checkpoint's tree size, one entry a line, in the form certificates
//!   carry them (`seq`, `prev_hash`, `recorded_at`, the envelope as sent);
//! - `checkpoints.ndjson`: every signed checkpoint the ledger published
//!   for a size up to that one;
//! - `manifest.json`: the ledger key, the genesis authority, the tree
//!   size, root and head hash, and the checkpoint that signs them.
//!
//! It is taken over NATS while the system runs ([`take`]): the ledger is
//! asked for a fresh signed checkpoint, and the entries it covers, which
//! the committed stream never changes, are read and audited on the way to
//! disk. The ledger's store is not copied: it holds nothing the entries do
//! not, and [`restore`] rebuilds it from the restored stream exactly as
//! `custody ledger recover` does. Nothing in a backup is secret: the
//! ledger's signing key and the authority's are kept apart by whoever
//! runs the ledger, and handed to restore.
//!
//! Restoring ([`restore`]) audits the whole backup before it writes
//! anything (every hash, link and signature, the tree root against the
//! signed checkpoint), refuses a deployment whose committed stream is not
//! empty, publishes the entries and checkpoints, and rebuilds the store.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream;
use custody_proto::certificate::CertifiedEntry;
use custody_proto::{ActorKey, Checkpoint, Entry};
use custody_wire::files::{write_whole, write_whole_with, Mode};
use custody_wire::follow::{FollowError, Reader};
use custody_wire::subjects;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

pub const ENTRIES_FILE: &str = "entries.ndjson";
pub const CHECKPOINTS_FILE: &str = "checkpoints.ndjson";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format` of a manifest this version writes and reads.
pub const FORMAT: &str = "custody-backup-1";

/// What a backup holds, and what signs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The ledger's public key (N...): it signs `checkpoint`.
    pub ledger_key: String,
    /// The genesis authority (U...): the signer of entry 1.
    pub authority: String,
    /// Entries in the backup: seq 1 to this.
    pub tree_size: u64,
    pub root: String,
    pub head_hash: String,
    /// The signed checkpoint of `tree_size` and `root`.
    pub checkpoint: Checkpoint,
    /// When it was taken (RFC 3339).
    pub taken_at: String,
}

/// Takes a backup into `out` (which must not hold one) over `client`:
/// the entries up to a fresh signed checkpoint, audited on the way, and
/// the checkpoints up to it. `key` pins the ledger key to expect; without
/// it, the key the checkpoint names is trusted and recorded.
pub async fn take(client: &async_nats::Client, out: &Path, key: Option<&str>) -> anyhow::Result<Manifest> {
    anyhow::ensure!(!out.join(MANIFEST_FILE).exists(), "{} already holds a backup; give an empty folder", out.display());
    let answer = client.request(subjects::CHECKPOINT_SUBJECT, "{}".into()).await.context("the ledger did not answer for a checkpoint")?;
    let checkpoint: Checkpoint = serde_json::from_slice(&answer.payload).context("the ledger's answer is not a checkpoint")?;
    let ledger_key = key.unwrap_or(&checkpoint.key).to_owned();
    checkpoint.verify(&ledger_key).context("the checkpoint the ledger gave is not signed by its key")?;
    let size = checkpoint.tree_size;
    anyhow::ensure!(size > 0, "the ledger holds no entry yet: nothing to back up");
    let mut auditor = custody_audit::auditor::Auditor::new(&ledger_key, None)?;

    // Every checkpoint published up to this size (the one just given
    // among them, once published), each checked by the auditor.
    let mut checkpoints = Vec::new();
    let creader = Reader::checkpoints(client);
    let clast = creader.last_seq().await.context("cannot read the checkpoints stream")?;
    let mut msgs = std::pin::pin!(creader.range(1, clast));
    while let Some(msg) = msgs.next().await {
        let msg = msg.context("cannot read the checkpoints stream")?;
        let Ok(c) = serde_json::from_slice::<Checkpoint>(&msg.payload) else { continue };
        if c.tree_size <= size && !checkpoints.iter().any(|k: &Checkpoint| k.tree_size == c.tree_size) {
            auditor.checkpoint(c.clone())?;
            checkpoints.push(c);
        }
    }
    // The manifest names a checkpoint the backup holds: the one published
    // for this size when there is one (an idle ledger's head, whose fresh
    // checkpoint is then not published again), else the fresh one.
    let checkpoint = match checkpoints.iter().find(|c| c.tree_size == size) {
        Some(published) => {
            anyhow::ensure!(published.root == checkpoint.root, "the ledger signed two roots for its first {size} entries");
            published.clone()
        }
        None => {
            auditor.checkpoint(checkpoint.clone())?;
            checkpoints.push(checkpoint.clone());
            checkpoint
        }
    };

    // The entries, straight to disk, each audited on the way.
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let reader = Reader::ledger(client);
    let mut first_signer = None;
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        write_whole_with(&out.join(ENTRIES_FILE), Mode::Shared, |file| {
            let mut w = std::io::BufWriter::new(file);
            handle.block_on(async {
                let mut batches = std::pin::pin!(reader.entries(None, Some(size)));
                while let Some(batch) = batches.next().await {
                    let batch = batch.map_err(|e| std::io::Error::other(follow_error(e)))?;
                    for e in batch {
                        if e.seq == 1 {
                            first_signer = Some(crate::client::signer(&e.envelope));
                        }
                        let line = serde_json::to_string(&CertifiedEntry::of(&e).map_err(std::io::Error::other)?)?;
                        auditor.entry(e.into_entry()).map_err(std::io::Error::other)?;
                        writeln!(w, "{line}")?;
                    }
                }
                w.flush()
            })
        })
    })
    .context("cannot back up the entries")?;
    let summary = auditor.summary();
    anyhow::ensure!(summary.entries == size, "the committed stream gave {} entries of the {size} the checkpoint covers", summary.entries);
    anyhow::ensure!(summary.root == checkpoint.root, "the entries read have root {}, the checkpoint signs {}", summary.root, checkpoint.root);

    let mut text = Vec::new();
    for c in &checkpoints {
        text.extend(serde_json::to_vec(c)?);
        text.push(b'\n');
    }
    write_whole(&out.join(CHECKPOINTS_FILE), &text, Mode::Shared)?;
    let head = Reader::ledger(client).get(size).await?.and_then(|m| m.headers.get(subjects::HDR_HASH).map(|v| v.as_str().to_owned()));
    let manifest = Manifest {
        format: FORMAT.into(),
        ledger_key,
        authority: first_signer.context("no entry 1")?,
        tree_size: size,
        root: checkpoint.root.clone(),
        head_hash: head.context("the head entry vanished")?,
        checkpoint,
        taken_at: chrono::Utc::now().to_rfc3339(),
    };
    // Last: a folder without a manifest is not a backup.
    write_whole(&out.join(MANIFEST_FILE), &serde_json::to_vec_pretty(&manifest)?, Mode::Shared)?;
    Ok(manifest)
}

fn follow_error(e: FollowError) -> String {
    match e {
        FollowError::Read(e) => format!("cannot read the committed stream: {e}"),
        FollowError::Broken { seq, why } => format!("the committed stream breaks at entry {seq}: {why}"),
    }
}

/// A backup that passed its audit.
pub struct Checked {
    pub manifest: Manifest,
    pub checkpoints: Vec<Checkpoint>,
    dir: PathBuf,
}

/// Audits the backup in `dir` offline, trusting only `key` (or, without
/// it, the key its manifest names): every entry's hash, link, signature
/// and event; the tree root against the signed checkpoint; every
/// checkpoint's signature and root.
pub fn check(dir: &Path, key: Option<&str>) -> anyhow::Result<Checked> {
    let text = std::fs::read(dir.join(MANIFEST_FILE)).with_context(|| format!("{} holds no backup ({MANIFEST_FILE})", dir.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).context("the manifest cannot be read")?;
    anyhow::ensure!(manifest.format == FORMAT, "a backup of format {:?}; this version reads {FORMAT:?}", manifest.format);
    let ledger_key = key.unwrap_or(&manifest.ledger_key);
    anyhow::ensure!(manifest.ledger_key == ledger_key, "the backup is of the ledger {}, not {ledger_key}", manifest.ledger_key);
    let mut auditor = custody_audit::auditor::Auditor::new(ledger_key, None)?;
    let mut checkpoints = Vec::new();
    let ctext = std::fs::read_to_string(dir.join(CHECKPOINTS_FILE)).context("the checkpoints file cannot be read")?;
    for (i, line) in ctext.lines().enumerate() {
        let c: Checkpoint = serde_json::from_str(line).with_context(|| format!("{CHECKPOINTS_FILE} line {}: not a checkpoint", i + 1))?;
        auditor.checkpoint(c.clone()).with_context(|| format!("{CHECKPOINTS_FILE} line {}", i + 1))?;
        checkpoints.push(c);
    }
    anyhow::ensure!(checkpoints.contains(&manifest.checkpoint), "the manifest's checkpoint is not among the backup's checkpoints");
    let mut first_signer = None;
    for_each_entry(dir, |e| {
        if e.seq == 1 {
            first_signer = Some(crate::client::signer(&e.envelope));
        }
        auditor.entry(e).map_err(anyhow::Error::from)
    })?;
    let summary = auditor.summary();
    anyhow::ensure!(
        summary.entries == manifest.tree_size && summary.root == manifest.root && manifest.checkpoint.root == manifest.root,
        "the backup's entries ({} of them, root {}) are not the {} entries of root {} its signed checkpoint covers: it was altered or cut short",
        summary.entries,
        summary.root,
        manifest.checkpoint.tree_size,
        manifest.checkpoint.root
    );
    anyhow::ensure!(first_signer.as_deref() == Some(manifest.authority.as_str()), "entry 1 is not signed by the genesis authority the manifest names");
    Ok(Checked { manifest, checkpoints, dir: dir.to_path_buf() })
}

impl Checked {
    /// Its entries in order, each handed to `f` (they passed the audit).
    pub fn for_each_entry(&self, f: impl FnMut(Entry) -> anyhow::Result<()>) -> anyhow::Result<()> {
        for_each_entry(&self.dir, f)
    }
}

/// Reads the entries file of `dir` in order, handing each entry to `f`.
fn for_each_entry(dir: &Path, mut f: impl FnMut(Entry) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let file = std::fs::File::open(dir.join(ENTRIES_FILE)).context("the entries file cannot be opened")?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.context("the entries file cannot be read")?;
        let certified: CertifiedEntry = serde_json::from_str(&line).with_context(|| format!("{ENTRIES_FILE} line {}: not an entry", i + 1))?;
        let entry = certified.entry().with_context(|| format!("{ENTRIES_FILE} line {}: prev_hash is not a hash", i + 1))?;
        f(entry).with_context(|| format!("{ENTRIES_FILE} line {}", i + 1))?;
    }
    Ok(())
}

/// Restores a checked backup onto the deployment `js` reaches (as the
/// ledger: only its account holds the streams), whose committed stream
/// must be empty: creates the ledger's streams on `replicas` servers,
/// publishes the entries and checkpoints, then rebuilds the ledger store
/// in `ledger_dir` from the stream, verified. Returns the entries restored.
pub async fn restore(client: &async_nats::Client, backup: &Checked, ledger_dir: &Path, replicas: usize) -> anyhow::Result<u64> {
    let js = jetstream::new(client.clone());
    let reader = Reader::ledger(client);
    if let Ok(last) = reader.last_seq().await {
        anyhow::ensure!(last == 0, "the committed stream already holds {last} entries; restore goes onto an empty deployment only");
    }
    custody_ledger::service::ensure_streams(&js, replicas).await?;
    let mut chunk = Vec::new();
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        for_each_entry(&backup.dir, |e| {
            chunk.push(e);
            if chunk.len() == 4 * custody_ledger::commit::MAX_ATOMIC {
                handle.block_on(custody_ledger::commit::send_all(&js, &chunk))?;
                chunk.clear();
            }
            Ok(())
        })
    })?;
    custody_ledger::commit::send_all(&js, &chunk).await?;
    for c in &backup.checkpoints {
        js.publish(subjects::CHECKPOINTS_SUBJECT, serde_json::to_vec(c)?.into()).await?.await.context("a checkpoint was not stored")?;
    }
    let authority: ActorKey = backup.manifest.authority.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (entries, _) = recover_store(client, ledger_dir, &authority).await?;
    anyhow::ensure!(entries == backup.manifest.tree_size, "restored {entries} entries of {}", backup.manifest.tree_size);
    Ok(entries)
}

/// Rebuilds the ledger store in `dir` from the committed stream, every
/// entry re-verified; an old store is moved aside. Returns how many
/// entries, and where the old store went. (`custody ledger recover`.)
pub async fn recover_store(client: &async_nats::Client, dir: &Path, authority: &ActorKey) -> anyhow::Result<(u64, Option<PathBuf>)> {
    let reader = Reader::ledger(client);
    reader.last_seq().await.context("no committed stream to recover from")?;
    let (store, moved) = custody_ledger::recovery::fresh_store(dir, authority)?;
    let entries = custody_audit::recover::verified(&reader, |batch| store.append(batch)).await?;
    Ok((entries, moved))
}
