//! Checks that look across nodes: references to services, env overriding injected
//! addresses, memory against the largest server, a domain listed twice.

use std::collections::{BTreeMap, BTreeSet};

use super::{did_you_mean, key, with, Draft, Walker};
use crate::spec::positions::{Pos, Seg};
use crate::spec::units::{format_size, human_size};
use crate::spec::{references, Attr, Facts, NodeSpec};
use crate::types::Kind;

impl Walker<'_> {
    /// Checks that look across nodes: references to services, env overriding injected
    /// addresses, memory against the largest server, a domain listed twice.
    pub(super) fn cross_checks(&mut self, drafts: &[Draft], facts: &dyn Facts) {
        self.domains_once(drafts);
        let services: BTreeMap<&str, &NodeSpec> = drafts
            .iter()
            .filter(|d| d.spec.kind == Kind::Service)
            .map(|d| (d.spec.name.as_str(), &d.spec))
            .collect();
        let all: BTreeSet<&str> = drafts.iter().map(|d| d.spec.name.as_str()).collect();
        for d in drafts {
            let env_path = with(&d.path, key("env"));
            for (k, val) in &d.spec.env {
                let p = with(&env_path, key(k));
                let at = self.pos.value(&p);
                let refs = match references(val) {
                    Ok(r) => r,
                    Err((off, why)) => {
                        self.error(self.col_of(at, val, off), why, None);
                        continue;
                    }
                };
                for r in refs {
                    let rat = self.col_of(at, val, r.offset);
                    match services.get(r.service.as_str()) {
                        None if all.contains(r.service.as_str()) => self.error(
                            rat,
                            format!("{:?} is not a service, so it has no address to inject", r.service),
                            Some("only `kind: service` nodes can be referenced; web nodes are reached through their domains".to_owned()),
                        ),
                        None => {
                            let names: Vec<&str> = services.keys().copied().collect();
                            let hint = match did_you_mean(&r.service, &names) {
                                Some(m) => format!("did you mean {m:?}?"),
                                None if names.is_empty() => "this stack has no services".to_owned(),
                                None => format!("the services are: {}", names.join(", ")),
                            };
                            self.error(rat, format!("unknown service {:?} in env {k}", r.service), Some(hint));
                        }
                        Some(svc) => match r.attr {
                            Attr::Port | Attr::PortOf(_) if svc.ports.is_empty() => self.error(rat, format!("service {:?} has no ports", r.service), Some("add `ports:` to the service".to_owned())),
                            Attr::PortOf(p) if !svc.ports.contains(&p) => self.error(rat, format!("service {:?} has no port {p}", r.service), Some(format!("its ports are {:?}", svc.ports))),
                            _ => {}
                        },
                    }
                }
                if d.spec.kind != Kind::Service {
                    if let Some(svc) = services
                        .keys()
                        .find(|s| injected_keys(s, &services[*s].ports).contains(k))
                    {
                        self.warn(
                            self.pos.key(&p),
                            format!("env {k} of node {:?} overrides the address quarry injects for service {svc:?}", d.spec.name),
                            Some("the explicit value wins; remove it to use the injected address".to_owned()),
                        );
                    }
                }
            }
            if let Some(max) = facts.max_server_memory() {
                if d.spec.memory > max {
                    let p = with(&d.path, key("memory"));
                    self.error(
                        self.pos.value(&p),
                        format!(
                            "memory {} is more than any server has ({})",
                            format_size(d.spec.memory),
                            human_size(max)
                        ),
                        Some(format!(
                            "ask for at most {} or add a larger server",
                            human_size(max)
                        )),
                    );
                }
            }
        }
    }

    /// Each domain once in the stack (the drafts' domains are lower case already, so
    /// `Shop.test` and `shop.test` are the same domain).
    fn domains_once(&mut self, drafts: &[Draft]) {
        let mut seen: BTreeMap<&str, (&str, Pos)> = BTreeMap::new();
        for d in drafts {
            for (i, dom) in d.spec.domains.iter().enumerate() {
                let at = self
                    .pos
                    .value(&with(&with(&d.path, key("domains")), Seg::Index(i)));
                match seen.get(dom.as_str()) {
                    Some((node, first)) => self.error(
                        at,
                        format!(
                            "domain {dom:?} is listed twice: node {node:?} has it at line {}, \
                             column {} (domains are case-insensitive)",
                            first.line, first.col
                        ),
                        Some("a domain routes to one node: remove one of the two".to_owned()),
                    ),
                    None => {
                        seen.insert(dom, (&d.spec.name, at));
                    }
                }
            }
        }
    }

    /// The position of byte `offset` of a scalar that starts at `at`: past its opening quote
    /// if it has one. (Escapes inside a double-quoted scalar are not counted.)
    pub(super) fn col_of(&self, at: Pos, value: &str, offset: usize) -> Pos {
        let line = self
            .lines
            .get(at.line.saturating_sub(1))
            .copied()
            .unwrap_or("");
        let quoted = matches!(line.chars().nth(at.col.saturating_sub(1)), Some('"' | '\''));
        let prefix_chars = value
            .get(..offset)
            .map(|p| p.chars().count())
            .unwrap_or(offset);
        Pos {
            line: at.line,
            col: at.col + prefix_chars + usize::from(quoted),
        }
    }
}

/// The env keys quarry injects for a service with these ports.
pub(crate) fn injected_keys(service: &str, ports: &[u16]) -> Vec<String> {
    let p = crate::spec::env_prefix(service);
    let mut out = vec![format!("{p}_HOST"), format!("{p}_PORT")];
    for port in ports {
        out.push(format!("{p}_PORT_{port}_TCP_ADDR"));
        out.push(format!("{p}_PORT_{port}_TCP_PORT"));
    }
    out
}
