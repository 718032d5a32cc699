pub mod proxy_peers;
