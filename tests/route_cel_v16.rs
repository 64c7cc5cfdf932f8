//! What analyze --gateway-api-version v1.6.3 says the route CRDs refuse about
//! backend references, against what Gateway API v1.6.3's experimental CRDs
//! on a real kube-apiserver refuse (tests/support/route_cel.rs).

mod support;

use support::{Channel, ControlPlane};

#[tokio::test]
async fn analyze_refuses_what_the_crds_refuse() {
    let cp = ControlPlane::shared(Channel::Experimental);
    let (client, ns) = cp.namespace("route-cel").await;
    let refused = support::route_cel::differential(&client, &ns, "v1.6.3").await;
    // The corpus exercises both sides: some cases refused, most accepted.
    assert!(refused > 10, "{refused} refused");
}
