//! The deployment kit's example configurations parse and describe one
//! consistent five-server cluster (a broken example is a broken promise).

use bunker::server::config::NodeConfig;
use std::path::Path;

#[test]
fn every_example_configuration_parses_and_agrees_on_the_cluster() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/example");
    let mut peers_seen = None;
    for id in 1..=5u64 {
        let path = dir.join(format!("node-{id}.toml"));
        let cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.id, id, "{}", path.display());
        assert_eq!(cfg.peers.len(), 5, "{}", path.display());
        let me = cfg.peer(id).expect("each server is in its own peer list");
        assert_eq!(
            me.peer,
            cfg.listen.peer,
            "{}: listen.peer differs from its [[peers]] entry",
            path.display()
        );
        assert_eq!(me.client, cfg.listen.client, "{}", path.display());
        let peers: Vec<_> = cfg.peers.iter().map(|p| (p.id, p.peer, p.client)).collect();
        match &peers_seen {
            None => peers_seen = Some(peers),
            Some(seen) => assert_eq!(seen, &peers, "{}: a different cluster", path.display()),
        }
    }
}
