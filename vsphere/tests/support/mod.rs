pub mod proxy_peers;
pub mod vcsim;
