//! The cluster's own endpoints: [`ClusterView`] for [`Cluster`] (a server without stacks),
//! and how a cluster error becomes an HTTP answer.

use super::{ApiFailure, ClusterView, EnvChange, EnvView, GridView, Servers, Status};
use crate::cluster::{Cluster, ClusterError, Refusal};
use crate::rpc::server::BoxFuture;

impl From<ClusterError> for ApiFailure {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::Refused(Refusal::UnknownServer(_)) => 404,
            ClusterError::Refused(Refusal::Invalid(_)) => 400,
            ClusterError::Refused(_) => 409,
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
        Box::pin(async move { Ok(Cluster::set_env(self, change).await?) })
    }
}
