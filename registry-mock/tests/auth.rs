//! Authentication: token endpoint (GET with basic auth, POST password grant), bearer scopes,
//! basic auth on /v2, anonymous pull, and the 401 challenge.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use reqwest::StatusCode;
use serde_json::Value;
use testkit::registry::*;

async fn token(
    c: &reqwest::Client,
    url: &str,
    scope: &str,
    user: Option<(&str, &str)>,
) -> reqwest::Response {
    let host = url.trim_start_matches("http://");
    let mut r = c
        .get(format!("{url}/oauth2/token"))
        .query(&[("service", host), ("scope", scope)]);
    if let Some((u, p)) = user {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.unwrap()
}

async fn token_str(c: &reqwest::Client, url: &str, scope: &str) -> String {
    let r = token(c, url, scope, Some(("alice", "pw"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["access_token"], v["token"]);
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn challenge_and_token_flow() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = false;
    })
    .await;
    let c = client();
    let host = t.url.trim_start_matches("http://").to_string();

    let r = c.get(format!("{}/v2/", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let wa = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        wa,
        format!("Bearer realm=\"http://{host}/oauth2/token\",service=\"{host}\"")
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");

    let r = c
        .get(format!("{}/v2/lib/app/manifests/v1", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let wa = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(wa.ends_with(",scope=\"repository:lib/app:pull\""), "{wa}");

    // Wrong password, missing credentials.
    assert_eq!(
        token(
            &c,
            &t.url,
            "repository:lib/app:pull",
            Some(("alice", "nope"))
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token(&c, &t.url, "repository:lib/app:pull", None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Push with a pull,push token.
    let tok = token_str(&c, &t.url, "repository:lib/app:pull,push").await;
    let blob = b"authorised bytes".to_vec();
    let d = digest(&blob);
    let r = c
        .post(format!("{}/v2/lib/app/blobs/uploads/?digest={d}", t.url))
        .bearer_auth(&tok)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/lib/app/blobs/{d}", t.url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Pull-only token cannot push; the challenge names the needed scope.
    let ro = token_str(&c, &t.url, "repository:lib/app:pull").await;
    let r = c
        .post(format!("{}/v2/lib/app/blobs/uploads/", t.url))
        .bearer_auth(&ro)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let wa = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        wa.contains("scope=\"repository:lib/app:pull,push\"") && wa.contains("insufficient_scope"),
        "{wa}"
    );
    // …nor delete, nor read another repository.
    let r = c
        .delete(format!("{}/v2/lib/app/blobs/{d}", t.url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{}/v2/other/tags/list", t.url))
        .bearer_auth(&ro)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let del = token_str(&c, &t.url, "repository:lib/app:delete").await;
    let r = c
        .delete(format!("{}/v2/lib/app/blobs/{d}", t.url))
        .bearer_auth(&del)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // A tampered token is refused.
    let mut bad = tok.clone();
    bad.insert(3, 'x');
    let r = c
        .get(format!("{}/v2/lib/app/tags/list", t.url))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Basic auth straight on /v2 works for everything.
    let r = c
        .get(format!("{}/v2/", t.url))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(format!("{}/v2/lib/app/blobs/uploads/", t.url))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(format!("{}/v2/", t.url))
        .basic_auth("alice", Some("bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // ACR attributes: PATCH needs push.
    let r = c
        .patch(format!("{}/acr/v1/lib/app", t.url))
        .bearer_auth(&ro)
        .json(&serde_json::json!({"teleportEnabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .patch(format!("{}/acr/v1/lib/app", t.url))
        .bearer_auth(&tok)
        .json(&serde_json::json!({"teleportEnabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // /mount needs a token too.
    let r = c
        .get(format!("{}/mount/v1/lib/app/_manifests/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn post_password_grant() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = false;
    })
    .await;
    let c = client();
    let host = t.url.trim_start_matches("http://").to_string();
    let r = c
        .post(format!("{}/oauth2/token", t.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "pw"),
            ("scope", "repository:x:pull,push"),
            ("service", host.as_str()),
            ("client_id", "containerd-client"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let tok = v["access_token"].as_str().unwrap();
    assert_eq!(v["expires_in"], 3600);
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/", t.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .post(format!("{}/oauth2/token", t.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wrong"),
            ("scope", "repository:x:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(format!("{}/oauth2/token", t.url))
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn anonymous_pull_but_authenticated_push() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = true;
    })
    .await;
    let c = client();
    // Push with basic auth.
    let blob = b"public".to_vec();
    let d = digest(&blob);
    let r = c
        .post(format!("{}/v2/pub/blobs/uploads/?digest={d}", t.url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(format!("{}/v2/pub/blobs/uploads/?digest={d}", t.url))
        .basic_auth("alice", Some("pw"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The /v2/ ping still challenges, so clients know to authenticate pushes…
    let r = c.get(format!("{}/v2/", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    // …but pulls go through without credentials.
    let r = c
        .get(format!("{}/v2/pub/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"public");
    // An anonymous token only carries pull.
    let r = token(&c, &t.url, "repository:pub:pull,push", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["scope"], "repository:pub:pull");
    let tok = v["access_token"].as_str().unwrap();
    let r = c
        .post(format!("{}/v2/pub/blobs/uploads/", t.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{}/v2/", t.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
