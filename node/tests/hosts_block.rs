//! The hosts file's managed block: the pure renderer and the writer (atomic and in place).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use quarry_node::hosts::{self, HostEntry, WriteOutcome, BEGIN, END};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn members() -> Vec<HostEntry> {
    vec![
        HostEntry::new("h2", ip("10.77.0.2")),
        HostEntry::new("h1", ip("10.77.0.1")),
        HostEntry::new("h3", ip("10.77.0.3")),
    ]
}

const BASE: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# operator note\n";

#[test]
fn renderer_appends_one_block_and_keeps_other_lines() {
    let out = hosts::render(BASE, &members());
    assert!(
        out.starts_with(BASE),
        "the operator's lines come first, untouched:\n{out}"
    );
    let block = &out[BASE.len()..];
    assert_eq!(
        block,
        format!("{BEGIN}\n10.77.0.1\th1\n10.77.0.2\th2\n10.77.0.3\th3\n{END}\n")
    );
}

#[test]
fn renderer_is_idempotent_and_order_independent() {
    let once = hosts::render(BASE, &members());
    let twice = hosts::render(&once, &members());
    assert_eq!(once, twice);
    let mut reversed = members();
    reversed.reverse();
    reversed.push(HostEntry::new("h1", ip("10.77.0.1"))); // a duplicate
    assert_eq!(hosts::render(BASE, &reversed), once);
}

#[test]
fn renderer_replaces_the_block_in_place_and_drops_a_dead_member() {
    let with_block = format!("{BASE}{BEGIN}\n10.0.0.9\told\n{END}\n10.1.1.1\tafter\n");
    let out = hosts::render(&with_block, &members()[..2]);
    assert_eq!(
        out,
        format!("{BASE}{BEGIN}\n10.77.0.1\th1\n10.77.0.2\th2\n{END}\n10.1.1.1\tafter\n")
    );
    assert!(!out.contains("old") && !out.contains("h3"));
}

#[test]
fn renderer_keeps_crlf_and_missing_final_newline_outside_the_block() {
    let text = "127.0.0.1 localhost\r\n10.9.9.9 other";
    let out = hosts::render(text, &members()[..1]);
    assert_eq!(
        out,
        format!("127.0.0.1 localhost\r\n10.9.9.9 other\n{BEGIN}\n10.77.0.2\th2\n{END}\n")
    );
    assert_eq!(hosts::render(&out, &members()[..1]), out);
}

#[test]
fn renderer_merges_duplicate_blocks_into_one() {
    let text = format!("a\n{BEGIN}\n1.1.1.1\tx\n{END}\nb\n{BEGIN}\n2.2.2.2\ty\n{END}\nc\n");
    let out = hosts::render(&text, &members()[..1]);
    assert_eq!(out, format!("a\n{BEGIN}\n10.77.0.2\th2\n{END}\nb\nc\n"));
}

#[test]
fn renderer_refuses_names_that_could_inject_lines() {
    let evil = vec![
        HostEntry::new("h1\n6.6.6.6 bank.example", ip("10.77.0.1")),
        HostEntry::new("two names", ip("10.77.0.2")),
        HostEntry::new("", ip("10.77.0.3")),
        HostEntry::new("-dash", ip("10.77.0.4")),
        HostEntry::new("ok.example", ip("10.77.0.5")),
    ];
    let out = hosts::render("", &evil);
    assert_eq!(out, format!("{BEGIN}\n10.77.0.5\tok.example\n{END}\n"));
}

#[test]
fn renderer_with_no_members_leaves_an_empty_block() {
    let out = hosts::render(BASE, &[]);
    assert_eq!(out, format!("{BASE}{BEGIN}\n{END}\n"));
}

#[test]
fn writer_replaces_the_file_atomically_and_skips_identical_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hosts");
    std::fs::write(&path, BASE).expect("seed file");
    let before_inode = inode(&path);
    assert_eq!(
        hosts::update(&path, &members()).expect("update"),
        WriteOutcome::Replaced
    );
    assert_ne!(
        inode(&path),
        before_inode,
        "an atomic replace makes a new inode"
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text, hosts::render(BASE, &members()));
    assert_eq!(
        hosts::update(&path, &members()).expect("update"),
        WriteOutcome::Unchanged
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "hosts")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn writer_creates_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hosts");
    assert_eq!(
        hosts::update(&path, &members()).expect("update"),
        WriteOutcome::Replaced
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        hosts::render("", &members())
    );
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).expect("stat").ino()
}

/// Unmounts on drop, so a failing assertion never leaves a bind mount behind.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn writer_rewrites_a_bind_mounted_file_in_place() {
    if !is_root() {
        eprintln!("SKIPPED: bind mounts need root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("netns-hosts"); // as /etc/netns/NAME/hosts
    let target = dir.path().join("hosts"); // as /etc/hosts inside `ip netns exec`
    std::fs::write(&source, BASE).expect("seed source");
    std::fs::write(&target, "the host's own file\n").expect("seed target");
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&source)
        .arg(&target)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount --bind failed: {status}");
    let guard = BindMount(target.clone());

    assert_eq!(
        hosts::update(&target, &members()).expect("update"),
        WriteOutcome::InPlace
    );
    let want = hosts::render(BASE, &members());
    assert_eq!(std::fs::read_to_string(&target).expect("read target"), want);
    assert_eq!(
        std::fs::read_to_string(&source).expect("read source"),
        want,
        "the write must land in the bind-mounted file, not replace the mount"
    );
    assert_eq!(
        hosts::update(&target, &members()).expect("update"),
        WriteOutcome::Unchanged
    );
    assert_eq!(
        hosts::update(&target, &members()[..1]).expect("update"),
        WriteOutcome::InPlace
    );
    let after = std::fs::read_to_string(&source).expect("read");
    assert!(
        after.contains("\th2\n") && !after.contains("\th1\n"),
        "only h2 is left:\n{after}"
    );
    drop(guard);
    assert_eq!(
        std::fs::read_to_string(&target).expect("read after umount"),
        "the host's own file\n",
        "the file under the mount is untouched"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "hosts" && n != "netns-hosts")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
