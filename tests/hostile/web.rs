//! `web_fetch` as a hostile agent uses it: server-side request forgery
//! against hale itself and the machine's loopback services, by literal
//! address, by name, by redirect, through a proxy, and with hale's own
//! token. Loopback only: no test sends a packet off this machine.
//!
//! Each test asserts that the guard held (the target server got nothing),
//! that the step ended as the documented typed outcome (`PERMISSION_DENIED`
//! at severity `error`, with a hint), that nothing was escalated, and that
//! hale still answers the next message.

use hale::actors::builtin::AllowList;
use serde_json::{Value, json};

use crate::support_web::*;

/// The attack of issue 11: the agent reads `hale serve`'s own metrics
/// over loopback.
#[test]
fn the_metrics_of_hale_serve_on_loopback_are_refused() {
    let serve = Serve::start("", &[]);
    let session = serve.new_session();
    let metrics = format!("{}/metrics", serve.url);
    let sent = serve.send(&session, &fetches(&[json!({ "url": metrics })]));
    assert_eq!(sent["status"], "done", "{sent}");
    let reply = sent["reply"].as_str().unwrap();
    let steps = steps_of_reply(reply);
    assert_refused(&steps[0]);
    assert_eq!(steps[0]["data"]["range"], "loopback", "{}", steps[0]);
    assert!(!reply.contains("hale_tool_calls_total"), "{reply}");
    serve.still_serves(&session);
}

/// An agent that learned hale's token cannot use it through `web_fetch`,
/// in a header or in the URL; an allow-listed server stays reachable.
#[test]
fn a_request_carrying_hales_token_is_refused() {
    let target = Recorder::start(Reply::Body("internal"));
    let serve = Serve::start(
        &format!("[tools]\nweb_fetch_allow = [\"{}\"]\n", target.addr),
        &[],
    );
    let token = serve.token();
    let session = serve.new_session();
    let sent = serve.send(
        &session,
        &fetches(&[
            json!({ "url": target.url("/v1/approvals"),
                    "headers": { "Authorization": format!("Bearer {token}") } }),
            json!({ "url": target.url(&format!("/?token={token}")) }),
            json!({ "url": target.url("/plain") }),
        ]),
    );
    assert_eq!(sent["status"], "done", "{sent}");
    let reply = sent["reply"].as_str().unwrap();
    let steps = steps_of_reply(reply);
    // Two layers stop it: the model's answer is masked before its calls
    // run (the token becomes `[REDACTED]`), and `web_fetch` refuses a
    // request that still carries it (PERMISSION_DENIED; its own test in
    // actors/tests/builtin_web_fetch.rs). Whichever held, the token never
    // reached the server.
    for step in &steps[..2] {
        if step["status"] == "error" {
            assert_eq!(step["code"], "PERMISSION_DENIED", "{step}");
            assert_eq!(step["severity"], "error", "{step}");
        } else {
            assert_eq!(step["status"], "success", "{step}");
        }
    }
    assert_eq!(steps[2]["status"], "success", "{}", steps[2]);
    assert_eq!(steps[2]["data"]["body"], "internal");
    let heads = target.heads();
    assert!(!heads.is_empty());
    for head in &heads {
        assert!(
            !head.contains(&token),
            "the token reached the server: {head}"
        );
    }
    // The refusal does not echo the token back to the model.
    assert!(!reply.contains(&token), "{reply}");
    serve.still_serves(&session);
}

/// `HTTP_PROXY` and friends in hale's environment are ignored: a proxy
/// would connect on hale's behalf to addresses no check saw.
#[test]
fn proxy_settings_in_the_environment_are_ignored() {
    let target = Recorder::start(Reply::Body("direct"));
    let proxy = Recorder::start(Reply::Body("via the proxy"));
    let proxy_url = proxy.url("");
    let env: Vec<(&str, String)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy_url.clone()))
    .collect();
    let serve = Serve::start(
        &format!("[tools]\nweb_fetch_allow = [\"{}\"]\n", target.addr),
        &env,
    );
    let session = serve.new_session();
    let sent = serve.send(&session, &fetches(&[json!({ "url": target.url("/") })]));
    let steps = steps_of_reply(sent["reply"].as_str().unwrap());
    assert_eq!(steps[0]["status"], "success", "{}", steps[0]);
    assert_eq!(steps[0]["data"]["body"], "direct", "{}", steps[0]);
    assert_eq!(proxy.hits(), 0, "{:?}", proxy.heads());
    assert_eq!(target.hits(), 1);
    serve.still_serves(&session);
}

/// An allow-listed server redirects to loopback ports that are not: by
/// literal, by a hex literal, and by a name resolving to 127.0.0.1. Each
/// hop is refused before anything connects to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_allow_listed_server_to_loopback_is_refused_at_the_hop() {
    let inner = Recorder::start(Reply::Body("hale metrics"));
    let port = inner.addr.port();
    let hops = [
        inner.url("/metrics"),
        format!("http://0x7f.1:{port}/metrics"),
        format!("http://localhost:{port}/metrics"),
    ];
    let outers: Vec<Recorder> = hops
        .iter()
        .map(|to| Recorder::start(Reply::Redirect(to.clone())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.web_fetch.allow =
        AllowList::parse(outers.iter().map(|o| o.addr.to_string())).unwrap();
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let args: Vec<Value> = outers
        .iter()
        .map(|o| json!({ "url": o.url("/") }))
        .collect();
    let steps = steps_of(&ask(&runtime, &session, &fetches(&args)).await);
    for (step, outer) in steps.iter().zip(&outers) {
        assert_refused(step);
        assert_eq!(step["data"]["range"], "loopback", "{step}");
        assert_eq!(step["data"]["url"], outer.url("/"), "{step}");
        assert_eq!(outer.hits(), 1, "the allow-listed server was asked once");
    }
    // The literal hops are refused by the redirect policy (hop 1); the
    // name by the resolver, before connecting.
    assert_eq!(steps[0]["data"]["hop"], 1, "{}", steps[0]);
    assert_eq!(steps[1]["data"]["hop"], 1, "{}", steps[1]);
    assert_eq!(
        steps[1]["data"]["refused_url"],
        format!("http://127.0.0.1:{port}/metrics")
    );
    assert!(
        steps[2]["message"]
            .as_str()
            .unwrap()
            .contains("`localhost` resolves to"),
        "{}",
        steps[2]
    );
    assert_eq!(
        steps[2]["data"]["refused_host"], "localhost",
        "{}",
        steps[2]
    );
    assert_eq!(
        steps[2]["hints"][0]["suggestions"],
        json!(["localhost"]),
        "{}",
        steps[2]
    );
    assert_eq!(inner.hits(), 0, "{:?}", inner.heads());
    still_serves(&runtime, &session).await;
    runtime.shutdown().await.unwrap();
}

/// A host name that resolves to 127.0.0.1 (`localhost`, from /etc/hosts)
/// is refused although the address is allow-listed on that port: an
/// `address:port` entry covers URLs that write the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused() {
    let inner = Recorder::start(Reply::Body("internal"));
    let port = inner.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.web_fetch.allow = AllowList::parse([inner.addr.to_string()]).unwrap();
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let steps = steps_of(
        &ask(
            &runtime,
            &session,
            &fetches(&[
                json!({ "url": format!("http://localhost:{port}/") }),
                json!({ "url": format!("http://LocalHost:{port}/") }),
                json!({ "url": inner.url("/") }),
            ]),
        )
        .await,
    );
    for step in &steps[..2] {
        assert_refused(step);
        assert_eq!(step["data"]["range"], "loopback", "{step}");
        assert_eq!(step["data"]["address"], "127.0.0.1", "{step}");
        assert!(step["data"].get("hop").is_none(), "{step}");
    }
    // The literal allow-listed address still works.
    assert_eq!(steps[2]["status"], "success", "{}", steps[2]);
    assert_eq!(inner.hits(), 1, "{:?}", inner.heads());
    still_serves(&runtime, &session).await;
    runtime.shutdown().await.unwrap();
}

/// Loopback written as decimal, octal, hex, short, IPv4-mapped IPv6 and
/// the unspecified address: all refused, none connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_literals_in_every_spelling_are_refused() {
    let inner = Recorder::start(Reply::Body("internal"));
    let port = inner.addr.port();
    let hosts = [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "0",
    ];
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.create_session("default").await.unwrap();
    let args: Vec<Value> = hosts
        .iter()
        .map(|h| json!({ "url": format!("http://{h}:{port}/") }))
        .collect();
    let steps = steps_of(&ask(&runtime, &session, &fetches(&args)).await);
    assert_eq!(steps.len(), hosts.len());
    for (step, host) in steps.iter().zip(hosts) {
        assert_refused(step);
        let range = step["data"]["range"].as_str().unwrap();
        assert!(
            ["loopback", "unspecified"].contains(&range),
            "{host}: {step}"
        );
    }
    assert_eq!(inner.hits(), 0, "{:?}", inner.heads());
    still_serves(&runtime, &session).await;
    runtime.shutdown().await.unwrap();
}

/// A redirect to another origin (another port, or another host) loses
/// `Authorization` and `Cookie`; a same-origin redirect keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_redirect_drops_authorization_and_cookie() {
    let second = Recorder::start(Reply::Body("second"));
    let by_port = Recorder::start(Reply::Redirect(second.url("/by-port")));
    let by_host = Recorder::start(Reply::Redirect(format!(
        "http://localhost:{}/by-host",
        second.addr.port()
    )));
    let same_origin = Recorder::start(Reply::RedirectFirst("/again".to_owned()));
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.web_fetch.allow = AllowList::parse(
        [&second, &by_port, &by_host, &same_origin]
            .iter()
            .map(|r| r.addr.to_string())
            .chain(["localhost".to_owned()]),
    )
    .unwrap();
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let credentials =
        json!({ "Authorization": "Bearer agent-own-secret", "Cookie": "sid=agent-own" });
    let args: Vec<Value> = [&by_port, &by_host, &same_origin]
        .iter()
        .map(|r| json!({ "url": r.url("/start"), "headers": credentials }))
        .collect();
    let steps = steps_of(&ask(&runtime, &session, &fetches(&args)).await);
    for step in &steps {
        assert_eq!(step["status"], "success", "{step}");
    }
    assert_eq!(steps[0]["data"]["body"], "second");
    assert_eq!(steps[1]["data"]["body"], "second");
    // The first servers got the credentials (they were sent at all) ...
    for first in [&by_port, &by_host] {
        let head = &first.heads()[0];
        assert!(
            head.contains("\r\nauthorization: bearer agent-own-secret\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncookie: sid=agent-own\r\n"), "{head}");
    }
    // ... the other origin did not.
    let heads = second.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        assert!(!head.contains("authorization:"), "{head}");
        assert!(!head.contains("cookie:"), "{head}");
        assert!(!head.contains("agent-own"), "{head}");
    }
    // A same-origin redirect keeps them.
    let heads = same_origin.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].starts_with("get /again "), "{}", heads[1]);
    assert!(heads[1].contains("\r\nauthorization: bearer agent-own-secret\r\n"));
    assert!(heads[1].contains("\r\ncookie: sid=agent-own\r\n"));
    still_serves(&runtime, &session).await;
    runtime.shutdown().await.unwrap();
}
