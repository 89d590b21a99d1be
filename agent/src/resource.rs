//! The resource every signal carries: who is sending. Detected once when the
//! agent starts, so replicas of one service never share a series identity:
//! `service.instance.id` is a fresh UUID v4 per agent, and the host, process,
//! runtime and container (when there is one) are named. `OTEL_RESOURCE_ATTRIBUTES`
//! (and `AgentBuilder::resource_attribute`) override what was detected, key by key.

use std::borrow::Cow;

use crate::config::Config;
use crate::core::value::Value;

pub const SDK_NAME: &str = "agent";
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The detected attributes merged with the configured ones, in a stable order.
pub(crate) fn build(config: &Config) -> Vec<(Cow<'static, str>, Value)> {
    let mut attributes: Vec<(Cow<'static, str>, Value)> = vec![
        ("service.name".into(), config.service_name.clone().into()),
        (
            "service.instance.id".into(),
            uuid::Uuid::new_v4().to_string().into(),
        ),
        ("telemetry.sdk.name".into(), SDK_NAME.into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        ("telemetry.sdk.version".into(), SDK_VERSION.into()),
        ("process.pid".into(), i64::from(std::process::id()).into()),
        ("process.runtime.name".into(), "rustc".into()),
        ("os.type".into(), std::env::consts::OS.into()),
        ("host.arch".into(), host_arch().into()),
    ];
    // Set by build.rs from the compiler that built this crate.
    if let Some(version) = option_env!("AGENT_RUSTC_VERSION") {
        attributes.push(("process.runtime.version".into(), version.into()));
    }
    if let Some(description) = option_env!("AGENT_RUSTC_DESCRIPTION") {
        attributes.push(("process.runtime.description".into(), description.into()));
    }
    if let Some(host) = host_name() {
        attributes.push(("host.name".into(), host.into()));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(name) = exe.file_name().and_then(|n| n.to_str()) {
            attributes.push(("process.executable.name".into(), name.to_string().into()));
        }
        attributes.push((
            "process.executable.path".into(),
            exe.display().to_string().into(),
        ));
    }
    if let Some(id) = container_id() {
        attributes.push(("container.id".into(), id.into()));
    }
    for (key, value) in &config.resource_attributes {
        let value = Value::from(value.clone());
        match attributes.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => attributes.push((key.clone().into(), value)),
        }
    }
    attributes
}

/// `host.arch` uses the semantic conventions' names, not Rust's.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname writes
    // at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// The container this process runs in, read the way the OpenTelemetry SDKs do:
/// the cgroup v1 path first, then (cgroup v2, where the path is just `/`) the
/// container runtime's `hostname` bind mount.
fn container_id() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    from_cgroup(&cgroup).or_else(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        from_mountinfo(&mountinfo)
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// cgroup v1 lines `hierarchy:controllers:path`, the id being the last path
/// segment, bare (`/docker/<id>`) or wrapped by systemd
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, `cri-containerd:<id>`).
fn from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let last = line.rsplit('/').next()?;
        let last = last.strip_suffix(".scope").unwrap_or(last);
        let id = last.rsplit(['-', ':']).next()?;
        is_container_id(id).then(|| id.to_string())
    })
}

/// cgroup v2: the mount root of `/etc/hostname`, e.g.
/// `/var/lib/docker/containers/<id>/hostname` or (podman)
/// `…/overlay-containers/<id>/userdata/hostname`. Kubernetes sandboxes (the pause
/// container) are not the process's container and are skipped.
fn from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter(|line| line.contains("hostname") && !line.contains("/sandboxes/"))
        .find_map(|line| {
            // Fields: id parent major:minor root mount-point …; the root holds the id.
            let root = line.split_whitespace().nth(3)?;
            let segments: Vec<&str> = root.split('/').collect();
            segments.windows(2).find_map(|pair| {
                matches!(pair[0], "containers" | "overlay-containers")
                    .then_some(pair[1])
                    .filter(|id| is_container_id(id))
                    .map(str::to_string)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3c0b3fd56df0ba8b5a1d5f4f6d0e6b6a7c4d0c1d1f5d3d8e6a4b3d5f9c8a7b6e";

    #[test]
    fn container_id_from_cgroup_v1_paths() {
        for line in [
            format!("12:memory:/docker/{ID}"),
            format!("11:cpu:/kubepods/burstable/pod1234/{ID}"),
            format!("1:name=systemd:/system.slice/docker-{ID}.scope"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("5:pids:/machine.slice/libpod-{ID}.scope"),
            format!("7:devices:/system.slice/crio-{ID}.scope"),
        ] {
            let cgroup = format!("3:cpuset:/\n{line}\n");
            assert_eq!(from_cgroup(&cgroup).as_deref(), Some(ID), "{line}");
        }
        // Not in a container: the paths name no id.
        let host =
            "9:name=systemd:/\n4:memory:/process_api/cdfe7fd95103fe93cd7195ab5ee2d93b\n0::/\n";
        assert_eq!(from_cgroup(host), None);
    }

    #[test]
    fn container_id_from_cgroup_v2_mountinfo() {
        let docker = format!(
            "651 638 0:50 / / rw,relatime - overlay overlay rw\n\
             675 651 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(from_mountinfo(&docker).as_deref(), Some(ID));
        let podman = format!(
            "1 2 0:5 /containers/storage/overlay-containers/{ID}/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n"
        );
        assert_eq!(from_mountinfo(&podman).as_deref(), Some(ID));
        let sandbox = format!(
            "1 2 0:5 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/hostname /etc/hostname rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(from_mountinfo(&sandbox), None);
    }

    #[test]
    fn configured_attributes_override_detected_ones() {
        let config = Config {
            service_name: "checkout".into(),
            resource_attributes: vec![
                ("service.instance.id".into(), "pod-7".into()),
                ("deployment.environment.name".into(), "prod".into()),
            ],
            ..Config::default()
        };
        let attributes = build(&config);
        let get = |key: &str| {
            attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("service.name"), Some("checkout".to_string().into()));
        assert_eq!(get("service.instance.id"), Some("pod-7".to_string().into()));
        assert_eq!(
            get("process.pid"),
            Some(Value::I64(i64::from(std::process::id())))
        );
        assert!(get("host.name").is_some());
        assert!(get("process.runtime.version").is_some());
        assert_eq!(
            attributes
                .iter()
                .filter(|(k, _)| k == "service.instance.id")
                .count(),
            1
        );
        let other = build(&Config::default());
        let id = |attrs: &[(Cow<'static, str>, Value)]| {
            attrs
                .iter()
                .find(|(k, _)| k == "service.instance.id")
                .map(|(_, v)| v.clone())
        };
        assert_ne!(id(&other), id(&build(&Config::default())));
    }
}
