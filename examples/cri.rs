//! A minimal Kubernetes CRI client (what `crictl` does, for the calls stratafs's end-to-end test
//! makes), speaking `runtime.v1` over containerd's unix socket. Each subcommand prints one JSON
//! line on success; on failure it prints the gRPC code and message on stderr and exits with 1.
//!
//!   cargo build --release --example cri
//!   target/release/examples/cri --socket /run/containerd/containerd.sock pull IMAGE

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint, Uri};

#[allow(clippy::all, missing_docs)]
mod cri {
    tonic::include_proto!("runtime.v1");
}

use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

#[derive(Parser)]
#[command(about = "Minimal CRI client (runtime.v1) for stratafs's end-to-end tests")]
struct Cli {
    /// The CRI runtime's unix socket (containerd's gRPC address).
    #[arg(long, env = "CRI_SOCKET")]
    socket: PathBuf,
    /// Deadline of the call, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What identifies a pod (field names unlike the container's: clap's argument ids are the field
/// names, shared by flattened structs). The sandbox config is rebuilt from it for CreateContainer (which
/// wants the same config RunPodSandbox got, as the kubelet sends it).
#[derive(clap::Args, Clone)]
struct Pod {
    /// Pod name (metadata.name); the namespace is "default".
    #[arg(long)]
    pod_name: String,
    /// Pod UID; defaults to "uid-NAME".
    #[arg(long)]
    pod_uid: Option<String>,
    /// Sandbox attempt.
    #[arg(long, default_value_t = 0)]
    pod_attempt: u32,
    /// Directory for the containers' logs.
    #[arg(long = "log-dir")]
    log_dir: Option<PathBuf>,
    /// cgroup parent of the pod (cgroupfs path).
    #[arg(long = "cgroup-parent")]
    cgroup_parent: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and versions.
    Version,
    /// PullImage: prints the image reference (digest) the runtime resolved.
    Pull { image: String },
    /// ImageStatus of one image (id, size, tags).
    Inspecti { image: String },
    /// ListImages.
    Images,
    /// RemoveImage.
    Rmi { image: String },
    /// ImageFsInfo: the image filesystems' usage.
    Imagefsinfo,
    /// RunPodSandbox with host networking (no CNI needed).
    Runp {
        #[command(flatten)]
        pod: Pod,
    },
    /// PodSandboxStatus.
    Podstatus { id: String },
    /// StopPodSandbox.
    Stopp { id: String },
    /// RemovePodSandbox.
    Rmp { id: String },
    /// CreateContainer in a pod; the command follows `--`.
    Create {
        /// Pod sandbox id (from runp).
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        pod_config: Pod,
        /// Container name (metadata.name).
        #[arg(long)]
        name: String,
        /// Container attempt (the kubelet raises it on each restart).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        #[arg(long)]
        image: String,
        /// Read-only root filesystem.
        #[arg(long)]
        readonly_rootfs: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// StartContainer.
    Start { id: String },
    /// ContainerStatus: state, exit code, reason.
    Status { id: String },
    /// ExecSync; the command follows `--`.
    Exec {
        id: String,
        /// Timeout the runtime enforces, in seconds (0: none).
        #[arg(long = "exec-timeout", default_value_t = 60)]
        exec_timeout: i64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// StopContainer.
    Stop {
        id: String,
        /// Grace period in seconds before SIGKILL.
        #[arg(long, default_value_t = 0)]
        grace: i64,
    },
    /// RemoveContainer.
    Rm { id: String },
    /// ListContainers, optionally of one pod.
    Ps {
        #[arg(long)]
        pod: Option<String>,
    },
    /// ContainerStats: the writable layer's usage.
    Stats { id: String },
}

fn pod_config(p: &Pod) -> cri::PodSandboxConfig {
    let host = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: p.pod_name.clone(),
            uid: p
                .pod_uid
                .clone()
                .unwrap_or_else(|| format!("uid-{}", p.pod_name)),
            namespace: "default".into(),
            attempt: p.pod_attempt,
        }),
        hostname: String::new(),
        log_directory: p
            .log_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        labels: HashMap::from([("app".to_string(), p.pod_name.clone())]),
        annotations: HashMap::new(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: p.cgroup_parent.clone().unwrap_or_default(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host),
                readonly_rootfs: false,
                privileged: false,
            }),
        }),
    }
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        annotations: HashMap::new(),
    })
}

fn state_name(s: i32) -> &'static str {
    match cri::ContainerState::from_i32(s) {
        Some(cri::ContainerState::ContainerCreated) => "CONTAINER_CREATED",
        Some(cri::ContainerState::ContainerRunning) => "CONTAINER_RUNNING",
        Some(cri::ContainerState::ContainerExited) => "CONTAINER_EXITED",
        _ => "CONTAINER_UNKNOWN",
    }
}

fn fs_usage(u: &cri::FilesystemUsage) -> Value {
    json!({
        "mountpoint": u.fs_id.as_ref().map(|f| f.mountpoint.clone()),
        "used_bytes": u.used_bytes.as_ref().map(|v| v.value),
        "inodes_used": u.inodes_used.as_ref().map(|v| v.value),
        "timestamp": u.timestamp,
    })
}

async fn connect(socket: PathBuf, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    // The URI is required by the API but unused: the connector dials the unix socket.
    Endpoint::from_static("http://[::]:50051")
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
}

async fn run(cli: Cli) -> Result<Value, Box<dyn std::error::Error>> {
    let channel = connect(cli.socket, Duration::from_secs(cli.timeout)).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);
    let out = match cli.cmd {
        Cmd::Version => {
            let v = rt
                .version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await?
                .into_inner();
            json!({"runtime_name": v.runtime_name, "runtime_version": v.runtime_version,
                   "runtime_api_version": v.runtime_api_version})
        }
        Cmd::Pull { image } => {
            let r = img
                .pull_image(cri::PullImageRequest {
                    image: image_spec(&image),
                    auth: None,
                    sandbox_config: None,
                })
                .await?
                .into_inner();
            json!({"image_ref": r.image_ref})
        }
        Cmd::Inspecti { image } => {
            let r = img
                .image_status(cri::ImageStatusRequest {
                    image: image_spec(&image),
                    verbose: false,
                })
                .await?
                .into_inner();
            match r.image {
                Some(i) => json!({"id": i.id, "size": i.size, "repo_tags": i.repo_tags,
                                  "repo_digests": i.repo_digests}),
                None => json!({"id": null}),
            }
        }
        Cmd::Images => {
            let r = img
                .list_images(cri::ListImagesRequest { filter: None })
                .await?
                .into_inner();
            let list: Vec<Value> = r
                .images
                .iter()
                .map(|i| json!({"id": i.id, "size": i.size, "repo_tags": i.repo_tags}))
                .collect();
            json!({ "images": list })
        }
        Cmd::Rmi { image } => {
            img.remove_image(cri::RemoveImageRequest {
                image: image_spec(&image),
            })
            .await?;
            json!({"removed": image})
        }
        Cmd::Imagefsinfo => {
            let r = img
                .image_fs_info(cri::ImageFsInfoRequest {})
                .await?
                .into_inner();
            let list: Vec<Value> = r.image_filesystems.iter().map(fs_usage).collect();
            json!({ "image_filesystems": list })
        }
        Cmd::Runp { pod } => {
            let r = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod_config(&pod)),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner();
            json!({"pod_id": r.pod_sandbox_id})
        }
        Cmd::Podstatus { id } => {
            let r = rt
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: false,
                })
                .await?
                .into_inner();
            let s = r.status.unwrap_or_default();
            let ready = s.state == cri::PodSandboxState::SandboxReady as i32;
            json!({"id": s.id, "state": if ready { "SANDBOX_READY" } else { "SANDBOX_NOTREADY" }})
        }
        Cmd::Stopp { id } => {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            json!({"stopped": id})
        }
        Cmd::Rmp { id } => {
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            json!({"removed": id})
        }
        Cmd::Create {
            pod,
            pod_config: p,
            name,
            attempt,
            image,
            readonly_rootfs,
            command,
        } => {
            let sandbox = pod_config(&p);
            let ns = sandbox
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.clone());
            let config = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.clone(),
                    attempt,
                }),
                image: image_spec(&image),
                command,
                args: Vec::new(),
                working_dir: String::new(),
                envs: Vec::new(),
                mounts: Vec::new(),
                labels: HashMap::new(),
                annotations: HashMap::new(),
                log_path: if p.log_dir.is_some() {
                    format!("{name}_{attempt}.log")
                } else {
                    String::new()
                },
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        privileged: false,
                        namespace_options: ns,
                        readonly_rootfs,
                    }),
                }),
            };
            let r = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(sandbox),
                })
                .await?
                .into_inner();
            json!({"container_id": r.container_id})
        }
        Cmd::Start { id } => {
            rt.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            json!({"started": id})
        }
        Cmd::Status { id } => {
            let r = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await?
                .into_inner();
            let s = r.status.unwrap_or_default();
            json!({"id": s.id, "state": state_name(s.state), "exit_code": s.exit_code,
                   "reason": s.reason, "message": s.message, "image_ref": s.image_ref,
                   "started_at": s.started_at, "finished_at": s.finished_at})
        }
        Cmd::Exec {
            id,
            exec_timeout,
            command,
        } => {
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout: exec_timeout,
                })
                .await?
                .into_inner();
            json!({"exit_code": r.exit_code,
                   "stdout": String::from_utf8_lossy(&r.stdout),
                   "stderr": String::from_utf8_lossy(&r.stderr)})
        }
        Cmd::Stop { id, grace } => {
            rt.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: grace,
            })
            .await?;
            json!({"stopped": id})
        }
        Cmd::Rm { id } => {
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            json!({"removed": id})
        }
        Cmd::Ps { pod } => {
            let r = rt
                .list_containers(cri::ListContainersRequest {
                    filter: pod.map(|p| cri::ContainerFilter {
                        id: String::new(),
                        pod_sandbox_id: p,
                    }),
                })
                .await?
                .into_inner();
            let list: Vec<Value> = r
                .containers
                .iter()
                .map(|c| {
                    json!({"id": c.id, "pod_id": c.pod_sandbox_id, "state": state_name(c.state),
                           "name": c.metadata.as_ref().map(|m| m.name.clone())})
                })
                .collect();
            json!({ "containers": list })
        }
        Cmd::Stats { id } => {
            let r = rt
                .container_stats(cri::ContainerStatsRequest { container_id: id })
                .await?
                .into_inner();
            let w = r.stats.and_then(|s| s.writable_layer);
            json!({ "writable_layer": w.as_ref().map(fs_usage) })
        }
    };
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("cri: {:?}: {}", s.code(), s.message()),
                None => eprintln!("cri: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
