//! Behaviour suites for the backend traits, written once and run against
//! every implementation: `queue` (SQLite, Redis) and `store` (SQLite,
//! MongoDB).
//!
//! A case is an `async fn case(subject: Arc<dyn Trait>)` that states what the
//! trait promises; each suite's macro table turns every case into one
//! `#[tokio::test]` per implementation (`queue_sqlite_<case>`,
//! `queue_redis_<case>`, `store_sqlite_<case>`, `store_mongo_<case>`), each on
//! a fresh, isolated instance: its own temporary SQLite file, Redis key
//! prefix or MongoDB database. A new implementation adds a factory and one
//! column to its suite's table (the macro then requires a name on every row).
//!
//! Behaviour only one backend has (the SQLite store writing the queue row in
//! the job's transaction, the SQLite lease token) is tested beside its
//! suite under a name that says so; wire-level quirks of a server (foreign
//! Redis stream entries, entries deleted while pending) stay in `backends.rs`.

use std::sync::Arc;

use vendorhost::db::Db;

/// One `#[tokio::test]` named `$name` running `$case` on a fresh subject from
/// `$make`, with any extra attributes.
macro_rules! contract_test {
    ($case:ident, $make:ident, $name:ident $(, #[$attr:meta])*) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $name() {
            let subject = $make().await;
            $case(subject.it.clone()).await;
        }
    };
}

mod queue;
mod queue_fair;
mod store;
mod store_cache;
mod store_jobs;
mod store_notify;

/// An implementation under test, and whatever must live as long as it (the
/// temporary directory of its SQLite file).
pub struct Subject<T: ?Sized> {
    pub it: Arc<T>,
    _dir: Option<tempfile::TempDir>,
}

impl<T: ?Sized> Subject<T> {
    pub fn new(it: Arc<T>, dir: Option<tempfile::TempDir>) -> Self {
        Subject { it, _dir: dir }
    }
}

/// A new embedded database in a temporary directory of its own.
pub fn sqlite_db() -> (Arc<Db>, tempfile::TempDir) {
    let dir = tempfile::Builder::new().prefix("vh-contract-").tempdir().expect("create a temp dir");
    let db = Db::open(&dir.path().join("vendorhost.db")).expect("open the embedded database");
    (db, dir)
}
