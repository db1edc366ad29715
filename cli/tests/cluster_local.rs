//! A local stack (`quarry start`) and a one-server cluster (in-process) on one Docker engine:
//! each touches only the containers it made, whatever the stack names; and a domain two
//! stacks claim in two cases is refused at deploy, naming both, while the rest goes on.

use std::time::Duration;

use serde_json::Value;

mod support;

use support::*;

#[test]
fn a_local_and_a_cluster_stack_of_one_name_share_an_engine_and_each_stops_only_its_own() {
    let s = Stack::new("origin");
    let server = Server::start((31000, 31499), false);
    let cluster_id = server.cluster_id.clone();

    // The cluster runs the stack; then `quarry start` runs one of the same name here.
    let dir = s.dir.to_str().expect("utf-8 path");
    server.quarry(&["deploy", dir]);
    let cluster = poll(
        "the cluster's 4 containers running",
        Duration::from_secs(60),
        || {
            let c = made_by(&s.name, &cluster_id);
            if c.len() == 4 && c.iter().all(|(_, up)| *up) {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    s.start_ok();
    let local = made_by(&s.name, "local");
    assert_eq!(local.len(), 4, "{local:?}");
    assert!(local.iter().all(|(_, up)| *up), "{local:?}");
    assert_eq!(
        made_by(&s.name, &cluster_id),
        cluster,
        "start left the cluster's alone"
    );

    // `quarry stop` removes the local stack only.
    let out = s.quarry(&["stop", "-s", &s.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(made_by(&s.name, "local").is_empty());
    assert_eq!(
        made_by(&s.name, &cluster_id),
        cluster,
        "the cluster's containers run on, untouched"
    );

    // And the cluster's reconciler, told to stop its stack, leaves the local one running.
    let local = {
        s.start_ok();
        made_by(&s.name, "local")
    };
    assert_eq!(local.len(), 4, "{local:?}");
    server.quarry(&["disable", "-s", &s.name]);
    poll(
        "the cluster's containers gone",
        Duration::from_secs(60),
        || {
            let c = made_by(&s.name, &cluster_id);
            if c.is_empty() {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    assert_eq!(
        made_by(&s.name, "local"),
        local,
        "the local containers run on, untouched"
    );
    let (status, body) = s.get().expect("the local router answers");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_domain_another_stack_holds_in_another_case_is_refused_naming_both_and_the_rest_goes_on() {
    let pid = std::process::id();
    let with_domain = |tag: &str, domain: &str| {
        let s = Stack::new(tag);
        let yml = s.dir.join("quarry.yml");
        let text = std::fs::read_to_string(&yml).expect("read");
        std::fs::write(
            &yml,
            text.replace("[guestbook.test]", &format!("[{domain}]")),
        )
        .expect("write");
        s
    };
    let shop = format!("Shop-{pid}.test");
    let a = with_domain("dom-a", &shop);
    let b = with_domain("dom-b", &shop.to_ascii_lowercase());
    let c = with_domain("dom-c", &format!("other-{pid}.test"));
    let server = Server::start((31500, 31999), true);
    let router = server.router.expect("a router");
    let serves = |domain: &str| {
        poll(
            &format!("{domain}'s web replicas answering through the router"),
            Duration::from_secs(60),
            // Their health page: on a loopback cluster a replica cannot reach its service at
            // the server's address (127.0.0.1 is its own), so `/` answers 502 here.
            || match get_path(router, domain, "/health") {
                Ok((200, body)) if body.trim() == "ok" => Ok(body),
                Ok((code, body)) => Err(format!("{code}: {body}")),
                Err(e) => Err(e),
            },
        )
    };

    server.quarry(&["deploy", a.dir.to_str().expect("utf-8")]);
    serves(&shop.to_ascii_lowercase());
    let refused = server.quarry_any(&["deploy", b.dir.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "domain {} of stack {} is already routed to stack {}",
            shop.to_ascii_lowercase(),
            b.name,
            a.name
        )),
        "{err}"
    );
    // The other stacks' deploys and routing go on.
    server.quarry(&["deploy", c.dir.to_str().expect("utf-8")]);
    serves(&format!("other-{pid}.test"));
    serves(&shop);
    let routes: Value =
        serde_json::from_slice(&server.quarry(&["routes", "--json"]).stdout).expect("json");
    assert_eq!(routes["left_out"], serde_json::json!([]), "{routes}");
    assert_eq!(
        routes["table"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{routes}"
    );
}
