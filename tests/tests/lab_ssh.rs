//! A host's sshd accepts the lab's key (and only it) and runs a command inside the host.

mod common;

use common::close_and_check;
use quarry_tests::Lab;

#[test]
fn sshd_in_a_host_accepts_the_lab_key_and_runs_a_command_there() {
    let lab = Lab::builder(2).sshd([2]).build().expect("lab");
    let h2 = lab.host(2);
    let out = h2
        .ssh("echo answer=$((6*7)); echo name=$(hostname); ip -4 -o addr show dev eth0")
        .expect("ssh runs a command");
    assert!(out.contains("answer=42"), "{out}");
    assert!(
        out.contains("name=h2\n"),
        "the host has its own hostname: {out}"
    );
    assert!(
        out.contains(&format!("inet {}/24", h2.addr())),
        "the command ran inside h2's namespace: {out}"
    );

    // Another key is refused.
    let stranger = lab.dir().join("stranger_ed25519");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .expect("ssh-keygen");
    assert!(keygen.success());
    let mut cmd = h2.ssh_command("true").expect("ssh command");
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
    let key_at = args.iter().position(|a| a == "-i").expect("-i") + 1;
    let mut refused = std::process::Command::new("ssh");
    for (k, a) in args.iter().enumerate() {
        if k == key_at {
            refused.arg(&stranger);
        } else {
            refused.arg(a);
        }
    }
    let status = refused.output().expect("ssh with another key").status;
    assert!(!status.success(), "sshd accepted a key it was not given");
    assert!(
        cmd.output().expect("ssh").status.success(),
        "the lab key still works"
    );

    assert!(lab.host(1).ssh("true").is_err(), "h1 runs no sshd");
    close_and_check(lab);
}
