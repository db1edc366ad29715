//! `quarry grid` draws the local grid and dry-runs the plan: every new replica gets a place,
//! and the picture fits an 80-column terminal.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read example") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        let ft = e.file_type().expect("type");
        if ft.is_dir() {
            copy_dir(&e.path(), &dest);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).expect("link"), &dest)
                .expect("symlink");
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

#[test]
fn the_dry_run_places_every_new_replica_and_fits_80_columns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("gb");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook"),
        &dir,
    );
    // A stack name nothing runs under, so the plan is a first deploy.
    let name = format!("qt-grid-{}", std::process::id());
    let yml = dir.join("quarry.yml");
    let text = std::fs::read_to_string(&yml).expect("read");
    std::fs::write(
        &yml,
        text.replacen("name: guestbook", &format!("name: {name}"), 1),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("grid")
        .arg(&dir)
        .output()
        .expect("run quarry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for slice in ["kv.r1.0", "web.r1.0", "web.r1.1", "ticker.r1.0"] {
        let line = format!("{name}.{slice} -> local");
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("4 slices"), "{stdout}");
    let widest = stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 80, "a line of {widest} columns:\n{stdout}");
}
