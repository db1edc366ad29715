//! Images without a registry between lab hosts: an image built on h1 is planned onto h2
//! only, streamed h1 -> h2 over the RPC Bulk lane (mutual TLS, a real TCP connection between
//! the two namespaces), run on h2 and reached from h3; a cancelled transfer loads nothing; after
//! the plan's removals the image is on h2 alone.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::close_and_check;
use quarry_node::images::{self, ImageNeeds, Transfer};
use quarry_node::pki::ClusterCa;
use quarry_node::types::ServerId;
use quarry_tests::{busybox_context, poll, Host, Lab, ProcessSpec};

const PEER: &str = env!("CARGO_BIN_EXE_image-peer");
const RPC_PORT: u16 = 7701;

/// Writes a member identity for `h` under its directory; returns the directory.
fn identity(ca: &ClusterCa, h: &Host) -> PathBuf {
    let dir = h.dir().join("pki");
    std::fs::create_dir_all(&dir).expect("pki dir");
    let id = ca.issue(&h.name()).expect("issue");
    std::fs::write(dir.join("ca.pem"), &id.ca_pem).expect("ca");
    std::fs::write(dir.join("cert.pem"), &id.cert_pem).expect("cert");
    std::fs::write(dir.join("key.pem"), &id.key_pem).expect("key");
    dir
}

/// Runs `image-peer ARGS` inside `h` against its own engine.
fn peer(h: &Host, args: &[&str]) -> Output {
    let mut cmd = h.command(PEER);
    cmd.env("DOCKER_HOST", h.docker_host().expect("engine"))
        .args(args);
    cmd.output().expect("run image-peer")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn has_image(h: &Host, tag: &str) -> bool {
    !h.docker(&["images", "-q", tag])
        .expect("docker images")
        .trim()
        .is_empty()
}

fn send(from: &Host, to: &Host, pki: &Path, images: &[String], extra: &[&str]) -> Output {
    let addr = format!("{}:{RPC_PORT}", to.addr());
    let pki = pki.display().to_string();
    let mut args = vec!["send", &addr, &pki];
    args.extend(extra);
    args.extend(images.iter().map(String::as_str));
    peer(from, &args)
}

#[test]
fn an_image_built_on_one_host_runs_on_another_and_stays_only_where_it_runs() {
    let started = Instant::now();
    let lab = Lab::builder(3).docker([1, 2, 3]).build().expect("lab");
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let ca = ClusterCa::generate("lab-images").expect("ca");
    let pki: Vec<PathBuf> = lab.hosts().iter().map(|h| identity(&ca, h)).collect();

    // Built on h1 (the build server), from the static busybox and a page of this run.
    let ctx = lab.dir().join("image");
    busybox_context(&ctx).expect("context");
    let page = format!("quarry images {}\n", lab.run_id());
    std::fs::create_dir_all(ctx.join("www")).expect("www");
    std::fs::write(ctx.join("www/index.html"), &page).expect("page");
    let dockerfile = std::fs::read_to_string(ctx.join("Dockerfile")).expect("Dockerfile");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{dockerfile}COPY www /www\n"),
    )
    .expect("Dockerfile");
    let tag = "quarry/lab-web:1".to_owned();
    h1.build_image(&ctx, &tag).expect("build on h1");

    // The plan: web runs on h2 only; h1 built it; h3 runs nothing of it.
    let s = |h: &Host| ServerId(h.name());
    let one = || BTreeSet::from([tag.clone()]);
    let plan = images::plan(&ImageNeeds {
        runs: BTreeMap::from([(s(h2), one())]),
        ran: BTreeMap::new(),
        has: BTreeMap::from([(s(h1), one())]),
        builders: vec![s(h1)],
    })
    .expect("plan");
    assert!(plan.builds.is_empty());
    assert_eq!(
        plan.transfers,
        vec![Transfer {
            from: s(h1),
            to: s(h2),
            images: vec![tag.clone()]
        }]
    );
    assert_eq!(plan.remove, BTreeMap::from([(s(h1), one())]));

    // h2 serves the Bulk lane on its own address, loading into its own engine.
    h2.spawn(
        ProcessSpec::new("image-peer", PEER)
            .args([
                "serve",
                &format!("{}:{RPC_PORT}", h2.addr()),
                &pki[1].display().to_string(),
            ])
            .env("DOCKER_HOST", h2.docker_host().expect("engine")),
    )
    .expect("spawn the receiver on h2");
    h2.wait_for_log("image-peer", "listening on", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));

    // A transfer cancelled after its first chunk loads nothing.
    let out = send(
        h1,
        h2,
        &pki[0],
        std::slice::from_ref(&tag),
        &["--cancel-after-first-chunk"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled after 1048576 bytes"),
        "{}",
        text(&out)
    );
    poll(
        "h2's receiver to give up the cancelled transfer",
        Duration::from_secs(20),
        || {
            let log = h2.log("image-peer");
            if log.contains("image transfer failed: aborted by the sender") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .expect("the receiver gave the transfer up");
    assert!(
        !has_image(h2, &tag),
        "a cancelled transfer left the image on h2"
    );

    // The plan's transfers, each run on its sender, over the lab bridge.
    for t in &plan.transfers {
        let from = lab
            .hosts()
            .iter()
            .position(|h| s(h) == t.from)
            .expect("from");
        let to = lab.hosts().iter().position(|h| s(h) == t.to).expect("to");
        let out = send(
            &lab.hosts()[from],
            &lab.hosts()[to],
            &pki[from],
            &t.images,
            &[],
        );
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out),
            lab.logs_tail(20)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let progress = stdout
            .lines()
            .filter(|l| l.starts_with("progress "))
            .count();
        assert!(
            progress >= 2,
            "progress was reported chunk by chunk: {stdout}"
        );
        assert!(stdout.lines().any(|l| l.ends_with(" done")), "{stdout}");
        let report = stdout
            .lines()
            .find_map(|l| l.strip_prefix("sent "))
            .unwrap_or_else(|| panic!("no report: {stdout}"));
        assert!(
            report.contains(&format!("\"images\":[\"{tag}\"]")),
            "{report}"
        );
    }
    assert!(has_image(h2, &tag), "h2 received the image");

    // It runs on h2, and h3 reaches it.
    h2.docker(&[
        "run", "-d", "--init", "--name", "web", "-p", "8080:80", &tag, "httpd", "-f", "-p", "80",
        "-h", "/www",
    ])
    .expect("run web on h2");
    let url = format!("http://{}:8080/index.html", h2.addr());
    poll(
        "h3 to fetch the page from the image h2 received",
        Duration::from_secs(20),
        || {
            let out = h3
                .exec(&[
                    "busybox", "timeout", "3", "busybox", "wget", "-q", "-O-", &url,
                ])
                .map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && body == page {
                Ok(())
            } else {
                Err(format!("status {}, body {body:?}", out.status))
            }
        },
    )
    .expect("page served by h2");

    // The plan's removals: the build server does not run it, so it goes there.
    for (server, images) in &plan.remove {
        let h = lab.hosts().iter().find(|h| &s(h) == server).expect("host");
        let mut args = vec!["remove"];
        args.extend(images.iter().map(String::as_str));
        let out = peer(h, &args);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(
        !has_image(h1, &tag),
        "the build server kept an image it does not run"
    );
    assert!(
        !has_image(h3, &tag),
        "h3 runs nothing of it and never got it"
    );
    assert!(has_image(h2, &tag));
    h2.docker(&["rm", "-f", "web"]).expect("rm web");
    eprintln!("lab_images took {:?}", started.elapsed());
    close_and_check(lab);
}
