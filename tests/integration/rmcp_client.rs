//! The official Rust SDK's OAuth client (rmcp `auth`) against the gateway: discovery from
//! the 401 challenge, dynamic registration, PKCE, consent, code exchange with `iss`
//! validation, then tool calls with its authorized transport.

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{AuthClient, AuthorizationRequest, OAuthState};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

use crate::common::{self, query_param};

#[tokio::test]
async fn rmcp_oauth_client_completes_the_flow() {
    let gw = common::spawn().await;
    let mcp_url = gw.resource();

    // Unauthenticated connect: the error carries the challenge.
    let err =
        ().serve(StreamableHttpClientTransport::from_uri(mcp_url.clone()))
            .await
            .expect_err("401 expected");
    let challenge = err.auth_challenge().expect("challenge").to_string();
    assert!(challenge.contains("resource_metadata="));

    let mut oauth = OAuthState::new(mcp_url.clone(), None)
        .await
        .expect("oauth state");
    let redirect = "http://127.0.0.1:7777/callback";
    oauth
        .start_authorization(
            AuthorizationRequest::new(redirect)
                .with_client_name("rmcp integration test")
                .with_challenge(challenge),
        )
        .await
        .expect("discovery and registration");
    let auth_url = oauth
        .get_authorization_url()
        .await
        .expect("authorization url");
    assert!(auth_url.starts_with(&gw.url("/authorize")), "{auth_url}");
    assert_eq!(
        query_param(&auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&auth_url, "resource").as_deref(),
        Some(mcp_url.as_str())
    );

    // The user approves on the consent page.
    let location = gw.consent(&auth_url, "approve").await;
    oauth
        .handle_callback_url(&location)
        .await
        .expect("code exchange with iss check");
    let manager = oauth.into_authorization_manager().expect("authorized");

    let client = AuthClient::new(reqwest::Client::default(), manager);
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(mcp_url.clone()),
    );
    let service = ().serve(transport).await.expect("authorized connect");
    let tools = service.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"));
    let args = json!({"message": "from rmcp"})
        .as_object()
        .cloned()
        .unwrap();
    let result = service
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .expect("tools/call");
    let text = serde_json::to_value(&result).unwrap();
    assert!(text.to_string().contains("from rmcp"), "{text}");
    service.cancel().await.expect("close");
    gw.stop().await;
}
