//! The replica simulator in CI: thousands of seeds with every fault and no
//! invariant broken; each safeguard's bug found again by the seed that
//! first found it, when that safeguard is taken away; a seed replays
//! exactly. (`cargo run --release -p custody-ledger --example soak` runs
//! seeds until stopped.)

use custody_ledger::simulator::{self, Options};

/// Seeds run in CI: three replicas, then two.
const SEEDS_3: u64 = 3_000;
const SEEDS_2: u64 = 2_000;

#[test]
fn thousands_of_seeds_with_three_replicas_under_faults_break_no_invariant() {
    let three = Options::default();
    if let Some((seed, v)) = simulator::first_failing(0..SEEDS_3, three) {
        panic!("seed {seed} (3 replicas) at {} ms: {}; replay: cargo run --release -p custody-ledger --example soak -- --seed {seed}", v.at_ms, v.what);
    }
}

#[test]
fn thousands_of_seeds_with_two_replicas_under_faults_break_no_invariant() {
    let two = Options { replicas: 2, ..Options::default() };
    if let Some((seed, v)) = simulator::first_failing(0..SEEDS_2, two) {
        panic!(
            "seed {seed} (2 replicas) at {} ms: {}; replay: cargo run --release -p custody-ledger --example soak -- --replicas 2 --seed {seed}",
            v.at_ms, v.what
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = simulator::run(7, Options::default()).unwrap();
    let b = simulator::run(7, Options::default()).unwrap();
    assert_eq!((a.steps, a.receipts, a.refusals, a.takeovers, a.faults, a.head), (b.steps, b.receipts, b.refusals, b.takeovers, b.faults, b.head));
    assert!(a.receipts > 100 && a.refusals > 0 && a.takeovers > 1 && a.faults > 0, "a run that does something: {a:?}");
}

/// The seed that finds a bug, with its safeguard taken away, finds it
/// again; with the safeguard, the same seed passes. (Seeds are those of the
/// simulator as it is: the run with a starting history, wiped folders and
/// stepped clocks; the seeds that first found each bug are in
/// docs/RELIABILITY.md.)
fn found_again(seed: u64, without: Options, with: Options, what: &str) {
    let v = simulator::run(seed, without).expect_err("the bug is found again");
    assert!(v.what.contains(what), "seed {seed}: {}", v.what);
    if let Err(v) = simulator::run(seed, with) {
        panic!("seed {seed} with the safeguard, at {} ms: {}", v.at_ms, v.what);
    }
}

#[test]
fn without_the_read_barrier_a_paused_writer_sends_a_false_refusal() {
    let mut without = Options::default();
    without.flaws.no_barrier = true;
    found_again(131, without, Options::default(), "false refusal unknown_actor");
}

#[test]
fn with_more_than_one_batch_in_flight_a_stale_writer_breaks_the_chain_on_the_stream() {
    let mut without = Options::default();
    without.flaws.pipelined = true;
    found_again(3, without, Options::default(), "on the stream twice");
    let two = Options { replicas: 2, ..Options::default() };
    let mut without = two;
    without.flaws.pipelined = true;
    found_again(6, without, two, "is not a prefix of the stream");
}

#[test]
fn without_patience_a_deleted_stream_stalls_the_writer_for_ever() {
    let mut without = Options::default();
    without.flaws.endless_read_back = true;
    found_again(1, without, Options::default(), "the stream ends at 0");
}

#[test]
fn without_making_it_again_a_deleted_lease_bucket_leaves_no_writer() {
    let without = Options { no_bucket_recreate: true, ..Options::default() };
    found_again(2, without, Options::default(), "never answered");
}

#[test]
fn a_refill_from_a_store_that_lacks_receipted_entries_forks_them_away() {
    let without = Options { refill_from_any_store: true, ..Options::default() };
    found_again(1, without, Options::default(), "two entries at seq");
}

/// Issue 26: the renewal began only once a new writer had caught up, so a
/// replica taking over with a long way to go (a wiped folder) let the lease
/// lapse under it.
#[test]
fn without_renewal_while_catching_up_a_new_writer_lets_its_lease_lapse() {
    let without = Options { renew_after_catch_up: true, ..Options::default() };
    found_again(14, without, Options::default(), "has not renewed it");
}

/// Issue 26: with no clock check, a writer whose clock ran a month ahead
/// recorded entries a month ahead (and the head held every later entry
/// there).
#[test]
fn without_a_clock_check_a_fast_writer_records_entries_in_the_future() {
    let without = Options { no_clock_check: true, ..Options::default() };
    found_again(9, without, Options::default(), "ahead of the true time");
}

/// Found by the simulator: with the clock checked only at lease writes, a
/// clock stepped between two renewals dated entries beyond the skew; each
/// batch's reading is judged now (`lease::off_at_reading`).
#[test]
fn with_the_clock_checked_only_at_lease_writes_a_clock_stepped_between_renewals_dates_entries_ahead() {
    let without = Options { clock_at_lease_only: true, ..Options::default() };
    found_again(85, without, Options::default(), "ahead of the true time");
}

/// Issue 26: two replicas on one host and path wrote one name into the
/// lease, and both held it; the lease names each data folder's random
/// instance id now.
#[test]
fn without_an_instance_id_two_replicas_hold_the_lease_under_one_name() {
    let without = Options { shared_lease_name: true, ..Options::default() };
    found_again(0, without, Options::default(), "under the same name: two writers");
}

/// Issue 26: a replica restarted on a wiped folder made a new ledger key
/// and signed checkpoints no verifier trusts; it refuses to start without
/// the ledger's key now (the operator restores it, as README says).
#[test]
fn without_the_key_check_a_wiped_replica_signs_with_a_key_of_its_own() {
    let without = Options { new_key_on_empty_folder: true, ..Options::default() };
    found_again(14, without, Options::default(), "with a key of its own");
}

/// Issue 26: a paused writer's queue subscription took requests it never
/// answered once another replica wrote. The producer's resend of the same
/// bytes on a timeout is what answers them (README, "Submitting").
#[test]
fn without_resending_a_request_a_paused_writer_took_is_never_answered() {
    let without = Options { no_resend: true, ..Options::default() };
    found_again(14, without, Options::default(), "paused then, which never took it");
}
