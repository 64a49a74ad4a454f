//! `session.list` past what one NATS message holds: pages with a cursor,
//! over the bus and over REST, against a nats-server whose payload limit is
//! small enough that a few dozen sessions overflow it.

use std::collections::BTreeSet;
use std::time::Duration;

use bus_schema::registry::{Registry, Storage};
use bus_schema::{SessionId, Subjects};
use serde_json::{json, Value};
use system_tests::*;

/// The server's payload limit: a reply with every session would be about
/// three times this.
const MAX_PAYLOAD: usize = 24 * 1024;
const SESSIONS: usize = 90;

/// Every tenth session has ended.
fn ended(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// Writes `SESSIONS` records straight into the registry, owned by a worker
/// that does not exist (nothing here reaps them), with labels to make each
/// record about 800 bytes. Creation times repeat in threes, so the id
/// breaks ties.
async fn fill_registry(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let reg = Registry::open(&js, &Subjects::default(), Storage::Memory)
        .await
        .expect("registry opens");
    for i in 0..SESSIONS {
        let id = format!("s-{:03}", SESSIONS - i);
        let record = ghost_record(&id, (i / 3) as u64, ended(i), 4);
        reg.create(&record).await.expect("record written");
    }
}

/// The ids in the order `session.list` must give them (creation time,
/// then id), ended ones only with `include_ended`.
fn expected(include_ended: bool) -> Vec<String> {
    let mut all: Vec<(usize, String)> = (0..SESSIONS)
        .filter(|&i| include_ended || !ended(i))
        .map(|i| (i / 3, format!("s-{:03}", SESSIONS - i)))
        .collect();
    all.sort();
    all.into_iter().map(|(_, id)| id).collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

fn result(v: Value) -> Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    v["result"].clone()
}

fn error(v: &Value) -> (&str, &str) {
    assert_eq!(v["ok"], json!(false), "expected an error, got {v}");
    (
        v["error"]["code"].as_str().unwrap(),
        v["error"]["message"].as_str().unwrap(),
    )
}

/// Follows `next` from the first page to the last; the ids in order, and
/// the page sizes.
async fn walk_bus(c: &async_nats::Client, base: Value) -> (Vec<String>, Vec<usize>) {
    let (mut seen, mut sizes) = (Vec::new(), Vec::new());
    let mut q = base.clone();
    loop {
        let page = result(raw_request(c, "streams.v1.session.list", &q.to_string()).await);
        let got = ids(&page);
        sizes.push(got.len());
        seen.extend(got);
        match page.get("next") {
            Some(next) => q["after"] = next.clone(),
            None => return (seen, sizes),
        }
        assert!(sizes.len() <= SESSIONS, "the walk does not end");
    }
}

/// A nats-server with a `MAX_PAYLOAD` payload limit and a worker on it.
async fn small_payload_worker(id: &str) -> (NatsServer, Service) {
    init_tracing();
    let nats = NatsServer::start_with_config(&format!("max_payload: {MAX_PAYLOAD}")).await;
    let mut wc = worker::Config::for_tests(&nats.url());
    wc.worker_id = Some(id.into());
    let w = worker(wc);
    (nats, w)
}

#[tokio::test]
async fn list_pages_past_the_payload_limit_and_walks_every_session_once() {
    let (nats, _w) = small_payload_worker("w-list").await;
    let c = nats.client().await;
    assert_eq!(c.server_info().max_payload, MAX_PAYLOAD);
    worker_answers(&c).await;
    fill_registry(&c).await;

    // Without a limit: as much as fits, then a cursor. Every reply got here,
    // so each was within the payload limit.
    let (seen, sizes) = walk_bus(&c, json!({})).await;
    assert_eq!(seen, expected(false));
    assert!(
        sizes.len() >= 3,
        "{sizes:?}: the list needs several messages"
    );
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}: no empty page");
    let (seen, _) = walk_bus(&c, json!({"include_ended": true})).await;
    assert_eq!(seen, expected(true));

    // With a limit: pages of exactly that many, the last one shorter.
    let (seen, sizes) = walk_bus(&c, json!({"include_ended": true, "limit": 7})).await;
    assert_eq!(seen, expected(true));
    assert_eq!(sizes.len(), SESSIONS.div_ceil(7));
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n == 7),
        "{sizes:?}"
    );
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), SESSIONS);

    // Bad input: a clear error each, and the worker still answers.
    for (body, code, says) in [
        (
            r#"{"limit":0}"#,
            "invalid_request",
            "limit must be 1 to 1000",
        ),
        (
            r#"{"limit":1001}"#,
            "invalid_request",
            "limit must be 1 to 1000",
        ),
        (r#"{"limit":-1}"#, "invalid_request", "expected u32"),
        (
            r#"{"after":"yesterday"}"#,
            "invalid_request",
            "not a session.list cursor",
        ),
        (
            r#"{"after":"2027-01-15T08:00:00.000Z/no spaces"}"#,
            "invalid_request",
            "not a session.list cursor",
        ),
        (r#"{"page":2}"#, "invalid_request", "page"),
    ] {
        let r = raw_request(&c, "streams.v1.session.list", body).await;
        let (got, message) = error(&r);
        assert_eq!(got, code, "{body}: {r}");
        assert!(
            message.contains(says),
            "{body}: {message:?} should say {says:?}"
        );
    }
    let page = result(raw_request(&c, "streams.v1.session.list", r#"{"limit":1}"#).await);
    assert_eq!(ids(&page), expected(false)[..1]);
}

#[tokio::test]
async fn rest_list_pages_with_limit_and_after() {
    let (nats, _w) = small_payload_worker("w-rest-list").await;
    let (_api, base) = api(api::Config::for_tests(&nats.url())).await;
    let c = nats.client().await;
    fill_registry(&c).await;
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        let url = format!("{base}/api/sessions{query}");
        async move {
            let r = http.get(&url).send().await.expect("api answers");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("JSON body"))
        }
    };
    wait_for(
        "the api to list sessions",
        Duration::from_secs(20),
        || async { (get(String::new()).await.0 == 200).then_some(()) },
    )
    .await;

    let mut seen = Vec::new();
    let mut query = "?include_ended=true&limit=25".to_string();
    loop {
        let (status, page) = get(query.clone()).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        let Some(next) = page["next"].as_str() else {
            break;
        };
        // The cursor goes into a URL as it is (`/`, `:` and `.` are fine
        // in a query).
        query = format!("?include_ended=true&limit=25&after={next}");
    }
    assert_eq!(seen, expected(true));

    // Without a limit, the api's reply is one page too, with a cursor.
    let (status, page) = get(String::new()).await;
    assert_eq!(status, 200);
    assert!(page["next"].is_string(), "a first page: {page}");
    assert!(ids(&page).len() < expected(false).len());

    for (query, says) in [
        ("?limit=0", "limit must be 1 to 1000"),
        ("?limit=many", "limit"),
        ("?after=yesterday", "not a session.list cursor"),
        ("?page=2", "page"),
    ] {
        let (status, body) = get(query.to_string()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{query}: {message:?} should say {says:?}"
        );
    }
}

#[tokio::test]
async fn registry_list_skips_deleted_unreadable_and_foreign_entries() {
    init_tracing();
    let nats = NatsServer::start().await;
    let c = nats.client().await;
    let js = async_nats::jetstream::new(c.clone());
    let reg = Registry::open(&js, &Subjects::default(), Storage::Memory)
        .await
        .expect("registry opens");
    assert_eq!(reg.list().await.expect("an empty registry lists"), []);

    fill_registry(&c).await;
    let kv = js
        .get_key_value(Subjects::default().registry_bucket())
        .await
        .expect("bucket");
    // One deleted, one not a record, one under a key that is no session id,
    // and one rewritten (its revision must be the latest).
    let gone = SessionId::parse("s-001").unwrap();
    let rev = reg.get(&gone).await.unwrap().expect("s-001").revision;
    reg.delete(&gone, rev).await.expect("deleted");
    kv.put("s-002", "not json".into()).await.expect("put");
    kv.put("a=b", "{}".into()).await.expect("put");
    let mut v = reg
        .get(&SessionId::parse("s-003").unwrap())
        .await
        .unwrap()
        .expect("s-003");
    v.record.viewers = 7;
    let rev = reg.update(&v.record, v.revision).await.expect("updated");

    let listed = reg.list().await.expect("lists");
    let ids: Vec<&str> = listed.iter().map(|v| v.record.id.as_str()).collect();
    let want: Vec<String> = expected(true)
        .into_iter()
        .filter(|id| id != "s-001" && id != "s-002")
        .collect();
    assert_eq!(ids, want);
    let s3 = listed
        .iter()
        .find(|v| v.record.id.as_str() == "s-003")
        .unwrap();
    assert_eq!((s3.record.viewers, s3.revision), (7, rev));
    for v in &listed {
        let one = reg.get(&v.record.id).await.unwrap().unwrap();
        assert_eq!(one.revision, v.revision, "{}", v.record.id);
    }
}

/// Services start together and each opens the registry, creating its
/// bucket if it is missing: all of them get it, whoever creates it (the
/// loser of that race used to fail with "subjects overlap with an existing
/// stream", taking down what opened it).
#[tokio::test]
async fn services_opening_the_registry_at_once_all_get_it() {
    init_tracing();
    for round in 0..5 {
        let nats = NatsServer::start().await;
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(nats.client().await);
        }
        let opened = futures::future::join_all(clients.iter().map(|c| async move {
            let js = async_nats::jetstream::new(c.clone());
            Registry::open(&js, &Subjects::default(), Storage::Memory).await
        }))
        .await;
        for (i, r) in opened.iter().enumerate() {
            assert!(
                r.is_ok(),
                "round {round}, opener {i}: {:?}",
                r.as_ref().err()
            );
        }
        // And they share one bucket: what one writes, another reads.
        let regs: Vec<Registry> = opened.into_iter().map(Result::unwrap).collect();
        let record = ghost_record("shared", 1, false, 0);
        regs[0].create(&record).await.expect("record written");
        let id = SessionId::parse("shared").unwrap();
        assert!(regs[7].get(&id).await.expect("read").is_some());
    }
}
