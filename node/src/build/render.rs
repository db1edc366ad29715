//! A plan for people, like `nomad job plan`: what changes and why, then what stays.

use std::fmt::Write as _;

use super::{Instruction, Plan, RouteAction};
use crate::spec::units::format_size;
use crate::types::{DesiredContainer, ImageSource};

/// What a rendered plan shows of env values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvValues {
    /// Names only, each value shown as [`REDACTED`] (values may be secrets).
    Redacted,
    /// The values too (`quarry plan --show-env`).
    Shown,
}

/// What a hidden env value is shown as.
pub const REDACTED: &str = "redacted";

/// Render `plan` as text, env values redacted. `+` adds, `~` changes in place, `-` removes,
/// `=` is left alone.
pub fn render(plan: &Plan) -> String {
    render_with(plan, EnvValues::Redacted)
}

/// Render `plan` as text, showing `env` values as asked.
pub fn render_with(plan: &Plan, env: EnvValues) -> String {
    let mut out = String::new();
    let n = plan.instructions.len();
    let _ = writeln!(
        out,
        "Plan for stack {:?}: {}",
        plan.stack,
        match n {
            0 => "nothing to do".to_owned(),
            1 => "1 instruction".to_owned(),
            _ => format!("{n} instructions"),
        }
    );
    for ins in &plan.instructions {
        out.push('\n');
        match ins {
            Instruction::Ensure {
                node,
                from,
                to,
                reasons,
                container,
                stop,
            } => {
                let sign = if from.is_some() { '~' } else { '+' };
                let _ = writeln!(
                    out,
                    "{sign} ENSURE  {node}  {}  ({})",
                    revs(*from, *to),
                    reasons.join("; ")
                );
                describe(&mut out, std::slice::from_ref(container.as_ref()), env);
                if !stop.is_empty() {
                    let _ = writeln!(out, "    then stop: {}", join(stop));
                }
            }
            Instruction::Deploy {
                node,
                from,
                to,
                reasons,
                containers,
                stop,
            } => {
                let sign = if from.is_some() { '~' } else { '+' };
                let _ = writeln!(
                    out,
                    "{sign} DEPLOY  {node}  {}  ({})",
                    revs(*from, *to),
                    reasons.join("; ")
                );
                describe(&mut out, containers, env);
                if !stop.is_empty() {
                    let _ = writeln!(out, "    once healthy, stop: {}", join(stop));
                }
            }
            Instruction::Scale {
                node,
                revision,
                from,
                to,
                add,
                remove,
            } => {
                let _ = writeln!(
                    out,
                    "~ SCALE   {node}  r{revision}  {from} -> {to} replicas"
                );
                for c in add {
                    let _ = writeln!(out, "    + replica {} ({})", c.replica, c.slice);
                }
                for s in remove {
                    let _ = writeln!(out, "    - {s}");
                }
            }
            Instruction::Route {
                domain,
                node,
                port,
                action,
            } => match action {
                RouteAction::Add => {
                    let _ = writeln!(out, "+ ROUTE   {domain} -> {node}:{port}");
                }
                RouteAction::Remove => {
                    let _ = writeln!(out, "- ROUTE   {domain} (was {node})");
                }
            },
            Instruction::Kill {
                node,
                revision,
                slices,
                reason,
            } => {
                let _ = writeln!(
                    out,
                    "- KILL    {node}  r{revision}  {} replica{} ({reason})",
                    slices.len(),
                    if slices.len() == 1 { "" } else { "s" }
                );
                for s in slices {
                    let _ = writeln!(out, "    - {s}");
                }
            }
        }
    }
    if !plan.unchanged.is_empty() {
        out.push('\n');
        for (node, rev) in &plan.unchanged {
            let _ = writeln!(out, "= {node}  r{rev}  unchanged");
        }
    }
    if !plan.routes.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "Routes once applied:");
        for r in &plan.routes {
            let _ = writeln!(out, "  http://{}  -> {}:{}", r.domain, r.node, r.port);
        }
    }
    out
}

fn revs(from: Option<u64>, to: u64) -> String {
    match from {
        Some(f) => format!("r{f} -> r{to}"),
        None => format!("r{to}"),
    }
}

fn join(slices: &[crate::types::SliceId]) -> String {
    slices
        .iter()
        .map(|s| s.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The containers of one instruction: all replicas share image, command, env and size, so
/// they are described once.
fn describe(out: &mut String, containers: &[DesiredContainer], env: EnvValues) {
    let Some(c) = containers.first() else { return };
    let image = match &c.image {
        ImageSource::Image(n) => n.clone(),
        ImageSource::Build { dir, tag, .. } => format!("{tag} (built from {dir}/)"),
    };
    let _ = writeln!(
        out,
        "    {} × {}  {}  image {image}",
        containers.len(),
        format_size(c.memory),
        c.kind
    );
    if let Some(cmd) = &c.command {
        let _ = writeln!(out, "    command {:?}", cmd.argv());
    }
    if !c.ports.is_empty() {
        let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(out, "    ports {}", ports.join(", "));
    }
    for (k, v) in &c.env {
        let v = match env {
            EnvValues::Redacted => REDACTED,
            EnvValues::Shown => v.as_str(),
        };
        let _ = writeln!(out, "    env {k}={v}");
    }
}
