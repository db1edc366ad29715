//! `quarry start` of the bundled example, until both web replicas answer through nginx,
//! against `raw_start.sh`: the same images, network, containers, nginx and waits done by hand
//! with docker and nginx commands. Both start from nothing (no containers, no images of the
//! stack); runs alternate; the figure is the median of each.
//!
//! `cargo bench -p quarry-cli --bench start` (5 runs each); `QUARRY_BENCH=quick` (1 run each).
//! The last line printed is a JSON object: `ratio` (quarry / raw), `quarry_s`, `raw_s`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

fn body_via(listen: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", listen)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: guestbook.test\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls until both web replicas have answered through nginx.
fn wait_both(listen: u16) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(60);
    let (mut a, mut b) = (false, false);
    while Instant::now() < end {
        if let Some(body) = body_via(listen) {
            a |= body.contains("from web-r1-0");
            b |= body.contains("from web-r1-1");
            if a && b {
                return Ok(());
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(format!(
        "web replicas through nginx on {listen}: r1-0 {a}, r1-1 {b} after 60 s"
    ))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Bench {
    dir: PathBuf,
    name: String,
    home: PathBuf,
    raw_prefix: PathBuf,
    script: PathBuf,
}

impl Bench {
    fn quarry(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quarry"));
        c.env("QUARRY_HOME", &self.home);
        c
    }

    fn clean(&self) {
        let _ = self.quarry().args(["stop", "-s", &self.name]).output();
        let images = Command::new("docker")
            .args([
                "images",
                "-q",
                "--filter",
                &format!("label=quarry.stack={}", self.name),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = images.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&ids)
                .output();
        }
        let _ = Command::new("bash")
            .arg(&self.script)
            .args(["down", &self.name])
            .arg(&self.raw_prefix)
            .output();
    }

    fn time_quarry(&self) -> Result<f64, String> {
        self.clean();
        let listen = free_port();
        let t = Instant::now();
        run(
            self.quarry()
                .arg("start")
                .arg(&self.dir)
                .args(["--listen", &format!("127.0.0.1:{listen}")]),
            "quarry start",
        )?;
        wait_both(listen)?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn time_raw(&self) -> Result<f64, String> {
        self.clean();
        let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
        let listen: u16 = ports[0].parse().unwrap_or(0);
        let t = Instant::now();
        run(
            Command::new("bash")
                .arg(&self.script)
                .arg("up")
                .arg(&self.dir)
                .arg(&self.name)
                .arg(&self.raw_prefix)
                .args(&ports),
            "raw_start.sh",
        )?;
        wait_both(listen)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.clean();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    let runs = if quick { 1 } else { 5 };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench start: no temp dir: {e}");
            std::process::exit(1);
        }
    };
    let name = format!("bench-{}", std::process::id());
    let dir = scratch.path().join("guestbook");
    let prepared = copy_dir(&manifest.join("../examples/guestbook"), &dir).and_then(|()| {
        let yml = dir.join("quarry.yml");
        let text = std::fs::read_to_string(&yml)?;
        std::fs::write(
            &yml,
            text.replacen("name: guestbook", &format!("name: {name}"), 1),
        )
    });
    if let Err(e) = prepared {
        eprintln!("bench start: copying the example: {e}");
        std::process::exit(1);
    }
    let bench = Bench {
        dir,
        name,
        home: scratch.path().join("home"),
        raw_prefix: scratch.path().join("raw-nginx"),
        script: manifest.join("benches/raw_start.sh"),
    };
    let (mut q, mut r) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let result = bench
            .time_quarry()
            .and_then(|qs| bench.time_raw().map(|rs| (qs, rs)));
        match result {
            Ok((qs, rs)) => {
                eprintln!("run {}: quarry start {qs:.2} s, raw {rs:.2} s", i + 1);
                q.push(qs);
                r.push(rs);
            }
            Err(e) => {
                eprintln!("bench start: {e}");
                drop(bench);
                std::process::exit(1);
            }
        }
    }
    drop(bench);
    let (qm, rm) = (median(q), median(r));
    println!(
        "{{\"bench\":\"start\",\"runs\":{runs},\"quarry_s\":{qm:.3},\"raw_s\":{rm:.3},\"ratio\":{:.3},\"target_ratio\":1.3}}",
        qm / rm
    );
}
