//! The router: nginx in front of a stack's web replicas, by domain.
//!
//! - [`render`] is pure: routes (domain -> node) and the healthy replicas' addresses in,
//!   nginx.conf text out. An upstream with no healthy replica answers 503 with a page that says
//!   so; a request for a domain nobody routes answers 404.
//! - [`process`] owns one nginx master running in its own prefix directory (config, pid, logs,
//!   temp files all inside it): it checks every new config with `nginx -t` before it replaces
//!   the live one, starts nginx if it does not run, otherwise reloads it gracefully and waits
//!   until the old workers have finished their requests, so that replicas removed from the
//!   config can be stopped without failing a request in flight.
//!
//! Left out: TLS, per-route options, sticky sessions. nginx's own passive checks
//! (`max_fails`) cover a replica that dies between two renders: a failed connect is retried on
//! the next replica.

pub mod process;
pub mod render;
#[cfg(test)]
pub(crate) mod testing;

pub use process::{Applied, Nginx, RouterError, StopOnDrop};
pub use render::{admit, render, Admitted, LeftOut, RenderError, Rendered, RouterSpec, Site};
