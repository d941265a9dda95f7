//! A blocking CRI v1 client over containerd's Unix socket: the tonic client `k8s-cri`
//! generates, driven by a small runtime of its own, one method per RPC the tests make.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub type CriResult<T> = Result<T, tonic::Status>;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// Longest any one RPC may take (a VM's first boot included).
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let socket = socket.to_path_buf();
        let channel = rt.block_on(
            Endpoint::from_static("http://[::]:50051")
                .timeout(RPC_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                })),
        )?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn block<T, F>(&self, call: F) -> CriResult<T>
    where
        F: Future<Output = CriResult<tonic::Response<T>>>,
    {
        self.rt.block_on(call).map(tonic::Response::into_inner)
    }

    pub fn image_status(&self, image: &str) -> CriResult<ImageStatusResponse> {
        self.block(self.images.clone().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }))
    }

    pub fn run_pod_sandbox(&self, config: PodSandboxConfig, handler: &str) -> CriResult<String> {
        self.block(self.runtime.clone().run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        }))
        .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> CriResult<PodSandboxStatusResponse> {
        self.block(
            self.runtime
                .clone()
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: true,
                }),
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        self.block(
            self.runtime
                .clone()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        self.block(
            self.runtime
                .clone()
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }),
        )
        .map(drop)
    }

    pub fn pod_ids(&self) -> CriResult<Vec<String>> {
        self.block(
            self.runtime
                .clone()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .map(|r| r.items.into_iter().map(|p| p.id).collect())
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> CriResult<String> {
        self.block(
            self.runtime
                .clone()
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.into(),
                    config: Some(config),
                    sandbox_config: Some(sandbox.clone()),
                }),
        )
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> CriResult<()> {
        self.block(self.runtime.clone().start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .map(drop)
    }

    pub fn stop_container(&self, id: &str, grace_seconds: i64) -> CriResult<()> {
        self.block(self.runtime.clone().stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: grace_seconds,
        }))
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> CriResult<ContainerStatus> {
        self.block(
            self.runtime
                .clone()
                .container_status(ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                }),
        )
        .map(|r| r.status.unwrap_or_default())
    }

    pub fn containers_of(&self, pod: &str) -> CriResult<Vec<Container>> {
        self.block(self.runtime.clone().list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        }))
        .map(|r| r.containers)
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> CriResult<ExecSyncResponse> {
        self.block(self.runtime.clone().exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        }))
    }

    /// Exec (streaming): the URL of containerd's streaming server to attach to.
    pub fn exec(&self, id: &str, cmd: &[&str], tty: bool) -> CriResult<String> {
        self.block(self.runtime.clone().exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        }))
        .map(|r| r.url)
    }

    /// Attach (streaming) to a container started with a terminal and stdin: the URL to attach to.
    pub fn attach(&self, id: &str) -> CriResult<String> {
        self.block(self.runtime.clone().attach(AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        }))
        .map(|r| r.url)
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> CriResult<()> {
        self.block(self.runtime.clone().update_container_resources(
            UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                ..Default::default()
            },
        ))
        .map(drop)
    }

    pub fn container_stats(&self, id: &str) -> CriResult<ContainerStats> {
        self.block(self.runtime.clone().container_stats(ContainerStatsRequest {
            container_id: id.into(),
        }))
        .map(|r| r.stats.unwrap_or_default())
    }

    pub fn list_container_stats(&self, pod: &str) -> CriResult<Vec<ContainerStats>> {
        self.block(
            self.runtime
                .clone()
                .list_container_stats(ListContainerStatsRequest {
                    filter: Some(ContainerStatsFilter {
                        pod_sandbox_id: pod.into(),
                        ..Default::default()
                    }),
                }),
        )
        .map(|r| r.stats)
    }
}
