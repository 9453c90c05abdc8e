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
    let not_api = ["/", "/assets/{*file}", "/overlay/match/{id}"];
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
    // Operation ids name operations (clients generated from the document use them), so each
    // is unique.
    let mut ids = std::collections::HashSet::new();
    for ops in doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        }
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
                ["200", "101", "204"]
                    .iter()
                    .any(|s| responses.contains_key(*s)),
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

/// The TypeScript client's REST types are generated from `clients/typescript/openapi.json`
/// (`npm run generate`); that file must be the document the server serves, or the client's
/// types drift from the server. `GRANDSTAND_WRITE_OPENAPI=1` rewrites it.
#[test]
fn the_typescript_client_is_generated_from_the_served_document() {
    let served = serde_json::to_string_pretty(&api::openapi_document()).unwrap() + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript/openapi.json");
    if std::env::var_os("GRANDSTAND_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "clients/typescript/openapi.json is not the served document: run \
         `GRANDSTAND_WRITE_OPENAPI=1 cargo test --test openapi`, then `npm run build` in \
         clients/typescript, and commit both"
    );
}
