//! Readers of single fields: command, ports, memory, lists, health, env, build directory.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::{key, valid_env_key, with, Walker, HEALTH_KEYS};
use crate::spec::positions::Seg;
use crate::spec::units::{parse_duration_ms, parse_size};
use crate::spec::Facts;
use crate::types::{Command, Health, ImageSource, Probe};

impl Walker<'_> {
    pub(super) fn env(&mut self, v: &Value, path: &[Seg], what: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Mapping(m) = v else {
            if !v.is_null() {
                self.wrong_type(
                    path,
                    what,
                    "a mapping of NAME: value",
                    v,
                    "for example `env: { GREETING: hello }`",
                );
            }
            return out;
        };
        for (k, val) in self.keys(m, path, &[], what) {
            let p = with(path, key(k));
            if !valid_env_key(k) {
                self.error(
                    self.pos.key(&p),
                    format!("{k:?} is not a valid env variable name"),
                    Some("use letters, digits and _, not starting with a digit".to_owned()),
                );
                continue;
            }
            let s = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => {
                    self.wrong_type(
                        &p,
                        &format!("env {k}"),
                        "a string, number or boolean",
                        other,
                        "quote the value",
                    );
                    continue;
                }
            };
            if let Err(e) = crate::spec::limits::check_env_value(k, &s) {
                self.error(
                    self.pos.value(&p),
                    e.to_string(),
                    Some("env is for settings; read large data from a file".to_owned()),
                );
                continue;
            }
            out.insert(k.to_owned(), s);
        }
        out
    }

    pub(super) fn build_dir(
        &mut self,
        dir: &str,
        path: &[Seg],
        facts: &dyn Facts,
    ) -> Option<ImageSource> {
        let clean = dir.trim_end_matches('/');
        let clean = if clean.is_empty() { "." } else { clean };
        if clean.starts_with('/') || clean.split('/').any(|c| c == "..") {
            self.error(
                self.pos.value(path),
                format!("build directory {dir:?} is outside the stack"),
                Some("give a directory inside the stack, relative to quarry.yml".to_owned()),
            );
            return None;
        }
        match facts.build_digest(clean) {
            Ok(digest) => Some(ImageSource::Build {
                dir: clean.to_owned(),
                digest,
                tag: String::new(),
            }),
            Err(why) => {
                self.error(
                    self.pos.value(path),
                    format!("build directory {dir:?} {why}"),
                    Some(
                        "`build:` names a directory with a Dockerfile, relative to quarry.yml"
                            .to_owned(),
                    ),
                );
                None
            }
        }
    }

    pub(super) fn command(&mut self, v: &Value, path: &[Seg]) -> Option<Command> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(Command::Shell(s.clone())),
            Value::Sequence(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    match it {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        other => self.wrong_type(
                            &with(path, Seg::Index(i)),
                            "each word of command",
                            "a string",
                            other,
                            "quote it",
                        ),
                    }
                }
                Some(Command::Exec(out))
            }
            _ => {
                self.wrong_type(
                    path,
                    "command",
                    "a non-empty list or string",
                    v,
                    "for example `command: [\"httpd\", \"-f\"]` or `command: httpd -f`",
                );
                None
            }
        }
    }

    pub(super) fn ports(&mut self, v: &Value, path: &[Seg]) -> Vec<u16> {
        let Value::Sequence(items) = v else {
            self.wrong_type(
                path,
                "ports",
                "a list of port numbers",
                v,
                "for example `ports: [8080]`",
            );
            return Vec::new();
        };
        let mut out: Vec<u16> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let p = with(path, Seg::Index(i));
            match it.as_u64() {
                Some(n @ 1..=65535) => {
                    if out.contains(&(n as u16)) {
                        self.error(
                            self.pos.value(&p),
                            format!("port {n} is listed twice"),
                            None,
                        );
                    } else {
                        out.push(n as u16);
                    }
                }
                Some(n) => self.error(
                    self.pos.value(&p),
                    format!("port {n} is out of range"),
                    Some("ports are 1 to 65535".to_owned()),
                ),
                None => {
                    self.wrong_type(&p, "a port", "a number", it, "for example `ports: [8080]`")
                }
            }
        }
        if items.is_empty() {
            self.error(
                self.pos.value(path),
                "ports is empty".to_owned(),
                Some("list the container ports, main one first, or remove `ports`".to_owned()),
            );
        }
        out
    }

    pub(super) fn size(&mut self, v: &Value, path: &[Seg]) -> Option<u64> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                self.wrong_type(
                    path,
                    "memory",
                    "a size",
                    other,
                    "for example `memory: 128M`",
                );
                return None;
            }
        };
        match parse_size(&text) {
            Ok(0) => {
                self.error(
                    self.pos.value(path),
                    "memory must be more than 0".to_owned(),
                    Some("for example `memory: 128M`".to_owned()),
                );
                None
            }
            Ok(b) if b < (4 << 20) => {
                self.error(
                    self.pos.value(path),
                    format!("memory {text} is below Docker's minimum of 4M"),
                    Some("for example `memory: 128M`".to_owned()),
                );
                None
            }
            Ok(b) => Some(b),
            Err(why) => {
                self.error(
                    self.pos.value(path),
                    format!("memory {text:?}: {why}"),
                    Some("a whole number with K, M or G, for example `memory: 128M`".to_owned()),
                );
                None
            }
        }
    }

    pub(super) fn string_list(
        &mut self,
        v: &Value,
        path: &[Seg],
        what: &str,
        hint: &str,
    ) -> Vec<String> {
        let items = match v {
            Value::Sequence(items) => items,
            Value::String(s) => return vec![s.clone()],
            other => {
                self.wrong_type(path, what, "a list of strings", other, hint);
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match it.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.wrong_type(
                    &with(path, Seg::Index(i)),
                    &format!("each of {what}"),
                    "a string",
                    it,
                    hint,
                ),
            }
        }
        out
    }

    pub(super) fn health(&mut self, v: &Value, path: &[Seg]) -> Option<Health> {
        let Value::Mapping(m) = v else {
            self.wrong_type(
                path,
                "health",
                "a mapping",
                v,
                "for example `health: { http: /, interval: 1s }` or `health: { tcp: true }`",
            );
            return None;
        };
        let mut probe = None;
        let mut h = Health {
            probe: Probe::Tcp,
            interval_ms: 1000,
            timeout_ms: 1000,
            retries: 3,
        };
        for (k, val) in self.keys(m, path, HEALTH_KEYS, "health") {
            let p = with(path, key(k));
            match k {
                "http" => match val.as_str() {
                    Some(s) if s.starts_with('/') => probe = Some(Probe::Http(s.to_owned())),
                    _ => self.error(
                        self.pos.value(&p),
                        "health.http must be a path starting with /".to_owned(),
                        Some("for example `http: /healthz`".to_owned()),
                    ),
                },
                "tcp" => match val.as_bool() {
                    Some(true) => probe = probe.or(Some(Probe::Tcp)),
                    Some(false) => {}
                    None => self.wrong_type(
                        &p,
                        "health.tcp",
                        "true or false",
                        val,
                        "`tcp: true` connects to the main port",
                    ),
                },
                "interval" | "timeout" => {
                    let text = match val {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    };
                    match text.as_deref().map(parse_duration_ms) {
                        Some(Ok(ms)) if ms > 0 => {
                            if k == "interval" {
                                h.interval_ms = ms
                            } else {
                                h.timeout_ms = ms
                            }
                        }
                        Some(Ok(_)) => self.error(
                            self.pos.value(&p),
                            format!("health.{k} must be more than 0"),
                            None,
                        ),
                        Some(Err(why)) => self.error(
                            self.pos.value(&p),
                            format!("health.{k}: {why}"),
                            Some("a whole number with ms, s or m, for example `1s`".to_owned()),
                        ),
                        None => self.wrong_type(
                            &p,
                            &format!("health.{k}"),
                            "a duration",
                            val,
                            "for example `1s` or `500ms`",
                        ),
                    }
                }
                "retries" => match val.as_u64() {
                    Some(n @ 1..=100) => h.retries = n as u32,
                    _ => self.error(
                        self.pos.value(&p),
                        "health.retries must be a whole number from 1 to 100".to_owned(),
                        None,
                    ),
                },
                _ => {}
            }
        }
        if m.contains_key("http") && matches!(m.get("tcp"), Some(Value::Bool(true))) {
            self.error(
                self.pos.value(path),
                "health has both http and tcp".to_owned(),
                Some("keep one".to_owned()),
            );
        }
        match probe {
            Some(p) => {
                h.probe = p;
                Some(h)
            }
            None => {
                if !m.contains_key("http") {
                    self.error(
                        self.pos.value(path),
                        "health says neither `http: PATH` nor `tcp: true`".to_owned(),
                        Some("for example `health: { http: / }`".to_owned()),
                    );
                }
                None
            }
        }
    }
}
