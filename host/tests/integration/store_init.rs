//! Preparing the store (`vendorhost store init`, and start-up per
//! `mongo_init`) and keeping the MongoDB hot path on one shard: the indexes
//! are created once and listed by the server, a second run creates nothing,
//! the embedded store runs its migrations, and every query a job's life
//! makes names one `_id` (read off the driver's command events). Sharding
//! itself needs a `mongos`, which these machines do not run: the command
//! bodies it would get are unit-tested in `store/mongo.rs`.

use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::ClientOptions;
use vendorhost::model::{Idempotency, NewJob, Outcome, now_ms};
use vendorhost::store::Store;
use vendorhost::store::mongo::{Durability, MongoStore, Sharding};

use crate::support::servers;

const COLLECTIONS: [&str; 4] = ["jobs", "webhook_ids", "idempotency", "vendor_refs"];

/// The indexes each collection must have, by field names in order (the
/// stand-in lists every key ascending and without `_id`).
fn expected() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("jobs", vec!["status", "queued", "created_at"]),
        ("jobs", vec!["status", "webhook_deadline"]),
        ("jobs", vec!["status", "due_at"]),
        ("jobs", vec!["status", "updated_at"]),
        ("jobs", vec!["vendor", "vendor_ref"]),
        ("jobs", vec!["ttl"]),
        ("webhook_ids", vec!["expires_at"]),
        ("webhook_ids", vec!["ttl"]),
        ("idempotency", vec!["expires_at"]),
        ("idempotency", vec!["ttl"]),
        ("vendor_refs", vec!["deadline"]),
        ("vendor_refs", vec!["ttl"]),
    ]
}

/// The key documents of `collection`'s indexes, as the server lists them.
async fn listed(db: &mongodb::Database, collection: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    match db.collection::<Document>(collection).list_indexes().await {
        Ok(c) => c.try_collect::<Vec<_>>().await.unwrap().into_iter().map(|m| m.keys).collect(),
        Err(e) => panic!("listIndexes {collection}: {e}"),
    }
}

fn fields(keys: &Document) -> Vec<&str> {
    keys.keys().map(String::as_str).collect()
}

async fn client() -> mongodb::Client {
    mongodb::Client::with_uri_str(&servers::mongo().uri).await.unwrap()
}

/// Connecting creates nothing; `init` creates every index the server then
/// lists (TTL ones with `expireAfterSeconds: 0`), and says so; a second
/// `init` creates none and reports each as there. The stand-in is no
/// `mongos`, so nothing is sharded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_init_creates_every_index_once() {
    let name = servers::unique("vh_init");
    let store = MongoStore::connect(&servers::mongo().uri, &name).await.unwrap();
    let db = client().await.database(&name);
    for c in COLLECTIONS {
        let keys = listed(&db, c).await;
        assert!(keys.iter().all(|k| fields(k) == ["_id"]), "connect created indexes on {c}: {keys:?}");
    }

    let first = store.init(Sharding::IfMongos).await.unwrap();
    assert!(!first.mongos, "the stand-in took for a mongos");
    assert!(first.shards.is_empty(), "sharded on a mongod: {:?}", first.shards);
    assert_eq!(first.created(), first.indexes.len(), "{}", first.summary());
    assert!(first.created() >= expected().len(), "{}", first.summary());
    for (c, want) in expected() {
        let keys = listed(&db, c).await;
        assert!(keys.iter().any(|k| fields(k) == want), "{c} has no index on {want:?}: {keys:?}");
    }
    for c in COLLECTIONS {
        let ttl = db.collection::<Document>(c).list_indexes().await.unwrap();
        let ttl: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(ttl).await.unwrap();
        let ttl = ttl.iter().find(|m| fields(&m.keys) == ["ttl"]).unwrap_or_else(|| panic!("{c}: no ttl index"));
        let after = ttl.options.as_ref().and_then(|o| o.expire_after);
        assert_eq!(after, Some(std::time::Duration::ZERO), "{c}: the ttl index does not expire at its date");
    }
    let text = first.summary();
    assert!(text.contains("created index jobs.status_1_due_at_1"), "{text}");
    assert!(text.contains("not a mongos"), "{text}");

    let second = store.init(Sharding::IfMongos).await.unwrap();
    assert_eq!(second.created(), 0, "a second run created indexes:\n{}", second.summary());
    assert_eq!(second.indexes.len(), first.indexes.len());
    let text = second.summary();
    assert!(text.contains("exists  index jobs.status_1_due_at_1"), "{text}");
    assert!(text.ends_with(&format!("0 index(es) created, {} already there", first.indexes.len())), "{text}");
    for (c, _) in expected() {
        let before = first.indexes.iter().filter(|i| i.collection == c).count();
        assert_eq!(listed(&db, c).await.len(), before + 1, "{c}: indexes added twice (or lost)");
    }
}

/// Runs `vendorhost store init` with `env`; its stdout, after checking it
/// succeeded.
fn store_init(env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vendorhost"));
    cmd.args(["store", "init"]).env("VENDORHOST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "store init failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The command: on MongoDB it prints what it created, then (run again)
/// what exists; on the embedded store it runs the migrations once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_init_command_reports_and_is_idempotent() {
    let name = servers::unique("vh_init_cli");
    let env = [("VENDORHOST_STORE", servers::mongo().uri.as_str()), ("VENDORHOST_MONGO_DB", name.as_str())];
    let first = store_init(&env);
    assert!(first.contains(&format!("MongoDB database {name} on a mongod")), "{first}");
    assert!(first.contains("created index vendor_refs.deadline_1"), "{first}");
    assert!(first.contains("created index jobs.vendor_1_vendor_ref_1"), "{first}");
    assert!(!first.contains("exists "), "{first}");
    let second = store_init(&env);
    assert!(second.contains("exists  index vendor_refs.deadline_1"), "{second}");
    assert!(second.contains("0 index(es) created"), "{second}");
    assert!(!second.contains("created index"), "{second}");
    let db = client().await.database(&name);
    assert!(listed(&db, "vendor_refs").await.iter().any(|k| fields(k) == ["deadline"]));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("vh.db");
    let data = path.display().to_string();
    let env = [("VENDORHOST_DATA", data.as_str())];
    let first = store_init(&env);
    assert!(first.contains("SQLite store") && first.contains("created, schema version"), "{first}");
    assert!(path.exists(), "no database file at {data}");
    let second = store_init(&env);
    assert!(second.contains("up to date: nothing to do"), "{second}");
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert!(second.contains(&format!("schema version {version},")), "{second} (file at {version})");
}

/// Start-up creates the indexes by default (`mongo_init = "indexes"`) and
/// nothing with `mongo_init = "off"`; any other value is refused, naming
/// the key and the values allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_creates_indexes_unless_mongo_init_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = vendorhost::config::Config {
        store: servers::mongo().uri.clone(),
        data: dir.path().join("q.db"),
        ..Default::default()
    };
    assert_eq!(cfg.mongo_init, "indexes");
    let mongo = client().await;

    cfg.mongo_db = servers::unique("vh_init_off");
    cfg.mongo_init = "off".into();
    cfg.validate().unwrap();
    let b = vendorhost::app::backends(&cfg).await.unwrap();
    b.store.ping().await.unwrap();
    let keys = listed(&mongo.database(&cfg.mongo_db), "jobs").await;
    assert!(keys.iter().all(|k| fields(k) == ["_id"]), "mongo_init = off created {keys:?}");
    drop(b);

    let dir = tempfile::tempdir().unwrap();
    cfg.data = dir.path().join("q.db");
    cfg.mongo_db = servers::unique("vh_init_on");
    cfg.mongo_init = "indexes".into();
    let b = vendorhost::app::backends(&cfg).await.unwrap();
    let keys = listed(&mongo.database(&cfg.mongo_db), "jobs").await;
    assert!(keys.iter().any(|k| fields(k) == ["status", "due_at"]), "start-up created no index: {keys:?}");
    drop(b);

    let env = [("VENDORHOST_MONGO_INIT", "shard")];
    let loaded = vendorhost::config::Config::load_from(None, &Default::default(), env).unwrap();
    assert_eq!(loaded.mongo_init, "shard", "VENDORHOST_MONGO_INIT was not read");
    cfg.mongo_init = "sometimes".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("mongo_init") && err.contains(r#""indexes", "shard" or "off""#), "{err}");
}

/// The filter of each read, update, findAndModify and delete a command
/// document carries, with its collection.
fn filters(command: &Document) -> Vec<(String, Document)> {
    let coll = |name: &str| command.get_str(name).unwrap_or_default().to_string();
    let each = |list: &str, key: &str| -> Vec<Document> {
        command
            .get_array(list)
            .map(|a| {
                a.iter()
                    .filter_map(|d| match d {
                        Bson::Document(d) => d.get_document(key).ok().cloned(),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if command.contains_key("find") {
        vec![(coll("find"), command.get_document("filter").cloned().unwrap_or_default())]
    } else if command.contains_key("findAndModify") {
        vec![(coll("findAndModify"), command.get_document("query").cloned().unwrap_or_default())]
    } else if command.contains_key("update") {
        each("updates", "q").into_iter().map(|q| (coll("update"), q)).collect()
    } else if command.contains_key("delete") {
        each("deletes", "q").into_iter().map(|q| (coll("delete"), q)).collect()
    } else {
        Vec::new()
    }
}

/// Every query of a job's life — submit with an idempotency key (and its
/// replay), enqueue record, lease, heartbeat, retry, async accept, webhook
/// lookup, webhook id claims, finish, operator replay — names one `_id`, so
/// on collections sharded on `{_id: "hashed"}` each reaches one shard. The
/// lookup of a known vendor reference reads only `vendor_refs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_path_queries_each_name_one_id() {
    let seen: Arc<Mutex<Vec<Document>>> = Arc::default();
    let mut options = ClientOptions::parse(&servers::mongo().uri).await.unwrap();
    let sink = seen.clone();
    options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        if let CommandEvent::Started(s) = ev {
            sink.lock().unwrap().push(s.command);
        }
    }));
    let store = MongoStore::connect_with(options, &servers::unique("vh_hot"), &Durability::default()).await.unwrap();
    let now = now_ms();
    let job = |id: &str| NewJob {
        request_id: id.into(),
        vendor: "acme".into(),
        data: "{}".into(),
        owner: Some("alice".into()),
        created_at: now,
        idempotency: Some(Idempotency { key: format!("alice:{id}"), body_hash: "h".into(), expires_at: now + 60_000 }),
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    };
    store.insert(&job("a")).await.unwrap();
    store.insert(&job("a")).await.unwrap(); // a replay of the same key
    store.insert(&job("b")).await.unwrap();
    store.mark_queued(&["a".to_string()], now).await.unwrap();
    store.get("a").await.unwrap().unwrap();
    store.start_attempt("a", now, now + 1_000).await.unwrap();
    store.hold("a", now + 2_000).await.unwrap();
    store.record_error("a", "flaky", now + 10, now + 3_000, None).await.unwrap();
    assert!(store.set_vendor_ref("a", "ref-a", now + 60_000, now + 20, None).await.unwrap());
    let lookups_from = seen.lock().unwrap().len();
    assert_eq!(store.find_by_vendor_ref("acme", "ref-a").await.unwrap().as_deref(), Some("a"));
    let lookup: Vec<Document> = seen.lock().unwrap()[lookups_from..].to_vec();
    store.claim_webhook("acme", "w1", now + 60_000).await.unwrap();
    store.claim_webhook("acme", "w1", now + 60_000).await.unwrap();
    store.complete_webhook("acme", "w1", now + 60_000).await.unwrap();
    store.forget_webhook("acme", "w1").await.unwrap();
    let done = Outcome::Complete { result: "{}".into(), redactions: Vec::new() };
    assert!(store.finish("a", &done, now + 30, None).await.unwrap());
    store.start_attempt("b", now, now + 1_000).await.unwrap();
    assert!(store.set_vendor_ref("b", "ref-b", now + 60_000, now + 20, None).await.unwrap());
    assert!(store.finish("b", &Outcome::Failed { error: "no".into() }, now + 30, None).await.unwrap());
    assert!(store.reopen("b", now + 40).await.unwrap());

    let commands = seen.lock().unwrap().clone();
    let queries: Vec<(String, Document)> = commands.iter().flat_map(filters).collect();
    assert!(queries.len() >= 20, "too few queries seen: {queries:?}");
    for (coll, filter) in &queries {
        assert!(COLLECTIONS.contains(&coll.as_str()), "a query on {coll}: {filter}");
        assert!(filter.contains_key("_id"), "a query on {coll} names no _id (reaches every shard): {filter}");
    }
    let touched: Vec<&str> = queries.iter().map(|(c, _)| c.as_str()).collect();
    for c in COLLECTIONS {
        assert!(touched.contains(&c), "nothing read or wrote {c}: {touched:?}");
    }
    let lookup: Vec<(String, Document)> = lookup.iter().flat_map(filters).collect();
    assert_eq!(lookup, [("vendor_refs".to_string(), doc! { "_id": "acme:ref-a" })], "the webhook lookup");
}
