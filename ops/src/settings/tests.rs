//! Settings: defaults, layering, validation, and Armada's forms.

use super::*;

#[test]
fn defaults_are_valid_and_armada_like() {
    let s = Settings::load(None, &BTreeMap::new()).expect("defaults load");
    assert_eq!(
        s.api_listen().expect("api").tcp("api").expect("tcp").port(),
        8443
    );
    assert_eq!(s.rest_listen().expect("rest").port(), 8079);
    assert_eq!(s.tick().expect("tick"), Duration::from_millis(50));
    assert_eq!(s.members().expect("members").len(), 1);
}

#[test]
fn overrides_beat_the_file() {
    let dir = std::env::temp_dir().join(format!("flotilla-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "data-dir = \"/from/file\"\n[raft]\nnode-id = 2\ninitial-members = \"1=a:1,2=b:2\"\n",
    )
    .expect("write");
    let mut o = BTreeMap::new();
    o.insert("data-dir".to_owned(), "/from/flag".to_owned());
    let s = Settings::load(Some(&file), &o).expect("load");
    assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
    assert_eq!(s.raft.node_id, 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_values_are_explained() {
    let bad = |k: &str, v: &str| {
        let mut o = BTreeMap::new();
        o.insert(k.to_owned(), v.to_owned());
        Settings::load(None, &o).expect_err("must fail").to_string()
    };
    assert!(bad("raft.rtt", "fast").contains("raft.rtt"));
    assert!(bad("raft.initial-members", "2=x:1").contains("does not name"));
    assert!(bad("api.address", "nowhere").contains("api.address"));
    assert!(bad("raft.node-id", "0").contains("raft.node-id"));
}

fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let o = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::load(None, &o)
}

#[test]
fn an_unknown_key_in_a_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[tables]\ntokn = \"secret\"\n").expect("write");
    let err = Settings::load(Some(&file), &BTreeMap::new())
        .expect_err("misspelled key")
        .to_string();
    assert!(err.contains("tokn"), "{err}");
    let file = dir.path().join("d.yaml");
    std::fs::write(&file, "apii:\n  address: x\n").expect("write");
    let err = Settings::load(Some(&file), &BTreeMap::new())
        .expect_err("unknown section")
        .to_string();
    assert!(err.contains("apii"), "{err}");
}

#[test]
fn an_unknown_environment_variable_is_refused_by_name() {
    let vars = |name: &str| vec![(name.to_owned(), "x".to_owned())];
    assert!(check_environment(vars("FLOTILLA_TABLES_TOKEN")).is_ok());
    assert!(check_environment(vars("FLOTILLA_CONFIG")).is_ok());
    assert!(
        check_environment(vars("FLOTILLA_TOKEN")).is_ok(),
        "a client variable"
    );
    assert!(check_environment(vars("PATH")).is_ok());
    let err = check_environment(vars("FLOTILLA_TABLES_TOKN"))
        .expect_err("misspelled")
        .to_string();
    assert!(err.contains("FLOTILLA_TABLES_TOKN"), "{err}");
}

#[test]
fn armada_ordered_members_get_ids_by_position() {
    let s = load(&[
        ("raft.node-id", "2"),
        ("raft.address", "127.0.0.1:5013"),
        (
            "raft.initial-members",
            "127.0.0.1:5012,127.0.0.1:5013,127.0.0.1:5014",
        ),
    ])
    .expect("ordered list");
    let m = s.members().expect("members");
    assert_eq!(m.get(&1).map(String::as_str), Some("127.0.0.1:5012"));
    assert_eq!(m.get(&3).map(String::as_str), Some("127.0.0.1:5014"));
    assert!(load(&[("raft.initial-members", "1=a:1,b:2")]).is_err());
    assert!(load(&[("raft.initial-members", "a:1,a:1")]).is_err());
}

#[test]
fn tls_settings_must_be_consistent() {
    let err = |pairs: &[(&str, &str)]| load(pairs).expect_err("refused").to_string();
    assert!(err(&[("api.cert-filename", "/c.pem")]).contains("api.cert-filename"));
    assert!(err(&[("api.address", "https://127.0.0.1:1")]).contains("api.cert-filename"));
    assert!(
        err(&[
            ("api.address", "https://127.0.0.1:1"),
            ("api.cert-filename", "/c"),
            ("api.key-filename", "/k"),
            ("api.client-cert-auth", "true"),
        ])
        .contains("api.ca-filename")
    );
    assert!(err(&[("raft.tls-cert-file", "/c")]).contains("all three"));
    let ok = load(&[
        ("api.address", "https://127.0.0.1:1"),
        ("api.cert-filename", "/c"),
        ("api.key-filename", "/k"),
        ("api.client-cert-auth", "true"),
        ("api.ca-filename", "/ca"),
        ("api.allowed-cn", "follower"),
    ])
    .expect("consistent mTLS");
    let tls = ok.api_tls().expect("tls").expect("on");
    let auth = tls.client_auth.expect("mTLS");
    assert_eq!(auth.allowed_cn.as_deref(), Some("follower"));
    let follower = load(&[
        ("replication.leader-address", "https://leader:8444"),
        ("replication.ca-filename", "/ca"),
        ("replication.server-name", "leader.example"),
    ])
    .expect("follower TLS");
    let client = follower.leader_client_tls().expect("tls").expect("on");
    assert_eq!(client.server_name.as_deref(), Some("leader.example"));
    assert!(
        load(&[("replication.server-name", "x")])
            .expect("loads")
            .leader_client_tls()
            .is_err()
    );
}

#[test]
fn tokens_are_masked_in_status_and_debug_output() {
    let s = load(&[
        ("tables.token", "t0ps3cret"),
        ("maintenance.token", "m41nt"),
    ])
    .expect("tokens");
    assert_eq!(s.tables.token.expose(), "t0ps3cret");
    let flat = s.flatten();
    assert_eq!(flat.get("tables.token").map(String::as_str), Some(MASK));
    assert_eq!(
        flat.get("maintenance.token").map(String::as_str),
        Some(MASK)
    );
    assert!(
        !flat
            .values()
            .any(|v| v.contains("t0ps3cret") || v.contains("m41nt"))
    );
    let debug = format!("{s:?}");
    assert!(
        !debug.contains("t0ps3cret") && !debug.contains("m41nt"),
        "{debug}"
    );
}

#[test]
fn env_names_and_flattening() {
    assert_eq!(env_var("raft.node-id"), "FLOTILLA_RAFT_NODE_ID");
    let flat = Settings::default().flatten();
    assert_eq!(
        flat.get("api.address").map(String::as_str),
        Some("http://0.0.0.0:8443")
    );
    assert_eq!(flat.get("raft.node-id").map(String::as_str), Some("1"));
}

#[test]
fn config_files_are_found_in_search_order() {
    let root = tempfile::tempdir().expect("dir");
    let dirs: Vec<PathBuf> = ["etc", "home", "cwd"]
        .iter()
        .map(|d| root.path().join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir(d).expect("mkdir");
    }
    assert_eq!(first_config_file(&dirs), None, "nothing there yet");
    std::fs::write(dirs[2].join("config.json"), "{}").expect("write");
    assert_eq!(first_config_file(&dirs), Some(dirs[2].join("config.json")));
    std::fs::write(dirs[1].join("config.yaml"), "").expect("write");
    assert_eq!(
        first_config_file(&dirs),
        Some(dirs[1].join("config.yaml")),
        "the home directory comes before the working directory"
    );
    std::fs::write(dirs[1].join("config.toml"), "").expect("write");
    assert_eq!(
        first_config_file(&dirs),
        Some(dirs[1].join("config.toml")),
        "TOML comes first within a directory"
    );
    std::fs::write(dirs[0].join("config.yml"), "").expect("write");
    assert_eq!(
        first_config_file(&dirs),
        Some(dirs[0].join("config.yml")),
        "/etc/flotilla comes first"
    );
}
