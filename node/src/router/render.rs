//! nginx.conf from routes and healthy replicas: a pure function, tested as text.

use std::fmt::Write;
use std::net::SocketAddr;

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

/// A name that cannot be written into nginx.conf safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A domain with characters nginx would read as syntax or a regex.
    #[error("domain {0:?} cannot be routed: only letters, digits, '-', '.' and a leading '*.' are allowed")]
    BadDomain(String),
    /// A stack or node name with characters outside `[A-Za-z0-9_.-]`.
    #[error("name {0:?} cannot appear in the router config: only letters, digits, '-', '_' and '.' are allowed")]
    BadName(String),
    /// The same domain routed to two nodes.
    #[error("domain {0:?} is routed to two nodes")]
    DuplicateDomain(String),
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

/// Renders the whole nginx.conf. Paths are relative to nginx's prefix (`-p`).
pub fn render(spec: &RouterSpec) -> Result<String, RenderError> {
    let mut seen = std::collections::BTreeSet::new();
    for site in &spec.sites {
        check_name(&site.stack)?;
        check_name(&site.node)?;
        for d in &site.domains {
            check_domain(d)?;
            if !seen.insert(d.to_ascii_lowercase()) {
                return Err(RenderError::DuplicateDomain(d.clone()));
            }
        }
    }
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
        let names = site.domains.join(" ");
        let unavailable = page(
            "503 no healthy replica",
            &format!(
                "Node {node} of stack {stack} has no healthy replica right now. Try again shortly."
            ),
        );
        if site.domains.is_empty() {
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
    Ok(out)
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
        .expect("renders");
        assert!(conf.contains("upstream quarry_0_demo_web {\n        server 127.0.0.1:20001 max_fails=1 fail_timeout=1s;\n        server 127.0.0.1:20002 max_fails=1"), "{conf}");
        assert!(conf.contains("server_name demo.test www.demo.test;"));
        assert!(conf.contains("proxy_pass http://quarry_0_demo_web;"));
        assert!(conf.contains("listen 127.0.0.1:8080 default_server;"));
        assert!(conf.contains("pid run/nginx.pid;"));
    }

    #[test]
    fn a_site_without_healthy_replicas_answers_503_with_a_page() {
        let conf = render(&spec(vec![])).expect("renders");
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
    fn names_that_would_inject_config_are_refused() {
        let mut s = spec(vec![]);
        s.sites[0].domains = vec!["evil.test; include /etc/passwd".into()];
        assert!(matches!(render(&s), Err(RenderError::BadDomain(_))));
        let mut s = spec(vec![]);
        s.sites[0].domains = vec!["~^regex$".into()];
        assert!(matches!(render(&s), Err(RenderError::BadDomain(_))));
        let mut s = spec(vec![]);
        s.sites[0].node = "we b".into();
        assert!(matches!(render(&s), Err(RenderError::BadName(_))));
        let mut s = spec(vec![]);
        s.sites[0].domains = vec!["*.demo.test".into()];
        assert!(render(&s).is_ok());
    }

    #[test]
    fn one_domain_on_two_nodes_is_refused() {
        let mut s = spec(vec![]);
        let mut other = s.sites[0].clone();
        other.node = "api".into();
        other.domains = vec!["DEMO.test".into()];
        s.sites.push(other);
        assert_eq!(
            render(&s),
            Err(RenderError::DuplicateDomain("DEMO.test".into()))
        );
    }
}
