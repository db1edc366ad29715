//! nginx.conf from routes and healthy replicas: a pure function, tested as text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One routed node: its domains and the addresses of its healthy replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The node's stack (for naming and for the 503 page).
    pub stack: String,
    /// The node (for naming and for the 503 page).
    pub node: String,
    /// Its domains (server names).
    pub domains: Vec<String>,
    /// Host addresses of its healthy replicas' main ports; empty: 503.
    pub upstreams: Vec<SocketAddr>,
}

/// Everything the config depends on: one stack's sites (`quarry start`) or every routed
/// stack's (a cluster router).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// Where nginx listens.
    pub listen: SocketAddr,
    /// The routed nodes.
    pub sites: Vec<Site>,
}

/// Why an entry is left out of nginx.conf (the rest is rendered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A domain with characters nginx would read as syntax or a regex.
    #[error("domain {0:?} cannot be routed: only letters, digits, '-', '.' and a leading '*.' are allowed")]
    BadDomain(String),
    /// A stack or node name with characters outside `[A-Za-z0-9_.-]`.
    #[error("name {0:?} cannot appear in the router config: only letters, digits, '-', '_' and '.' are allowed")]
    BadName(String),
    /// The same domain (compared case-insensitively) claimed by two nodes.
    #[error(
        "domain {domain} is also claimed by node {other_node} of stack {other_stack}: neither \
         is routed until one of them drops it"
    )]
    DuplicateDomain {
        /// The domain, in lower case.
        domain: String,
        /// Another claimant's stack.
        other_stack: String,
        /// Another claimant's node.
        other_node: String,
    },
}

/// A route left out of the router's config, and why; everything else is served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeftOut {
    /// The domain, as it was given (committed).
    pub domain: String,
    /// The stack that claims it.
    pub stack: String,
    /// The node that claims it.
    pub node: String,
    /// Why it is left out.
    pub reason: String,
}

/// The claims that can be routed, and those left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Lower-case domain -> (stack, node).
    pub routes: BTreeMap<String, (String, String)>,
    /// The claims left out, sorted.
    pub left_out: Vec<LeftOut>,
}

/// Which claims `(stack, node, domain)` can be routed. Domains are compared in lower case
/// (nginx and DNS ignore case). Left out: a claim whose stack or node name or domain cannot
/// be written into nginx.conf safely, and every claim on a domain that two nodes claim: which
/// one is meant cannot be known here, and sending one node's requests to another is worse
/// than a 404. One bad claim never keeps the others out.
pub fn admit<'a>(claims: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Admitted {
    let mut left_out = Vec::new();
    let mut by_domain: BTreeMap<String, Vec<(&str, &str, &str)>> = BTreeMap::new();
    for (stack, node, domain) in claims {
        let leave = |reason: RenderError| LeftOut {
            domain: domain.to_owned(),
            stack: stack.to_owned(),
            node: node.to_owned(),
            reason: reason.to_string(),
        };
        if let Err(e) = check_name(stack)
            .and_then(|()| check_name(node))
            .and_then(|()| check_domain(domain))
        {
            left_out.push(leave(e));
            continue;
        }
        by_domain
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push((stack, node, domain));
    }
    let mut routes = BTreeMap::new();
    for (lower, claims) in by_domain {
        let targets: BTreeSet<(&str, &str)> = claims.iter().map(|(s, n, _)| (*s, *n)).collect();
        if targets.len() == 1 {
            let (s, n, _) = claims[0];
            routes.insert(lower, (s.to_owned(), n.to_owned()));
            continue;
        }
        for (stack, node, domain) in &claims {
            let (other_stack, other_node) = targets
                .iter()
                .find(|t| **t != (*stack, *node))
                .copied()
                .unwrap_or_default();
            left_out.push(LeftOut {
                domain: (*domain).to_owned(),
                stack: (*stack).to_owned(),
                node: (*node).to_owned(),
                reason: RenderError::DuplicateDomain {
                    domain: lower.clone(),
                    other_stack: other_stack.to_owned(),
                    other_node: other_node.to_owned(),
                }
                .to_string(),
            });
        }
    }
    left_out.sort();
    left_out.dedup();
    Admitted { routes, left_out }
}

fn check_domain(d: &str) -> Result<(), RenderError> {
    let body = d.strip_prefix("*.").unwrap_or(d);
    let ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !body.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RenderError::BadDomain(d.to_owned()))
    }
}

fn check_name(n: &str) -> Result<(), RenderError> {
    if !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        Ok(())
    } else {
        Err(RenderError::BadName(n.to_owned()))
    }
}

/// How long nginx counts a replica out after a failed connect.
const FAIL_TIMEOUT: &str = "1s";

/// A rendered nginx.conf and what it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The whole nginx.conf.
    pub conf: String,
    /// The claims left out (see [`admit`]); the config serves everything else.
    pub left_out: Vec<LeftOut>,
}

/// Renders the whole nginx.conf, leaving out what [`admit`] leaves out. Paths are relative
/// to nginx's prefix (`-p`).
pub fn render(spec: &RouterSpec) -> Rendered {
    let admitted = admit(spec.sites.iter().flat_map(|site| {
        site.domains
            .iter()
            .map(|d| (site.stack.as_str(), site.node.as_str(), d.as_str()))
    }));
    let served = |site: &Site| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in &site.domains {
            let lower = d.to_ascii_lowercase();
            let mine = admitted
                .routes
                .get(&lower)
                .is_some_and(|(s, n)| *s == site.stack && *n == site.node);
            if mine && !out.contains(&lower) {
                out.push(lower);
            }
        }
        out
    };
    let listen = spec.listen;
    let mut out = String::new();
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "# Rendered by quarry from its routes: do not edit, quarry rewrites it.
worker_processes 1;
pid run/nginx.pid;
error_log logs/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    default_type text/html;
    server_tokens off;
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;

    server {{
        listen {listen} default_server;
        server_name _;
        location / {{
            return 404 '{}';
        }}
    }}
",
        page("404 no such domain", "quarry routes no such domain here.")
    );
    for (i, site) in spec.sites.iter().enumerate() {
        let (stack, node) = (&site.stack, &site.node);
        let domains = served(site);
        let names = domains.join(" ");
        let unavailable = page(
            "503 no healthy replica",
            &format!(
                "Node {node} of stack {stack} has no healthy replica right now. Try again shortly."
            ),
        );
        if domains.is_empty() {
            continue;
        }
        if site.upstreams.is_empty() {
            let _ = write!(
                out,
                "
    # {node}: no healthy replica.
    server {{
        listen {listen};
        server_name {names};
        location / {{
            return 503 '{unavailable}';
        }}
    }}
"
            );
            continue;
        }
        let upstream = format!(
            "quarry_{i}_{}_{}",
            stack.replace(['-', '.'], "_"),
            node.replace(['-', '.'], "_")
        );
        let _ = writeln!(
            out,
            "\n    # {node}: {} healthy replica(s).",
            site.upstreams.len()
        );
        let _ = writeln!(out, "    upstream {upstream} {{");
        for addr in &site.upstreams {
            let _ = writeln!(
                out,
                "        server {addr} max_fails=1 fail_timeout={FAIL_TIMEOUT};"
            );
        }
        let _ = write!(
            out,
            "    }}
    server {{
        listen {listen};
        server_name {names};
        error_page 502 503 504 = @quarry_unavailable;
        location / {{
            proxy_pass http://{upstream};
        }}
        location @quarry_unavailable {{
            return 503 '{unavailable}';
        }}
    }}
"
        );
    }
    out.push_str("}\n");
    Rendered {
        conf: out,
        left_out: admitted.left_out,
    }
}

/// A small HTML page (no quote characters, so it fits in a single-quoted nginx string).
fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p><hr><p>quarry</p></body></html>\\n"
    )
    .replace('\'', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(upstreams: Vec<SocketAddr>) -> RouterSpec {
        RouterSpec {
            listen: "127.0.0.1:8080".parse().expect("addr"),
            sites: vec![Site {
                stack: "demo".into(),
                node: "web".into(),
                domains: vec!["demo.test".into(), "www.demo.test".into()],
                upstreams,
            }],
        }
    }

    #[test]
    fn healthy_replicas_become_upstream_servers_of_their_domains() {
        let conf = render(&spec(vec![
            "127.0.0.1:20001".parse().expect("addr"),
            "127.0.0.1:20002".parse().expect("addr"),
        ]))
        .conf;
        assert!(conf.contains("upstream quarry_0_demo_web {\n        server 127.0.0.1:20001 max_fails=1 fail_timeout=1s;\n        server 127.0.0.1:20002 max_fails=1"), "{conf}");
        assert!(conf.contains("server_name demo.test www.demo.test;"));
        assert!(conf.contains("proxy_pass http://quarry_0_demo_web;"));
        assert!(conf.contains("listen 127.0.0.1:8080 default_server;"));
        assert!(conf.contains("pid run/nginx.pid;"));
    }

    #[test]
    fn a_site_without_healthy_replicas_answers_503_with_a_page() {
        let conf = render(&spec(vec![])).conf;
        assert!(!conf.contains("upstream quarry"), "{conf}");
        assert!(conf.contains("return 503 '<!doctype html>"));
        assert!(conf.contains("Node web of stack demo has no healthy replica"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let s = spec(vec!["127.0.0.1:20001".parse().expect("addr")]);
        assert_eq!(render(&s), render(&s.clone()));
    }

    #[test]
    fn names_that_would_inject_config_are_left_out_and_the_rest_is_served() {
        let bad = |edit: &dyn Fn(&mut Site)| {
            let mut s = spec(vec![]);
            let mut other = s.sites[0].clone();
            other.node = "api".into();
            other.domains = vec!["api.test".into()];
            edit(&mut s.sites[0]);
            s.sites.push(other);
            let r = render(&s);
            assert!(r.conf.contains("server_name api.test;"), "{}", r.conf);
            r
        };
        let r = bad(&|s| s.domains = vec!["evil.test; include /etc/passwd".into()]);
        assert!(!r.conf.contains("evil.test"), "{}", r.conf);
        assert_eq!(r.left_out.len(), 1, "{:?}", r.left_out);
        assert!(r.left_out[0].reason.contains("cannot be routed"));
        let r = bad(&|s| s.domains = vec!["~^regex$".into(), "ok.test".into()]);
        assert!(!r.conf.contains("regex"), "{}", r.conf);
        assert!(r.conf.contains("server_name ok.test;"), "{}", r.conf);
        let r = bad(&|s| s.node = "we b".into());
        assert!(!r.conf.contains("demo.test"), "{}", r.conf);
        assert_eq!(r.left_out.len(), 2, "both of its domains: {:?}", r.left_out);
        assert!(r.left_out[0]
            .reason
            .contains("cannot appear in the router config"));
        let mut s = spec(vec![]);
        s.sites[0].domains = vec!["*.demo.test".into()];
        assert!(render(&s).left_out.is_empty());
    }

    #[test]
    fn a_domain_on_two_nodes_in_any_case_is_left_out_of_both_and_the_rest_is_served() {
        let mut s = spec(vec![]);
        let mut other = s.sites[0].clone();
        other.node = "api".into();
        other.domains = vec!["DEMO.test".into(), "api.test".into()];
        s.sites.push(other);
        let r = render(&s);
        assert!(!r.conf.contains("server_name demo.test"), "{}", r.conf);
        assert!(r.conf.contains("server_name www.demo.test;"), "{}", r.conf);
        assert!(r.conf.contains("server_name api.test;"), "{}", r.conf);
        let who: Vec<(&str, &str)> = r
            .left_out
            .iter()
            .map(|l| (l.domain.as_str(), l.node.as_str()))
            .collect();
        assert_eq!(who, vec![("DEMO.test", "api"), ("demo.test", "web")]);
        assert!(
            r.left_out[0]
                .reason
                .contains("also claimed by node web of stack demo"),
            "{:?}",
            r.left_out
        );
    }

    #[test]
    fn a_domain_is_served_in_lower_case_and_once_whatever_case_it_came_in() {
        let mut s = spec(vec![]);
        s.sites[0].domains = vec!["Demo.Test".into(), "demo.test".into()];
        let r = render(&s);
        assert!(r.left_out.is_empty(), "{:?}", r.left_out);
        assert!(r.conf.contains("server_name demo.test;"), "{}", r.conf);
    }
}
