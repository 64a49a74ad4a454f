//! Sources plug in behind one interface; when one fails, its session ends
//! with `source_failed` and says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::SourceSpec;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;
use worker::source::{EncodedVideo, Media, SourceError, SourceFactory, SourceHandle};

/// Refuses to start.
struct Broken;

impl SourceFactory for Broken {
    fn start(&self, _: &SourceSpec) -> Result<SourceHandle, SourceError> {
        Err(SourceError::Unsupported(
            "the test host is unreachable".into(),
        ))
    }
}

/// Sends a few frames, then fails.
struct Flaky;

impl SourceFactory for Flaky {
    fn start(&self, _: &SourceSpec) -> Result<SourceHandle, SourceError> {
        let mut h = SourceHandle::new(64);
        h.spawn_thread("flaky-src", |link| {
            for seq in 0..5u64 {
                if link.sleep_until(Instant::now() + Duration::from_millis(100)) {
                    return Ok(());
                }
                link.publish(Media::Video(Arc::new(EncodedVideo {
                    seq,
                    pts_90k: seq * 9000,
                    keyframe: seq == 0,
                    annexb: Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88]),
                    width: 16,
                    height: 16,
                    captured_at: Instant::now(),
                })));
            }
            Err("stream from the host broke".into())
        })?;
        Ok(h)
    }
}

fn cfg(nats: &NatsServer) -> worker::Config {
    worker::Config::for_tests(&nats.url())
}

async fn ready(c: &async_nats::Client) {
    wait_for("a worker", Duration::from_secs(20), || async {
        c.request("streams.v1.session.list".to_string(), "".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_source_that_cannot_start_is_a_clear_error_and_an_ended_record() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker_with(cfg(&nats), Arc::new(Broken));
    let c = nats.client().await;
    ready(&c).await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"nope"}"#).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], "source_failed");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let rec = registry_get(&c, "nope")
        .await
        .expect("the attempt is recorded");
    assert_eq!(rec["state"], "ended");
    assert_eq!(rec["ended"]["reason"], "source_failed");
    // The slot was given back: the worker still takes sessions up to capacity.
    let listed = raw_request(&c, "streams.v1.session.list", "").await;
    assert_eq!(listed["result"]["sessions"], json!([]));
}

#[tokio::test]
async fn a_source_failing_mid_stream_ends_its_session_with_the_reason() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker_with(cfg(&nats), Arc::new(Flaky));
    let c = nats.client().await;
    ready(&c).await;
    let mut ended = subscribe(&c, "streams.v1.event.session.flaky.ended").await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"flaky"}"#).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let m = tokio::time::timeout(Duration::from_secs(10), ended.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(ev["reason"], "source_failed");
    assert_eq!(ev["detail"], "stream from the host broke");
}
