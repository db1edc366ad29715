//! Joining over the lab bridge, and every refusal with its message: `quarryd join` with no
//! token, a wrong secret, or a token naming another CA; the API on TCP without the admin token
//! or with a wrong one. (An RPC connection without a cluster certificate is refused on every
//! lane but Join: `node/tests/rpc_lanes.rs` and `node/tests/quarryd_daemon.rs`, over real TLS.)

mod support;

use std::time::{Duration, Instant};

use quarry_tests::Lab;
use support::{admin_token, quarryd_in, secs, start, token_of, with_role, Cli};

#[test]
fn joins_are_refused_with_clear_messages_and_the_api_needs_the_token() {
    let t0 = Instant::now();
    let bin = support::quarryd();
    let cli_bin = support::quarry_bin();
    let lab = Lab::new(2).expect("lab");
    let (h1, h2) = (lab.host(1), lab.host(2));

    let (ok, out, err) = quarryd_in(h1, &bin, &["init"]);
    assert!(ok, "init on h1: {out}{err}");
    let token = token_of(&out);
    start(&lab, h1, &bin);
    let cli = Cli::new(cli_bin, admin_token(h1));
    quarry_tests::poll("h1 lists itself", Duration::from_secs(20), || {
        let v = cli.json(h1, &["servers"])?;
        (with_role(&v, "voter") == ["h1"])
            .then_some(())
            .ok_or_else(|| v.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    let member = h1.addr().to_string(); // the default RPC port

    let refused = |args: &[&str], says: &[&str]| {
        let (ok, out, err) = quarryd_in(h2, &bin, args);
        assert!(!ok, "quarryd {args:?} was accepted: {out}{err}");
        for s in says {
            assert!(err.contains(s), "quarryd {args:?} should say {s:?}: {err}");
        }
        assert!(
            !h2.dir().join("secrets/node.pem").exists(),
            "nothing stored after a refusal"
        );
    };
    refused(
        &["join", &member],
        &["needs the cluster's join token", "quarryd token"],
    );
    let mut wrong_secret = token.clone();
    let last = if wrong_secret.ends_with('0') {
        "1"
    } else {
        "0"
    };
    wrong_secret.replace_range(wrong_secret.len() - 1.., last);
    refused(
        &["join", &member, "--token", &wrong_secret],
        &["wrong join secret", "quarryd token"],
    );
    let other_ca = format!("QRY1-{}-{}", "ab".repeat(32), &token[70..]);
    refused(
        &["join", &member, "--token", &other_ca],
        &["does not match the join token"],
    );

    let (ok, out, err) = quarryd_in(h2, &bin, &["join", &member, "--token", &token]);
    assert!(ok, "join from h2: {out}{err}\n{}", lab.logs_tail(30));
    assert!(out.contains("servers: h1, h2"), "{out}");
    start(&lab, h2, &bin);

    let servers = quarry_tests::poll("h1 voter, h2 learner", Duration::from_secs(20), || {
        let v = cli.json(h2, &["servers"])?;
        (with_role(&v, "voter") == ["h1"] && with_role(&v, "learner") == ["h2"])
            .then_some(v.clone())
            .ok_or_else(|| v.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    assert_eq!(servers["servers"][1]["address"], h2.addr().to_string());

    for h in [h1, h2] {
        let out = cli.run_with(h, &["servers"], None);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && e.contains("needs the admin token")
                && e.contains("QUARRY_TOKEN"),
            "no token on {}: {e}",
            h.name()
        );
        let out = cli.run_with(h, &["status"], Some("qra_wrong"));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && e.contains("wrong admin token"),
            "wrong token on {}: {e}",
            h.name()
        );
    }
    lab.close().expect("lab cleaned up");
    eprintln!("quarryd_join: {:.1} s", secs(t0));
}
