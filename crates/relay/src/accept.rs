//! What the relay accepts: mail for the domains it stands in for (every customer domain at home in
//! another site), to existing mailboxes, from senders not on the blocklist. The inbound checks are the
//! Internet mail server's own tower layers (`inet_mx::checks`), ending in a hand-off onto the `relay`
//! queue instead of `inbound`. No antivirus scan here: the home site's mail server scans the message
//! when the relay hands it over, as it does all mail.

use std::sync::Arc;

use inet_mx::checks::{
    blocklist::BlocklistLayer, handoff::StoreHandoff, recipient::RecipientLayer,
};
use inet_mx::handler::MxHandler;
use store_client::directory::Directory;
use topology::{Node, Topology};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

/// The queue of this site's stores that holds the mail a relay keeps.
pub const QUEUE: &str = "relay";

pub fn handler(topology: &Arc<Topology>, node: &Node, hostname: &str) -> MxHandler {
    let directory = Directory::new(topology);
    let domains = topology
        .relayed_domains(&node.site)
        .iter()
        .map(|d| d.name.to_ascii_lowercase())
        .collect();
    let service = ServiceBuilder::new()
        .layer(RecipientLayer::for_domains(
            topology.clone(),
            directory.clone(),
            domains,
        ))
        .layer(BlocklistLayer::new(directory))
        .service(StoreHandoff::to_queue(
            topology, node, hostname, QUEUE, true,
        ));
    MxHandler::with_pipeline(hostname.to_string(), BoxCloneSyncService::new(service))
}
