//! `/openapi.json` is generated from the handlers: every route any role serves is in it (read
//! from the routers' source, so a new route without a document fails here), and the document
//! describes the bodies the handlers produce.

use std::collections::BTreeSet;

/// Paths routed in a crate's non-test source: the string literal after each `.route(`.
fn routes_in(dir: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for piece in code.split(".route(").skip(1) {
                let literal = piece.trim_start();
                if let Some(rest) = literal.strip_prefix('"') {
                    out.insert(rest.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn every_route_is_in_the_document() {
    let doc = serde_json::to_value(api::openapi_document()).unwrap();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    // The dashboard's page and assets are not part of the API.
    let not_api = ["/", "/assets/{*file}"];
    let mut routed = BTreeSet::new();
    for dir in [
        "api/src",
        "fanout-gateway/src",
        "httpkit/src",
        "game-server/src",
        "src",
    ] {
        routed.extend(routes_in(dir));
    }
    assert!(routed.len() >= 15, "found only {routed:?}");
    for route in &routed {
        if not_api.contains(&route.as_str()) {
            continue;
        }
        assert!(
            documented.contains(route),
            "{route} is routed but not in /openapi.json"
        );
    }
    for path in &documented {
        assert!(routed.contains(path), "{path} is documented but not routed");
    }
}

#[test]
fn responses_name_their_schemas() {
    let doc = serde_json::to_value(api::openapi_document()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ErrorBody",
        "MatchList",
        "MatchListing",
        "MatchSnapshot",
        "SpectatorState",
        "PlayerView",
        "Board",
        "BoardEntry",
        "PlayerStats",
        "MatchSummary",
        "GuestResponse",
        "Assignment",
        "GatewayChoice",
        "ReadyBody",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    // Every schema a response or a property points at is defined.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "{name} is referenced but not defined"
        );
    }
    // Each error status of each operation has the error body; each operation has a 200/101.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("200") || responses.contains_key("101"),
                "{method} {path}: no success response"
            );
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let body = r["content"]["application/json"]["schema"].to_string();
                    assert!(
                        body.contains("ErrorBody") || body.contains("ReadyBody"),
                        "{method} {path} {status}: {body}"
                    );
                }
            }
        }
    }
    // The stream documents its 429 and 503 and its resume parameters.
    let stream = &doc["paths"]["/v1/matches/{id}/stream"]["get"];
    for status in ["401", "429", "503"] {
        assert!(stream["responses"].get(status).is_some(), "stream {status}");
    }
    let params = stream["parameters"].to_string();
    for p in ["since", "Last-Event-ID", "format", "from"] {
        assert!(params.contains(p), "stream parameter {p}");
    }
    // The snapshot's state is described down to the players.
    let state = &schemas["SpectatorState"]["properties"];
    assert!(
        state["players"].to_string().contains("PlayerView"),
        "{state}"
    );
}
