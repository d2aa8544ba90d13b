//! The backend conformance suite: every promise of [`Backend`](super::Backend) as a test that
//! runs against any backend, through the [`Store`] interface only.
//!
//! A backend plugs in with a [`Fixture`] (a fresh, empty store per test, opened again on demand
//! as after a restart) and one line in its own tests:
//!
//! ```ignore
//! crate::store::conformance::suite!(SledFixture::new());
//! ```
//!
//! which expands to one `#[test]` per promise, each on its own fixture, in a module per area
//! (`store::sled::tests::conformance::lifecycle::durable_across_reopen`). A PostgreSQL fixture
//! makes a scratch database per fixture, opens a new `PgStore` on it in
//! [`Fixture::open_with`], and another one in [`Fixture::second_handle`] (a second cluster
//! node), so the two-node tests run too. The areas are in files of
//! their own: the lifecycle ([`lifecycle`]), exactly one result per record ([`exactly_once`]),
//! idempotency keys ([`idempotency`]), retention ([`retention`]), the audit chain ([`audit`]),
//! key records and CSCAs ([`keys`]), the KEK pin and the data-key stock ([`kek`]), moving a
//! whole store into another, empty one ([`copy`]: two or three fixtures per test). What only one
//! backend can show (sled's trees and files, a `kill -9` of a child process, PostgreSQL's
//! failover) stays in that backend's own tests. [`faults`] holds the suite itself to account:
//! each promise broken on purpose must fail its test.

pub mod audit;
pub mod copy;
pub mod exactly_once;
pub mod faults;
pub mod idempotency;
pub mod kek;
pub mod keys;
pub mod kit;
pub mod lifecycle;
pub mod retention;

use std::sync::Arc;

use super::Store;
use super::seal::KeyWrap;

/// One backend's store for one test: created empty on the first open, the same data on every
/// later one.
pub trait Fixture {
    /// Opens this fixture's store with `key_wrap` (`None`: a handle that reads and writes no
    /// records). The caller has closed (dropped) every earlier handle first, unless
    /// [`Fixture::second_handle`] says the backend takes several at once.
    fn open_with(&self, key_wrap: Option<Arc<dyn KeyWrap>>) -> Store;

    /// Another handle on the same store while the first stays open, as a second cluster node
    /// on the same database would hold it; `None` for a backend that allows one handle only
    /// (sled: one process owns its directory), which skips the tests that need two.
    fn second_handle(&self) -> Option<Store> {
        None
    }

    /// Checks the backend's own invariants over what it stores (sled: every tree against the
    /// others), at points where the suite has settled everything. Does nothing by default.
    fn check(&self, _store: &Store) {}

    /// Opens this fixture's store with the suite's KEK ([`kit::kek`], the same on every open).
    fn open(&self) -> Store {
        self.open_with(Some(kit::kek()))
    }

    /// Closes `store` (flushed, dropped) and opens the same store again, as after a restart.
    /// The suite leaves no record leased across a reopen: a cluster backend's leases outlive
    /// their handle until they expire, sled's die with it (each backend tests that itself).
    fn reopen(&self, store: Store) -> Store {
        store.close().expect("close the store");
        self.open()
    }
}

/// One `#[test]` per promise of the suite, each on a fresh fixture from `$fixture` (an
/// expression evaluated once per test, in a module per area: `…::lifecycle::durable_across_reopen`).
macro_rules! suite {
    ($fixture:expr) => {
        $crate::store::conformance::suite!(@areas $fixture;
            lifecycle: [
                submit_claim_commit_stream_delete,
                results_stream_in_record_order_whatever_the_commit_order,
                isolation_between_issuers,
                durable_across_reopen,
                readers_writers_and_purges_run_concurrently,
                edge_input_is_refused_or_stored_as_given,
                health_and_identity,
            ],
            exactly_once: [
                a_duplicate_commit_keeps_the_first_result,
                a_late_commit_after_release_yields_one_result,
                release_offers_records_again_first,
                concurrent_claimers_never_share_a_record,
                two_handles_never_share_a_record,
                delete_drops_the_results_of_leased_records,
            ],
            idempotency: [
                same_request_same_batch_per_issuer,
                another_request_is_refused_and_stores_nothing,
                a_replay_answers_the_batch_as_it_stands,
                a_retry_after_delete_is_refused_across_reopen,
                concurrent_submits_under_one_key_make_one_batch,
            ],
            retention: [
                expired_batches_are_purged_and_unsigned_records_counted,
                tombstones_expire_after_a_retention_period,
            ],
            audit: [
                appends_checkpoints_and_signatures_form_one_verified_chain,
                at_head_sees_the_end_and_may_append_nothing,
                concurrent_appenders_form_one_chain,
                the_chain_is_durable_across_reopen,
            ],
            keys: [
                key_records_compare_and_set_with_their_events,
                concurrent_compare_and_set_has_one_winner,
                cscas_trusted_and_pending,
                key_records_and_cscas_are_durable_across_reopen,
            ],
            kek: [
                the_kek_label_is_pinned_once,
                a_handle_without_the_right_kek_reads_and_writes_no_records,
                batches_are_accepted_while_the_kek_is_away_until_the_stock_is_used_up,
                stopping_the_stock_waits_for_the_wrap_in_flight_and_starts_no_other,
            ],
        );
        mod copy {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn round_trip_keeps_everything() {
                $crate::store::conformance::copy::round_trip_keeps_everything(&$fixture, &$fixture, &$fixture);
            }

            #[test]
            fn an_import_into_a_store_that_is_not_empty_is_refused() {
                $crate::store::conformance::copy::an_import_into_a_store_that_is_not_empty_is_refused(
                    &$fixture,
                    &|| Box::new($fixture),
                );
            }
        }
    };
    (@areas $fixture:expr; $($area:ident: [$($name:ident),+ $(,)?]),+ $(,)?) => {
        $(
            mod $area {
                #[allow(unused_imports)]
                use super::*;

                $(
                    #[test]
                    fn $name() {
                        $crate::store::conformance::$area::$name(&$fixture);
                    }
                )+
            }
        )+
    };
}

pub(crate) use suite;
