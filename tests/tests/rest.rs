//! The api's REST surface, end to end over a real nats-server.

use std::time::Duration;

use serde_json::{json, Value};
use system_tests::*;

fn small_source() -> Value {
    json!({"kind": "synthetic", "width": 160, "height": 120, "fps": 10, "bitrate_kbps": 200})
}

async fn setup(api_key: Option<&str>) -> (NatsServer, Service, Service, String) {
    init_tracing();
    let nats = NatsServer::start().await;
    let mut wc = worker::Config::for_tests(&nats.url());
    wc.worker_id = Some("w-rest".into());
    let w = worker(wc);
    let mut ac = api::Config::for_tests(&nats.url());
    ac.api_key = api_key.map(str::to_string);
    let (a, base) = api(ac).await;
    let c = nats.client().await;
    worker_answers(&c).await;
    (nats, w, a, base)
}

#[tokio::test]
async fn rest_create_get_list_keepalive_delete() {
    let (nats, _w, api_svc, base) = setup(None).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/sessions"))
        .json(&json!({"id": "rest-1", "idle_ttl": "90s", "source": small_source()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["id"], "rest-1");
    assert_eq!(info["owner"], "w-rest");
    assert_eq!(info["state"], "live");
    assert_eq!(info["spec"]["idle_ttl"], "1m 30s");

    let list: Value = http
        .get(format!("{base}/api/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"][0]["id"], "rest-1");
    let one = http
        .get(format!("{base}/api/sessions/rest-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let k = http
        .post(format!("{base}/api/sessions/rest-1/keepalive"))
        .send()
        .await
        .unwrap();
    assert_eq!(k.status(), 200);

    // The api keeps no state: a new api instance sees the same session.
    assert!(api_svc.stop(Duration::from_secs(5)).await);
    let (_api2, base2) = api(api::Config::for_tests(&nats.url())).await;
    let one: Value = http
        .get(format!("{base2}/api/sessions/rest-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["state"], "live");

    let d = http
        .delete(format!("{base2}/api/sessions/rest-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    let ended: Value = d.json().await.unwrap();
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["ended"]["reason"], "stopped");
    let list: Value = http
        .get(format!("{base2}/api/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"], json!([]));
    let list: Value = http
        .get(format!("{base2}/api/sessions?include_ended=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"][0]["ended"]["reason"], "stopped");
}

#[tokio::test]
async fn rest_errors_have_codes_and_statuses() {
    let (_nats, _w, _a, base) = setup(None).await;
    let http = reqwest::Client::new();
    let cases = [
        (
            http.post(format!("{base}/api/sessions")).body("{oops"),
            400,
            "malformed",
        ),
        (
            http.post(format!("{base}/api/sessions"))
                .body(r#"{"surprise":1}"#),
            400,
            "invalid_request",
        ),
        (
            http.post(format!("{base}/api/sessions"))
                .body(r#"{"id":"a/b"}"#),
            400,
            "invalid_id",
        ),
        (
            http.post(format!("{base}/api/sessions"))
                .body(r#"{"idle_ttl":"never"}"#),
            400,
            "invalid_duration",
        ),
        (
            http.get(format!("{base}/api/sessions/nope")),
            404,
            "not_found",
        ),
        (
            http.get(format!("{base}/api/sessions/no%20pe")),
            400,
            "invalid_id",
        ),
        (
            http.delete(format!("{base}/api/sessions/nope")),
            404,
            "not_found",
        ),
        (
            http.post(format!("{base}/api/sessions/nope/keepalive")),
            404,
            "not_found",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

#[tokio::test]
async fn rest_requires_the_api_key_when_configured() {
    let (_nats, _w, _a, base) = setup(Some("s3cret")).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/api/sessions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/api/sessions"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
