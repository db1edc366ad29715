use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;
use crate::spec::digest_dir;

/// A small stack tree: quarry.yml, a build directory with an executable, a link to a file
/// outside the tree, a nested file, a `.git` directory and an empty directory.
fn tree(root: &Path, outside: &Path) {
    fs::create_dir_all(root.join("web/www")).expect("dirs");
    fs::create_dir_all(root.join(".git/objects")).expect("git");
    fs::create_dir_all(root.join("empty")).expect("empty");
    fs::write(root.join("quarry.yml"), "nodes: {}\n").expect("yml");
    fs::write(root.join("web/Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    fs::write(root.join("web/www/index.html"), "hello\n").expect("page");
    fs::write(root.join("web/run.sh"), "#!/bin/sh\n").expect("run.sh");
    fs::set_permissions(root.join("web/run.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::write(root.join(".git/HEAD"), "ref\n").expect("HEAD");
    fs::write(outside, vec![7u8; 3000]).expect("outside");
    symlink(outside, root.join("web/tool")).expect("link");
}

fn names(bytes: &[u8]) -> Vec<(String, u32, u64)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (
                e.path().expect("path").display().to_string(),
                h.mode().expect("mode"),
                h.mtime().expect("mtime"),
            )
        })
        .collect()
}

#[test]
fn pack_takes_the_hashed_tree_sorted_with_links_followed_and_git_skipped() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("stack");
    tree(&root, &d.path().join("outside.bin"));
    let packed = pack(&root).expect("pack");
    assert_eq!(
        names(&packed.bytes),
        vec![
            ("quarry.yml".to_owned(), 0o644, 0),
            ("web/Dockerfile".to_owned(), 0o644, 0),
            ("web/run.sh".to_owned(), 0o755, 0),
            ("web/tool".to_owned(), 0o644, 0),
            ("web/www/index.html".to_owned(), 0o644, 0),
        ]
    );
    assert_eq!(packed.hash, SourceHash::of(&packed.bytes));
}

#[test]
fn the_same_files_pack_to_the_same_bytes_whatever_their_times_and_creation_order() {
    let d = tempfile::tempdir().expect("tmp");
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    fs::create_dir_all(a.join("x")).expect("a");
    fs::write(a.join("x/2"), "two").expect("a2");
    fs::write(a.join("1"), "one").expect("a1");
    // b: created in the other order, with another mtime.
    fs::create_dir_all(b.join("x")).expect("b");
    fs::write(b.join("1"), "one").expect("b1");
    fs::write(b.join("x/2"), "two").expect("b2");
    let old = fs::File::options()
        .write(true)
        .open(b.join("1"))
        .expect("open");
    old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .expect("mtime");
    let (pa, pb) = (pack(&a).expect("a"), pack(&b).expect("b"));
    assert_eq!(pa.hash, pb.hash);
    assert_eq!(pa.bytes, pb.bytes);
    // One byte of content, or the executable bit, changes the hash.
    fs::write(b.join("1"), "onE").expect("b1");
    let pc = pack(&b).expect("c");
    assert_ne!(pc.hash, pa.hash);
    fs::write(b.join("1"), "one").expect("b1");
    fs::set_permissions(b.join("1"), fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_ne!(pack(&b).expect("d").hash, pa.hash);
}

#[test]
fn a_dangling_link_is_an_error_naming_it() {
    let d = tempfile::tempdir().expect("tmp");
    fs::write(d.path().join("quarry.yml"), "").expect("yml");
    symlink("/nonexistent/quarry-test", d.path().join("gone")).expect("link");
    let e = pack(d.path()).expect_err("dangling link");
    assert!(
        e.to_string()
            .contains("gone links to /nonexistent/quarry-test"),
        "{e}"
    );
}

#[test]
fn an_unpacked_tree_has_the_digests_the_stack_file_named() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("stack");
    tree(&root, &d.path().join("outside.bin"));
    let packed = pack(&root).expect("pack");
    let out = d.path().join("build");
    unpack(&packed.bytes, &out).expect("unpack");
    assert_eq!(
        digest_dir(&out.join("web")).expect("digest"),
        digest_dir(&root.join("web")).expect("digest")
    );
    assert_eq!(digest_dir(&out).expect("a"), digest_dir(&root).expect("b"));
    // The link arrived as the file it pointed to; the executable is executable.
    assert!(fs::symlink_metadata(out.join("web/tool"))
        .expect("tool")
        .is_file());
    let mode = fs::metadata(out.join("web/run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // Packing the unpacked tree gives the same source.
    assert_eq!(pack(&out).expect("repack").hash, packed.hash);
}

#[test]
fn unpack_refuses_a_destination_that_is_not_empty() {
    let d = tempfile::tempdir().expect("tmp");
    fs::write(d.path().join("a"), "a").expect("a");
    let packed = pack(d.path()).expect("pack");
    let e = unpack(&packed.bytes, d.path()).expect_err("not empty");
    assert!(matches!(e, SourceError::NotEmpty(_)), "{e}");
}

/// A tar with one entry whose name and type are written raw, as an attacker would.
fn crafted(name: &[u8], kind: tar::EntryType, link: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn unpack_refuses_paths_that_escape_and_entries_that_are_not_files() {
    let d = tempfile::tempdir().expect("tmp");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            crafted(b"../evil", tar::EntryType::Regular, None, b"x"),
            "..",
        ),
        (
            crafted(b"a/../../evil", tar::EntryType::Regular, None, b"x"),
            "..",
        ),
        (
            crafted(b"/tmp/evil", tar::EntryType::Regular, None, b"x"),
            "absolute",
        ),
        (
            crafted(b"link", tar::EntryType::Symlink, Some("/etc/passwd"), b""),
            "Symlink",
        ),
        (
            crafted(b"hard", tar::EntryType::Link, Some("/etc/passwd"), b""),
            "Link",
        ),
        (crafted(b"dev", tar::EntryType::Char, None, b""), "Char"),
    ];
    for (i, (bytes, why)) in cases.into_iter().enumerate() {
        let out = d.path().join(format!("out{i}"));
        let e = unpack(&bytes, &out).expect_err("refused");
        assert!(
            matches!(&e, SourceError::Unsafe { reason, .. } if reason.contains(why)),
            "case {i}: {e}"
        );
    }
    assert!(!d.path().join("evil").exists() && !Path::new("/tmp/evil").exists());
}

#[test]
fn the_store_keeps_a_source_by_hash_and_refuses_bytes_of_another_hash() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("stack");
    tree(&root, &d.path().join("outside.bin"));
    let packed = pack(&root).expect("pack");
    let store = SourceStore::open(&d.path().join("data")).expect("store");
    assert!(!store.has(&packed.hash));
    assert!(matches!(
        store.get(&packed.hash),
        Err(SourceError::NotFound(_))
    ));

    let mut damaged = packed.bytes.clone();
    damaged[700] ^= 1;
    let e = store.put(&packed.hash, &damaged).expect_err("wrong bytes");
    assert!(matches!(e, SourceError::Mismatch { .. }), "{e}");
    assert!(!store.has(&packed.hash), "nothing stored for refused bytes");

    store.put(&packed.hash, &packed.bytes).expect("put");
    assert_eq!(
        store.path(&packed.hash),
        d.path()
            .join("data/sources")
            .join(format!("{}.tar", packed.hash))
    );
    assert_eq!(store.get(&packed.hash).expect("get"), packed.bytes);
    assert_eq!(store.list().expect("list"), vec![packed.hash.clone()]);
    // No temporary file is left beside it.
    let files: Vec<_> = fs::read_dir(store.dir()).expect("dir").flatten().collect();
    assert_eq!(files.len(), 1);

    let out = d.path().join("build");
    store.unpack(&packed.hash, &out).expect("unpack");
    assert_eq!(
        fs::read_to_string(out.join("web/www/index.html")).expect("page"),
        "hello\n"
    );
    store.remove(&packed.hash).expect("remove");
    store.remove(&packed.hash).expect("remove twice");
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn a_tampered_file_in_the_store_is_refused_on_read_and_can_be_replaced() {
    let d = tempfile::tempdir().expect("tmp");
    fs::write(d.path().join("quarry.yml"), "name: x\n").expect("yml");
    let packed = pack(d.path()).expect("pack");
    let store = SourceStore::open(&d.path().join("data")).expect("store");
    store.put(&packed.hash, &packed.bytes).expect("put");

    let mut bytes = fs::read(store.path(&packed.hash)).expect("read");
    bytes[600] ^= 0x20; // inside quarry.yml's content
    fs::write(store.path(&packed.hash), &bytes).expect("tamper");
    let e = store.get(&packed.hash).expect_err("tampered");
    assert!(matches!(e, SourceError::Corrupt { .. }), "{e}");
    let out = d.path().join("never");
    assert!(store.unpack(&packed.hash, &out).is_err());
    assert!(!out.exists(), "nothing unpacked from a tampered tar");

    // A truncated file is refused too; a good copy put again replaces it.
    fs::write(store.path(&packed.hash), &packed.bytes[..1024]).expect("truncate");
    assert!(matches!(
        store.get(&packed.hash),
        Err(SourceError::Corrupt { .. })
    ));
    store.put(&packed.hash, &packed.bytes).expect("put again");
    assert_eq!(store.get(&packed.hash).expect("get"), packed.bytes);
}

#[test]
fn a_store_reopened_after_a_crash_drops_temporary_files_and_keeps_sources() {
    let d = tempfile::tempdir().expect("tmp");
    fs::write(d.path().join("f"), "f").expect("f");
    let packed = pack(d.path()).expect("pack");
    let data = d.path().join("data");
    let store = SourceStore::open(&data).expect("store");
    store.put(&packed.hash, &packed.bytes).expect("put");
    let tmp = store.dir().join(format!(".{}.1.ab.tmp", packed.hash));
    fs::write(&tmp, "half").expect("tmp");
    let store = SourceStore::open(&data).expect("reopen");
    assert!(!tmp.exists());
    assert_eq!(store.get(&packed.hash).expect("get"), packed.bytes);
}

#[test]
fn hashes_are_only_64_lower_case_hex_digits() {
    assert!(SourceHash::parse(&"a".repeat(64)).is_ok());
    for bad in [
        "",
        "../../etc/passwd",
        &"A".repeat(64),
        &"a".repeat(63),
        &"g".repeat(64),
    ] {
        assert!(SourceHash::parse(bad).is_err(), "{bad}");
    }
    let h: Result<SourceHash, _> = serde_json::from_str("\"../x\"");
    assert!(h.is_err(), "deserializing checks too");
}
