//! docker-compose.yml cannot run here (no container engine), so this keeps
//! it honest: every service runs a binary of this workspace, and every
//! environment variable it sets is one that binary reads (per its --help).

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
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

#[test]
fn compose_services_use_real_binaries_flags_and_variables() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml at the repository root");
    let compose: Compose = serde_yaml::from_str(&text).expect("valid compose YAML");
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
