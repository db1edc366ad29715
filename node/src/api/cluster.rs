//! The cluster's own endpoints: [`ClusterView`] for [`Cluster`] (a server without stacks),
//! and how a cluster error becomes an HTTP answer.

use std::collections::BTreeMap;

use super::{ApiFailure, ClusterView, EnvChange, EnvView, GridView, Servers, Status};
use crate::cluster::{Cluster, ClusterError, Refusal};
use crate::rpc::server::BoxFuture;
use crate::spec::limits::{check_env, check_env_value, EnvTooLarge};

impl From<EnvTooLarge> for ApiFailure {
    fn from(e: EnvTooLarge) -> Self {
        ApiFailure {
            status: 413,
            message: e.to_string(),
        }
    }
}

/// The env limits on a change, before any of it is read from the cluster: each value set
/// against [`crate::spec::limits::MAX_ENV_VALUE_BYTES`], naming its key.
pub fn check_env_values(change: &EnvChange) -> Result<(), EnvTooLarge> {
    change
        .set
        .iter()
        .try_for_each(|(k, v)| check_env_value(k, v))
}

/// The env limits on `current` after `change`: the whole env against
/// [`crate::spec::limits::MAX_ENV_BYTES`]. Checked on the env as last read, before the write
/// is proposed (a concurrent change may slip past by one write; the command cap,
/// [`crate::cluster::MAX_COMMAND`], still bounds each).
pub fn check_env_change(
    current: &BTreeMap<String, String>,
    change: &EnvChange,
) -> Result<(), EnvTooLarge> {
    check_env_values(change)?;
    let mut after = current.clone();
    for k in &change.unset {
        after.remove(k);
    }
    after.extend(change.set.iter().map(|(k, v)| (k.clone(), v.clone())));
    let what = match &change.stack {
        None => "the global env".to_owned(),
        Some(s) => format!("stack {s}'s env"),
    };
    check_env(&what, &after)
}

impl From<ClusterError> for ApiFailure {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::Refused(Refusal::UnknownServer(_)) => 404,
            ClusterError::Refused(Refusal::Invalid(_)) => 400,
            ClusterError::Refused(_) => 409,
            ClusterError::TooLarge { .. } => 413,
            ClusterError::NoLeader { .. } | ClusterError::LeaderUnreachable { .. } => 503,
            ClusterError::Stopped | ClusterError::Failed(_) => 500,
        };
        ApiFailure {
            status,
            message: e.to_string(),
        }
    }
}

impl ClusterView for Cluster {
    fn name(&self) -> String {
        self.me().name
    }

    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(self.status_view())
    }

    fn servers(&self) -> BoxFuture<'_, Result<Servers, ApiFailure>> {
        Box::pin(async move { Ok(self.servers_view().await?) })
    }

    fn remove_server(&self, name: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move { Ok(Cluster::remove_server(self, name).await?) })
    }

    fn grid(&self) -> BoxFuture<'_, Result<GridView, ApiFailure>> {
        Box::pin(async move { Ok(self.grid_view().await?) })
    }

    fn env(&self, stack: Option<String>) -> BoxFuture<'_, Result<EnvView, ApiFailure>> {
        Box::pin(async move { Ok(self.env_view(stack).await?) })
    }

    fn set_env(&self, change: EnvChange) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move {
            check_env_values(&change)?;
            if !change.set.is_empty() {
                let current = self.env_view(change.stack.clone()).await?.env;
                check_env_change(&current, &change)?;
            }
            Ok(Cluster::set_env(self, change).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spec::limits::{MAX_ENV_BYTES, MAX_ENV_VALUE_BYTES};

    fn set(stack: Option<&str>, vars: &[(&str, usize)]) -> EnvChange {
        EnvChange {
            stack: stack.map(str::to_owned),
            set: vars
                .iter()
                .map(|&(k, n)| (k.to_owned(), "v".repeat(n)))
                .collect(),
            unset: vec![],
        }
    }

    #[test]
    fn an_env_value_above_64_kib_is_413_naming_the_key_and_the_size() {
        let ok = set(None, &[("A", MAX_ENV_VALUE_BYTES)]);
        check_env_change(&BTreeMap::new(), &ok).expect("at the limit");
        let big = set(None, &[("A", 1), ("BLOB", MAX_ENV_VALUE_BYTES + 1)]);
        let f = ApiFailure::from(check_env_values(&big).expect_err("refused"));
        assert_eq!(f.status, 413);
        let size = (MAX_ENV_VALUE_BYTES + 1).to_string();
        assert!(
            f.message.contains("BLOB") && f.message.contains(&size),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_stack_env_above_1_mib_in_all_is_refused_counting_what_is_there() {
        // 16 values of 60 KiB are there; 2 more pass 1 MiB in all.
        let current: BTreeMap<String, String> = (0..16)
            .map(|i| (format!("K{i:02}"), "v".repeat(60 << 10)))
            .collect();
        let more = set(Some("shop"), &[("X", 60 << 10), ("Y", 60 << 10)]);
        let e = check_env_change(&current, &more).expect_err("over 1 MiB in all");
        assert!(
            matches!(&e, EnvTooLarge::Total { what, size, .. }
                if what == "stack shop's env" && *size > MAX_ENV_BYTES),
            "{e}"
        );
        assert_eq!(ApiFailure::from(e).status, 413);
        // Unsetting as much as is set keeps it under.
        let swap = EnvChange {
            unset: vec!["K00".to_owned(), "K01".to_owned()],
            ..more
        };
        check_env_change(&current, &swap).expect("same size as before");
    }

    #[test]
    fn a_command_too_large_is_413_naming_the_limit_and_the_size() {
        let f = ApiFailure::from(ClusterError::TooLarge {
            what: "env".to_owned(),
            size: 5_000_000,
            limit: crate::cluster::MAX_COMMAND,
        });
        assert_eq!(f.status, 413);
        assert!(
            f.message.contains("5000000") && f.message.contains("4194304"),
            "{}",
            f.message
        );
    }
}
