use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

use super::*;

// The registry is process-wide; every test registers values of its own.

#[test]
fn a_registered_secret_is_removed_in_plain_form() {
    register_secret("plain-Zq7xW1-secret");
    assert_eq!(
        scrub("the token plain-Zq7xW1-secret is not valid"),
        "the token *** is not valid"
    );
}

#[test]
fn a_registered_secret_is_removed_in_base64_at_every_alignment() {
    let secret = "b64-Kp9vT3+secret/value";
    register_secret(secret);
    for prefix in ["", "a", "ab", "client-id:"] {
        let plain = format!("{prefix}{secret}");
        for encoded in [STANDARD.encode(&plain), URL_SAFE.encode(&plain)] {
            let clean = scrub(&format!("Basic {encoded} was refused")).into_owned();
            assert!(!clean.contains(&encoded), "{prefix:?}: {clean}");
            for engine_form in [STANDARD.encode(secret), URL_SAFE.encode(secret)] {
                assert!(
                    !clean.contains(engine_form.trim_end_matches('=')),
                    "{clean}"
                );
            }
        }
    }
}

#[test]
fn a_registered_secret_is_removed_url_encoded_and_json_escaped() {
    let secret = "url enc/Rt5 \"quoted\"+&=";
    register_secret(secret);
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let clean = scrub(&format!("body: client_secret_x={form}&grant_type=x")).into_owned();
    assert!(!clean.contains(&form), "{clean}");
    let percent = form.replace('+', "%20");
    assert!(!scrub(&percent).contains(&percent));
    let json = serde_json::to_string(secret).expect("a string serialises");
    let clean = scrub(&format!("{{\"echo\":{json}}}")).into_owned();
    assert!(!clean.contains(json.trim_matches('"')), "{clean}");
}

#[test]
fn an_issued_token_is_removed() {
    register_issued("issued-Yh2mN8-access");
    assert_eq!(scrub("got issued-Yh2mN8-access"), "got ***");
}

#[test]
fn the_lines_of_a_pem_secret_are_removed() {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7pemline2zz\n-----END PRIVATE KEY-----\n";
    register_secret(pem);
    let clean = scrub("quoted: BKcwggSjAgEAAoIBAQC7pemline2zz").into_owned();
    assert!(!clean.contains("BKcwggSjAgEAAoIBAQC7pemline2zz"), "{clean}");
}

#[test]
fn short_values_are_not_registered() {
    register_secret("ab1");
    assert_eq!(scrub("tab1e"), "tab1e");
}

#[test]
fn jwt_shaped_strings_are_removed() {
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMG9hIn0.c2lnbmF0dXJl-_x";
    assert_eq!(
        scrub(&format!("assertion {jwt}, rejected")),
        "assertion ***, rejected"
    );
    let encoded = STANDARD.encode(jwt);
    assert_eq!(scrub(&format!("x {encoded} y")), "x *** y");
    // A JWE's first three segments go too; text without the shape stays.
    assert_eq!(scrub("eyJ0eXAi.eyJ4.abc.def.ghi"), "***.def.ghi");
    assert_eq!(scrub("version 1.2.3 eyJ"), "version 1.2.3 eyJ");
}

#[test]
fn credential_fields_and_headers_lose_their_value() {
    let cases = [
        ("Authorization: SSWS 00aBcD", "Authorization: ***"),
        ("authorization=Bearer abc", "authorization=***"),
        ("Proxy-Authorization: Basic xyz", "Proxy-Authorization: ***"),
        ("Cookie: sid=abc; theme=dark\nnext", "Cookie: ***\nnext"),
        ("DPoP: proof-value", "DPoP: ***"),
        (
            "grant_type=client_credentials&client_secret=s3cr3t&scope=x",
            "grant_type=client_credentials&client_secret=***&scope=x",
        ),
        (
            "client_assertion_type=jwt&client_assertion=abc.def",
            "client_assertion_type=jwt&client_assertion=***",
        ),
        (
            r#"{"client_secret": "abc", "x": 1}"#,
            r#"{"client_secret": "***", "x": 1}"#,
        ),
        (
            r#"{"errorSummary":"saw \"Authorization\": \"SSWS tok\""}"#,
            r#"{"errorSummary":"saw \"Authorization\": \"***\""}"#,
        ),
        ("?access_token=abc&x=1", "?access_token=***&x=1"),
    ];
    for (text, expected) in cases {
        assert_eq!(scrub(text), expected, "{text}");
    }
}

#[test]
fn credentials_after_a_scheme_are_removed() {
    assert_eq!(
        scrub("sent Bearer 0123456789abcdefXYZ to the API"),
        "sent Bearer *** to the API"
    );
    assert_eq!(scrub("SSWS 00QCjAl4MlV-WPXM-8Zz"), "SSWS ***");
    // Ordinary words after a scheme name stay.
    assert_eq!(
        scrub("the DPoP handshake failed"),
        "the DPoP handshake failed"
    );
    assert_eq!(scrub("use_dpop_nonce"), "use_dpop_nonce");
}

#[test]
fn clean_text_is_borrowed() {
    assert!(matches!(
        scrub("Okta rejected /api/v1/users (404 E0000007: Not found)"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn the_writer_scrubs_each_write() {
    register_secret("writer-Pp4sQ9-secret");
    let mut out = Redacting(Vec::new());
    io::Write::write_all(&mut out, b"level=debug token=writer-Pp4sQ9-secret\n")
        .expect("a vector takes every byte");
    assert_eq!(String::from_utf8_lossy(&out.0), "level=debug token=***\n");
}

#[test]
fn an_error_body_is_scrubbed_and_stays_json() {
    let body = br#"{"errorCode":"E0000011","errorSummary":"Invalid token: Authorization: SSWS abc123def"}"#;
    let clean = scrub_body(body);
    let value: serde_json::Value = serde_json::from_slice(&clean).expect("still JSON");
    assert_eq!(value["errorSummary"], "Invalid token: Authorization: ***");
}

#[test]
fn a_base64_copy_of_a_request_with_a_credential_is_removed() {
    let request = "GET /api/v1/users HTTP/1.1\nauthorization: DPoP some-token-value\ndpop: \
                   eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJodG0iOiJHRVQifQ.c2ln\n\n";
    for prefix in ["", "x", "xy"] {
        let trace = STANDARD.encode(format!("{prefix}{request}"));
        assert_eq!(
            scrub(&format!("trace: {trace}")),
            "trace: ***",
            "{prefix:?}"
        );
        let trace = URL_SAFE.encode(format!("{prefix}{request}"));
        assert_eq!(
            scrub(&format!("trace: {trace}")),
            "trace: ***",
            "{prefix:?}"
        );
    }
    // Base64 of ordinary text stays.
    let harmless = STANDARD.encode("a long and harmless text, with no credential in it at all");
    assert_eq!(scrub(&harmless), harmless.as_str());
}

#[test]
fn an_issued_jwt_is_removed_by_shape_in_every_form() {
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJpc3N1ZWQtand0LXRlc3QifQ.c2lnbmVkLWJ5LXRoZS10ZXN0";
    register_issued(jwt);
    let form: String = url::form_urlencoded::byte_serialize(jwt.as_bytes()).collect();
    assert_eq!(
        scrub(&format!("client_assertion_x {form}")),
        "client_assertion_x ***"
    );
    for prefix in ["", "a", "ab"] {
        let encoded = STANDARD.encode(format!("{prefix}assertion {jwt} sent"));
        assert_eq!(
            scrub(&format!("trace {encoded}")),
            "trace ***",
            "{prefix:?}"
        );
    }
}
