//! quarry-tests: the multi-host lab, for quarry's end-to-end tests and for people.
//!
//! A [`Lab`] is n hosts on one machine: each a network namespace with its own address on a
//! private bridge, its own iptables, `/etc/hosts`, directories, and optionally its own Docker
//! engine and sshd. Tests start processes in hosts ([`Host::spawn`]), cut hosts off
//! ([`Lab::cut`]) and partition them ([`Lab::partition`]).
//!
//! Two promises carry the design:
//!
//! - **Nothing leaves the lab.** The bridge has its address before anything is up, a guard
//!   checks the route to every host goes through the bridge before any host exists, and the
//!   namespaces have no default route. Subnets come from `10.77.100-249.0/24`, one per live
//!   run, skipping any that overlaps a route of the machine.
//! - **Nothing is left behind.** Everything carries the run id; `Drop` tears the run down, and
//!   every [`Lab::new`] first sweeps runs whose owning process is gone (see [`sweep`]).
//!   [`sweep::leftovers`] lists what of a run is still there.
//!
//! ```no_run
//! use quarry_tests::{Lab, ProcessSpec};
//! let lab = Lab::builder(3).docker([1]).sshd_everywhere().build()?;
//! let h2 = lab.host(2);
//! h2.spawn(ProcessSpec::new("web", "busybox").args(["httpd", "-f", "-p", "8080"]))?;
//! lab.host(1).sh(&format!("busybox wget -q -O- http://{}:8080/", h2.addr()))?;
//! lab.cut(2)?;
//! # Ok::<(), quarry_tests::LabError>(())
//! ```

mod error;
mod host;
mod lab;
pub mod registry;
pub mod sweep;
mod sys;

pub use error::{LabError, Result};
pub use host::{Host, ProcessSpec};
pub use lab::{Lab, LabBuilder};
pub use sys::{poll, rss_kib};

/// Writes a Docker build context for a `FROM scratch` image holding the machine's static
/// busybox at `/bin/busybox` (run it as `/bin/busybox httpd ...`). No registry needed.
pub fn busybox_context(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(error::io_err(dir))?;
    std::fs::copy("/bin/busybox", dir.join("busybox")).map_err(error::io_err("/bin/busybox"))?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .map_err(error::io_err(dir.join("Dockerfile")))
}

/// A lab is shared across test threads and moved into them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Lab>();
};
