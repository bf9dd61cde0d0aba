//! The runtimes of one machine behind one [`Runtime`]: each revision goes to
//! the process runtime or the container runtime by a rule a user can
//! predict (see [`LocalRuntime::of`]): the template's
//! `pilotlight.dev/runtime` annotation when set, else containers when any
//! container names an image, else processes.

use std::sync::Arc;

use super::container::ContainerRuntime;
use super::process::ProcessRuntime;
use super::{CannotRun, Deployment, Runtime, Workload};
use crate::api::pod::LocalRuntime;

pub(crate) struct LocalRuntimes {
    pub process: ProcessRuntime,
    pub container: ContainerRuntime,
}

#[async_trait::async_trait]
impl Runtime for LocalRuntimes {
    fn name_for(&self, workload: &Workload) -> &'static str {
        // A bad annotation is refused by `deploy` with its field; name the
        // runtime the images would pick meanwhile.
        LocalRuntime::of(&workload.template)
            .unwrap_or(LocalRuntime::Process)
            .name()
    }

    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun> {
        match LocalRuntime::of(&workload.template).map_err(|e| CannotRun(e.to_string()))? {
            LocalRuntime::Process => self.process.deploy(workload),
            LocalRuntime::Container => self.container.deploy(workload),
        }
    }

    async fn exit(&self) {
        self.container.exit().await;
    }
}
