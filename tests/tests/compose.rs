//! docker-compose.yml cannot run here (no container engine), so this keeps
//! it honest: every service runs a binary of this workspace, and every
//! environment variable it sets is one that binary reads (per its --help);
//! every service is restarted when it exits; the `cluster` profile's three
//! NATS servers route to each other with JetStream, with flags the real
//! nats-server accepts.

use std::collections::BTreeMap;
use std::process::Command;

use system_tests::bin_path;

#[derive(serde::Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(serde::Deserialize)]
struct Service {
    #[serde(default)]
    build: Option<serde_yaml::Value>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    profiles: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

fn compose() -> Compose {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml at the repository root");
    serde_yaml::from_str(&text).expect("valid compose YAML")
}

#[test]
fn compose_services_use_real_binaries_flags_and_variables() {
    let compose = compose();
    let mut built = 0;
    for (name, svc) in &compose.services {
        if svc.build.is_none() {
            continue;
        }
        built += 1;
        let bin = svc
            .command
            .first()
            .unwrap_or_else(|| panic!("service {name} names its binary in command"));
        let help = Command::new(bin_path(bin))
            .arg("--help")
            .output()
            .expect("binary runs");
        assert!(help.status.success(), "{bin} --help failed");
        let help = String::from_utf8_lossy(&help.stdout);
        for arg in &svc.command[1..] {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("--{flag}")),
                    "service {name}: {bin} has no flag --{flag}"
                );
            }
        }
        for key in svc.environment.keys() {
            if key == "RUST_LOG" {
                continue;
            }
            assert!(
                help.contains(&format!("env: {key}")),
                "service {name}: {bin} does not read {key}"
            );
        }
    }
    assert_eq!(
        built, 4,
        "api, two workers and the janitor are built from the repository"
    );
    for needed in ["nats", "api", "janitor"] {
        assert!(
            compose.services.contains_key(needed),
            "service {needed} missing"
        );
    }
    assert!(
        compose
            .services
            .keys()
            .filter(|k| k.starts_with("worker"))
            .count()
            >= 2
    );
}

#[test]
fn every_compose_service_is_restarted_when_it_exits() {
    for (name, svc) in &compose().services {
        assert!(
            matches!(svc.restart.as_deref(), Some("unless-stopped" | "always")),
            "service {name} has no restart policy (restart: {:?})",
            svc.restart
        );
    }
}

/// The value after `flag` in `command`.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1))
        .map(String::as_str)
}

#[test]
fn the_cluster_profile_runs_three_routed_nats_servers_with_jetstream() {
    let compose = compose();
    let members: Vec<(&String, &Service)> = compose
        .services
        .iter()
        .filter(|(_, s)| s.profiles.iter().any(|p| p == "cluster"))
        .collect();
    assert_eq!(members.len(), 3, "three servers in the cluster profile");
    let help = Command::new(system_tests::nats_server_bin())
        .arg("--help")
        .output()
        .expect("nats-server runs");
    let help =
        String::from_utf8_lossy(&help.stdout).to_string() + &String::from_utf8_lossy(&help.stderr);
    let mut names = std::collections::BTreeSet::new();
    for (name, svc) in &members {
        assert!(
            svc.image.as_deref().is_some_and(|i| i.starts_with("nats:")),
            "{name} runs nats-server"
        );
        for arg in svc.command.iter().filter(|a| a.starts_with('-')) {
            assert!(
                help.contains(&format!("{arg} ")) || help.contains(&format!("{arg},")),
                "{name}: nats-server has no flag {arg}"
            );
        }
        assert!(svc.command.iter().any(|a| a == "-js"), "{name}: JetStream");
        assert_eq!(
            flag(&svc.command, "--cluster_name"),
            Some("streams"),
            "{name}"
        );
        assert_eq!(flag(&svc.command, "--server_name"), Some(name.as_str()));
        assert_eq!(
            flag(&svc.command, "--cluster"),
            Some("nats://0.0.0.0:6222"),
            "{name} listens for routes"
        );
        let routes = flag(&svc.command, "--routes").expect("routes");
        for (other, _) in &members {
            assert!(
                routes.contains(&format!("nats://{other}:6222")),
                "{name} routes to {other}: {routes}"
            );
        }
        names.insert(name.as_str());
    }
    assert_eq!(names.len(), 3, "distinct server names");
    // The services default to the single server and take a list instead.
    for (name, svc) in compose.services.iter().filter(|(_, s)| s.build.is_some()) {
        assert_eq!(
            svc.environment.get("NATS_URL").map(String::as_str),
            Some("${NATS_URL:-nats://nats:4222}"),
            "{name}"
        );
    }
}
