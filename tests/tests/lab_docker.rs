//! A host's own engine runs a locally built image that another host reaches on its
//! published port.

mod common;

use std::time::Duration;

use common::close_and_check;
use quarry_tests::{busybox_context, poll, Lab, LabError};

#[test]
fn a_hosts_engine_runs_a_local_image_another_host_reaches_on_its_published_port() {
    let lab = Lab::builder(3).docker([1, 3]).build().expect("lab");
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    assert!(
        matches!(h2.docker_host(), Err(LabError::NotEnabled { .. })),
        "h2 has no engine"
    );

    // Build on h1's engine, then carry the image to h3 (save | load, no registry).
    let ctx = lab.dir().join("image");
    busybox_context(&ctx).expect("context");
    let page = format!("quarry lab {}\n", lab.run_id());
    std::fs::create_dir_all(ctx.join("www")).expect("www");
    std::fs::write(ctx.join("www/index.html"), &page).expect("page");
    let dockerfile = std::fs::read_to_string(ctx.join("Dockerfile")).expect("Dockerfile");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{dockerfile}COPY www /www\n"),
    )
    .expect("Dockerfile");
    h1.build_image(&ctx, "quarry-lab-web:1")
        .expect("build on h1");
    let on_h3 = h3
        .docker(&["images", "-q", "quarry-lab-web:1"])
        .expect("images");
    assert!(
        on_h3.trim().is_empty(),
        "h3's engine is its own: it starts without the image"
    );
    lab.copy_image("quarry-lab-web:1", Some(1), 3)
        .expect("copy to h3");

    h3.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "web",
        "-p",
        "8080:80",
        "quarry-lab-web:1",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])
    .expect("run web on h3");

    let url = format!("http://{}:8080/index.html", h3.addr());
    let got = poll(
        "h2 to fetch the page from h3's published port",
        Duration::from_secs(20),
        || {
            let out = h2
                .exec(&[
                    "busybox", "timeout", "3", "busybox", "wget", "-q", "-O-", &url,
                ])
                .map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && body == page {
                Ok(body)
            } else {
                Err(format!(
                    "status {}, body {body:?}, stderr {:?}; h3 containers: {:?}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    h3.docker(&["ps", "-a"]).unwrap_or_default()
                ))
            }
        },
    )
    .expect("page reachable");
    assert_eq!(got, page);

    // The container runs in h3's cgroup parent, so the sweep can find it if h3's engine dies.
    let pid = h3
        .docker(&["inspect", "-f", "{{.State.Pid}}", "web"])
        .expect("inspect");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).expect("cgroup");
    assert!(
        cgroup.contains(&format!("quarry-lab-{}-h3", lab.run_id())),
        "container cgroup: {cgroup}"
    );

    // The engine crashes and comes back with its data: the image and the container are still
    // known (the container stopped with its engine, unless it was restarted since).
    h3.kill("dockerd").expect("kill engine");
    h3.restart("dockerd").expect("restart engine");
    h3.wait_dockerd().expect("engine back");
    let images = h3
        .docker(&["images", "-q", "quarry-lab-web:1"])
        .expect("images");
    assert!(
        !images.trim().is_empty(),
        "h3 lost its image across a restart"
    );
    h3.docker(&["rm", "-f", "web"])
        .expect("the old container is still known");
    close_and_check(lab);
}
