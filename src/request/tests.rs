//! Every order in which a host can deliver a short request's events, on both hosts, checked by
//! the simulator's invariant and against the answer a correct gateway gives.

use super::sim::{self, Body, End, Event, Idp, Setup, Token};
use super::HostProfile;

fn setups() -> Vec<Setup> {
    let mut out = Vec::new();
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for (keys_loaded, idp) in [(true, Idp::Up), (false, Idp::Up), (false, Idp::Down)] {
            for token in
                [Token::Good, Token::Forged, Token::NoTier, Token::Expired, Token::Missing, Token::DuplicateApiKey]
            {
                for body in [Body::Allowed, Body::NotAllowed, Body::TooLarge] {
                    let shapes: &[(usize, bool, bool)] = match profile {
                        HostProfile::Envoy => &[(1, false, false), (3, false, false), (2, true, false)],
                        HostProfile::Ngx => &[(1, false, false), (1, false, true)],
                    };
                    for &(chunks, trailers, spilled) in shapes {
                        out.push(Setup { profile, keys_loaded, idp, token, body, chunks, trailers, spilled });
                    }
                }
            }
        }
    }
    out
}

/// All event sequences of length `n`.
fn sequences(n: u32) -> impl Iterator<Item = Vec<Event>> {
    const ALL: [Event; 4] = [Event::Chunk, Event::Trailers, Event::Answer, Event::Reset];
    (0..4usize.pow(n)).map(move |mut code| {
        (0..n)
            .map(|_| {
                let e = ALL[code % 4];
                code /= 4;
                e
            })
            .collect()
    })
}

#[test]
fn every_event_order_fails_closed_and_ends_with_the_right_answer() {
    let mut runs = 0;
    for setup in setups() {
        let want = sim::expected(&setup);
        for events in sequences(4) {
            let got = sim::run(&setup, &events).unwrap_or_else(|why| panic!("{setup:?} {events:?}: {why}"));
            if got != End::Reset {
                assert!(want.contains(&got), "{setup:?} {events:?}: {got:?}, want one of {want:?}");
            }
            runs += 1;
        }
    }
    assert!(runs > 10_000, "{runs}");
}

#[test]
fn without_reset_every_request_gets_its_answer() {
    for setup in setups() {
        let events = [Event::Answer, Event::Chunk, Event::Chunk, Event::Answer, Event::Trailers];
        let got = sim::run(&setup, &events).unwrap_or_else(|why| panic!("{setup:?}: {why}"));
        assert!(sim::expected(&setup).contains(&got), "{setup:?}: {got:?}");
    }
}

/// nginx reads `Content-Length: 00` as no body and then never calls the body callback: such a
/// request is decided at its headers, as one declaring `0`.
#[test]
fn a_length_of_zero_written_any_way_is_no_body() {
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for length in ["0", "00", " 000 "] {
            for (path, status) in [("/v1/messages", 400), ("/v1/models", 404)] {
                let step =
                    sim::headers_step(profile, &[(":method", "POST"), (":path", path), ("Content-Length", length)]);
                let reply = step.reply.unwrap_or_else(|| panic!("{profile:?} {path} {length:?}: not answered at once"));
                assert_eq!(reply.status, status, "{profile:?} {path} {length:?}");
            }
        }
    }
}

/// On ngx a request refused at its headers is answered at the body, which nginx never hands over
/// when a chunked body turns out empty; nginx then proxies it. It must carry nothing of the
/// client's: credentials and the gateway's own headers are emptied on every path.
#[test]
fn on_ngx_a_request_refused_before_its_body_carries_nothing_of_the_clients() {
    let spoofed =
        [("X-Authenticated-User", "mallory"), ("x-user-email", "ceo@example.com"), ("x-gateway-target", "evil")];
    for path in ["/v1/models", "/v1/messages"] {
        let mut headers = vec![(":method", "POST"), (":path", path), ("Transfer-Encoding", "chunked")];
        headers.extend(spoofed);
        let step = sim::headers_step(HostProfile::Ngx, &headers);
        assert!(step.reply.is_none() && !step.forwarded, "{path}: decided at the body");
        let mut emptied: Vec<&str> =
            step.set_headers.iter().filter(|(_, v)| v.is_empty()).map(|(n, _)| n.as_str()).collect();
        emptied.sort_unstable();
        assert_eq!(
            emptied,
            ["authorization", "x-api-key", "x-authenticated-user", "x-gateway-target", "x-user-email"],
            "{path}"
        );
        assert!(
            step.set_headers.iter().all(|(_, v)| v.is_empty()),
            "{path}: nothing of the gateway's before the decision"
        );
    }
}

/// ngx sets or clears only a header's first copy, and nginx proxies the others as sent: a
/// request with a guarded header twice is answered at its headers on ngx, whatever its path and
/// body (an empty chunked one calls no body callback, and nginx would proxy it with the second
/// copy), and the connection is closed after the answer since the body stays unread.
#[test]
fn on_ngx_a_guarded_header_sent_twice_is_answered_at_the_headers() {
    let token = sim::token_of(Token::Good);
    for path in ["/v1/messages", "/v1/models", "/api/hello"] {
        for (name, value, want) in [
            ("x-api-key", token.as_str(), (401, "duplicate_credential")),
            ("x-authenticated-user", "ceo", (400, "repeated_header")),
            ("X-Gateway-Target", "evil", (400, "repeated_header")),
        ] {
            for framing in [("Transfer-Encoding", "chunked"), ("Content-Length", "40")] {
                let headers = [(":method", "POST"), (":path", path), framing, (name, value), (name, value)];
                let step = sim::headers_step(HostProfile::Ngx, &headers);
                let reply = step.reply.unwrap_or_else(|| panic!("{path} {name} {framing:?}: not answered at once"));
                assert_eq!((reply.status, reply.reason), want, "{path} {name} {framing:?}");
                assert!(reply.headers.contains(&("connection".into(), "close".into())), "{path} {name}");
                assert!(!step.forwarded && step.flow == super::Flow::Pause, "{path} {name}");
            }
        }
    }
    // Envoy takes every copy away, reads the body, and keeps the connection.
    let headers = [(":method", "POST"), (":path", "/v1/messages"), ("Content-Length", "40"), ("x-api-key", "a")];
    let step = sim::headers_step(HostProfile::Envoy, &[headers.as_slice(), &[("x-api-key", "a")]].concat());
    let reply = step.reply.expect("refused");
    assert_eq!((reply.status, reply.reason), (401, "duplicate_credential"));
    assert!(!reply.headers.iter().any(|(n, _)| n == "connection"));
}

/// Envoy hands a repeated header on as one value joined with `,`: a repeated `Authorization`
/// is a credential sent twice, not a token that does not parse or one that differs from
/// `x-api-key` (whose answer tells the person to unset ANTHROPIC_API_KEY).
#[test]
fn on_envoy_a_joined_authorization_is_a_credential_sent_twice() {
    let token = sim::token_of(Token::Good);
    let joined = format!("Bearer {token},Bearer {token}");
    for with_key in [true, false] {
        let mut headers = vec![(":method", "POST"), (":path", "/v1/messages"), ("Content-Length", "40")];
        headers.push(("authorization", joined.as_str()));
        if with_key {
            headers.push(("x-api-key", token.as_str()));
        }
        let step = sim::bare_headers_step(HostProfile::Envoy, &headers);
        let reply = step.reply.unwrap_or_else(|| panic!("x-api-key {with_key}: not refused"));
        assert_eq!((reply.status, reply.reason), (401, "duplicate_credential"), "x-api-key {with_key}");
    }
}

/// A declared length past what the VM's usize holds (4 GiB on wasm32) or past u64 is a body too
/// large, with the limit named, not a length that is "not a number".
#[test]
fn a_huge_declared_length_is_too_large() {
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for length in ["4294967296", "18446744073709551615", "18446744073709551616", "99999999999999999999999"] {
            let step = sim::headers_step(
                profile,
                &[(":method", "POST"), (":path", "/v1/messages"), ("Content-Length", length)],
            );
            match profile {
                HostProfile::Envoy => {
                    let reply = step.reply.unwrap_or_else(|| panic!("{length}: not answered at once"));
                    assert_eq!((reply.status, reply.reason), (400, "body_too_large"), "{length}");
                }
                // ngx answers a body too large once it is read (a length that is not a number, at once).
                HostProfile::Ngx => assert!(step.reply.is_none() && !step.forwarded, "{length}: {step:?}"),
            }
        }
        let step =
            sim::headers_step(profile, &[(":method", "POST"), (":path", "/v1/messages"), ("Content-Length", "12a")]);
        assert_eq!(step.reply.map(|r| r.status), Some(400), "{profile:?}");
    }
}

#[test]
fn an_encoded_body_is_refused_and_identity_is_not_an_encoding() {
    let head = |coding: &'static str| {
        let headers =
            [(":method", "POST"), (":path", "/v1/messages"), ("Content-Length", "20"), ("Content-Encoding", coding)];
        sim::headers_step(HostProfile::Envoy, &headers)
    };
    for coding in ["gzip", "deflate", "br", "zstd", "identity, gzip"] {
        let reply = head(coding).reply.unwrap_or_else(|| panic!("{coding:?}: not refused"));
        assert_eq!((reply.status, reply.reason), (415, "content_encoding"), "{coding:?}");
    }
    for coding in ["identity", " Identity ", ""] {
        let step = head(coding);
        assert!(step.reply.is_none(), "{coding:?}: refused");
    }
}

/// An answer that ends with its headers (HTTP/2, no body) gets no body callback: it is settled
/// at the headers, an error refunded, and its record handed out before the host's access log.
#[test]
fn an_answer_without_a_body_is_settled_at_its_headers() {
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        let answer =
            super::AnswerHead { status: Some(503), content_type: "", length: None, error_type: None, headers: &[] };
        let step = sim::answer_headers_step(profile, answer, true);
        let settled = step.settled.unwrap_or_else(|| panic!("{profile:?}: not settled"));
        assert_eq!(settled.outcome, crate::metering::Outcome::Complete, "{profile:?}: an error answer is refunded");
        assert_eq!(step.record.map(|r| r.status), Some(Some(503)), "{profile:?}");
        let open = sim::answer_headers_step(profile, answer, false);
        assert!(open.settled.is_none() && open.record.is_none(), "{profile:?}: a body is still to come");
    }
}

/// The provider refusing the gateway's key with an answer that ends at its headers (an empty
/// 401 or 403) still gets the client the 502 that says so: no body callback follows, so it goes
/// as a local answer carrying the headers the step would have set, settled and recorded once.
#[test]
fn a_bodiless_refusal_of_the_gateways_key_is_answered_locally() {
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for (status, length) in [(401, Some(0)), (403, None)] {
            let answer =
                super::AnswerHead { status: Some(status), content_type: "", length, error_type: None, headers: &[] };
            let step = sim::answer_headers_step(profile, answer, true);
            let local = step.replaced_answer.unwrap_or_else(|| panic!("{profile:?} {status}: no local answer"));
            assert_eq!(local.status, 502);
            assert!(local.headers.contains(&("x-should-retry".to_owned(), "false".to_owned())), "{:?}", local.headers);
            assert!(!local.headers.iter().any(|(n, _)| n == ":status"), "{:?}", local.headers);
            let body: serde_json::Value = serde_json::from_slice(&local.body).unwrap();
            assert_eq!(body["error"]["type"], "api_error");
            assert!(body["error"]["message"].as_str().unwrap().contains(&format!("credentials ({status})")));
            assert!(step.reply.is_none(), "not counted as a refusal of the request");
            assert!(step.response_headers.is_empty() && step.remove_response_headers.is_empty());
            assert_eq!(step.flow, super::Flow::Pause);
            assert_eq!(step.record.map(|r| r.status), Some(Some(502)));
            assert!(step.settled.is_some());
            // With a body to come, the body is replaced as before.
            let open = sim::answer_headers_step(profile, answer, false);
            assert!(open.replaced_answer.is_none());
        }
    }
}

/// A request the host layer answered itself (its body never came, see `body_watch`) ends as
/// answered: one record with the refusal, nothing forwarded when the body comes after all.
#[test]
fn a_request_answered_by_the_host_layer_is_recorded_once_and_never_forwarded() {
    let [answered, again, late, done] = sim::answered_elsewhere_steps(crate::body_watch::body_not_seen());
    let record = answered.record.expect("a record");
    assert_eq!((record.status, record.refusal), (Some(500), Some("body_not_seen")));
    assert!(answered.reply.is_none(), "the host layer sent the answer already");
    assert_eq!(again, super::Step::default(), "answered once");
    assert!(!late.forwarded && late.reply.is_none() && late.set_headers.is_empty() && late.body.is_none());
    assert_eq!(late.flow, super::Flow::Pause);
    assert!(done.record.is_none(), "one record");
}

/// A token signed by a key the worker lacks, when the refetch cannot reach the IdP: `503`
/// (a new token, from the same new key, cannot help), not a 401 that has Claude Code re-run
/// its sign-in for minutes. With the IdP up and still no such key: 401.
#[test]
fn an_unknown_key_while_the_idp_is_down_is_unavailable_not_unauthorized() {
    let down = sim::unknown_kid_answer(Idp::Down).expect("an answer");
    assert_eq!((down.status, down.reason), (503, "keys_unavailable"));
    let up = sim::unknown_kid_answer(Idp::Up).expect("an answer");
    assert_eq!((up.status, up.reason), (401, "unknown_kid"));
}

/// ngx sets or clears only the first copy of a request header and nginx forwards the others, so
/// every header the forward sets or clears may come once, on both hosts alike: a second
/// `accept-encoding: gzip` would reach the provider beside the gateway's `identity` and make the
/// answer unreadable to the meter.
#[test]
fn a_header_the_forward_sets_may_come_only_once() {
    let twice: [&[(&str, &str)]; 5] = [
        &[("Accept-Encoding", "gzip"), ("accept-encoding", "gzip, br")],
        &[("content-type", "application/json"), ("Content-Type", "text/plain")],
        &[("accept", "application/json"), ("accept", "*/*")],
        &[("x-amzn-bedrock-service-tier", "priority"), ("X-Amzn-Bedrock-Service-Tier", "priority")],
        &[("x_user_tier", "power"), ("X_USER_TIER", "power")],
    ];
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for headers in twice {
            let (head, body) = sim::steps_with(profile, headers);
            let reply = head.reply.as_ref().or(body.reply.as_ref());
            assert!(
                reply.is_some_and(|r| (r.status, r.reason) == (400, "repeated_header")),
                "{profile:?} {headers:?}: {head:?} then {body:?}"
            );
            assert!(!body.forwarded, "{profile:?} {headers:?}");
        }
        // Once each, they pass.
        let (_, body) = sim::steps_with(profile, &[("Accept-Encoding", "gzip"), ("x-amzn-trace-id", "1")]);
        assert!(body.forwarded && body.reply.is_none(), "{profile:?}: {body:?}");
    }
}

/// CGI-style readers behind the gateway (`HTTP_X_USER_TIER`) take `x_user_tier` for
/// `x-user-tier`, and Envoy forwards such names by default: the identity headers and the
/// client's credentials are taken away under any spelling.
#[test]
fn identity_headers_spelt_with_underscores_are_taken_away() {
    let spoofed = [
        ("x_authenticated_user", "mallory"),
        ("X_User_Tier", "power"),
        ("x_user_email", "ceo@example.com"),
        ("x_gateway_target", "evil"),
    ];
    let (head, body) = sim::steps_with(HostProfile::Envoy, &spoofed);
    assert!(body.forwarded, "{head:?} {body:?}");
    for (name, _) in spoofed {
        assert!(head.remove_headers.contains(&name.to_ascii_lowercase()), "{name}: {:?}", head.remove_headers);
    }
    let (head, body) = sim::steps_with(HostProfile::Ngx, &spoofed);
    assert!(body.forwarded, "{body:?}");
    for (name, _) in spoofed {
        let lower = name.to_ascii_lowercase();
        assert!(head.set_headers.iter().any(|(n, v)| *n == lower && v.is_empty()), "{name}: {:?}", head.set_headers);
    }
    // A credential under another spelling is taken away too, and is no credential.
    let (head, body) = sim::steps_with(HostProfile::Envoy, &[("x_api_key", "sk-ant-mine")]);
    assert!(body.forwarded && head.remove_headers.contains(&"x_api_key".to_owned()), "{head:?} {body:?}");
}

/// The provider gets neither the client's cookies nor a credential meant for a proxy, and no
/// header that holds the client's token (a proxy in front may copy it into one of its own) nor
/// its signature; other headers pass, a value that merely resembles the token included.
#[test]
fn no_header_carrying_the_clients_token_or_cookies_goes_upstream() {
    let token = sim::token_of(Token::Good);
    let signature = token.rsplit('.').next().unwrap_or_default().to_owned();
    let carried = format!("Bearer {token}");
    let cookie = format!("theme=dark; at={signature}");
    // The simulated client also sends `X-Forwarded-Access-Token` with the token, a `cookie`
    // holding it and a `Proxy-Authorization`.
    let carriers = [
        ("X-Forwarded-Access-Token", ""),
        ("cookie", ""),
        ("Proxy-Authorization", ""),
        ("x-original-authorization", carried.as_str()),
        ("x-auth-request-access-token", cookie.as_str()),
        // Not UTF-8 (the host layer's stand-in for it): it cannot be searched, so it goes too.
        ("x-latin1-note", crate::header_map::NOT_UTF8),
    ];
    let kept = [("x-request-note", "hello"), ("x-payload-prefix", &token[..token.len() - signature.len() - 1])];
    let extra: Vec<(&str, &str)> = carriers[3..].iter().chain(&kept).copied().collect();
    let (head, body) = sim::steps_with(HostProfile::Envoy, &extra);
    assert!(body.forwarded, "{head:?} {body:?}");
    for (name, _) in carriers {
        assert!(head.remove_headers.contains(&name.to_ascii_lowercase()), "{name}: {:?}", head.remove_headers);
    }
    for (name, _) in kept {
        assert!(!head.remove_headers.contains(&name.to_owned()), "{name}: {:?}", head.remove_headers);
    }
    let (head, body) = sim::steps_with(HostProfile::Ngx, &extra);
    assert!(body.forwarded, "{body:?}");
    for (name, _) in carriers {
        let lower = name.to_ascii_lowercase();
        assert!(head.set_headers.iter().any(|(n, v)| *n == lower && v.is_empty()), "{name}: {:?}", head.set_headers);
    }
    for (name, _) in kept {
        assert!(!head.set_headers.iter().any(|(n, _)| n == name), "{name}: {:?}", head.set_headers);
    }
    // ngx would clear the first copy only: a carrier sent twice is refused, as any guarded
    // header, whichever copy holds the token.
    for first in [("Cookie", "a=1"), ("x-Original-Authorization", "none")] {
        let (head, body) = sim::steps_with(HostProfile::Ngx, &[first, ("x-original-authorization", &carried)]);
        let reply = head.reply.as_ref().or(body.reply.as_ref());
        assert!(reply.is_some_and(|r| (r.status, r.reason) == (400, "repeated_header")), "{head:?} {body:?}");
    }
    // A token sent in x-api-key alone is searched for as well.
    let alone = [(":method", "POST"), (":path", "/v1/messages"), ("x-api-key", &token), ("x-copy", &cookie)];
    let head = sim::bare_headers_step(HostProfile::Envoy, &alone);
    assert!(head.remove_headers.contains(&"x-copy".to_owned()), "{head:?}");
}

/// On ngx an answer sent at the headers leaves the body unread on a keep-alive connection,
/// where nginx reads it as the next request: the connectivity check with a body waits for it,
/// like every other early answer there. Envoy answers it at once.
#[test]
fn the_connectivity_check_with_a_body_is_answered_after_it_on_ngx() {
    for (method, path) in [("GET", "/"), ("HEAD", "/api/hello"), ("GET", "/api/hello")] {
        for framing in [("Content-Length", "40"), ("Transfer-Encoding", "chunked")] {
            let step = sim::headers_step(HostProfile::Ngx, &[(":method", method), (":path", path), framing]);
            assert!(
                step.reply.is_none() && step.flow == super::Flow::Continue,
                "{method} {path} {framing:?}: {step:?}"
            );
            let step = sim::headers_step(HostProfile::Envoy, &[(":method", method), (":path", path), framing]);
            assert_eq!(step.reply.map(|r| r.status), Some(200), "{method} {path} {framing:?}");
        }
        let step = sim::headers_step(HostProfile::Ngx, &[(":method", method), (":path", path)]);
        assert_eq!(step.reply.map(|r| r.status), Some(200), "{method} {path} without a body");
    }
}

/// ngx_wasm_module calls no body callback for a chunked body that turns out empty, and nginx
/// then proxies a request the filter never decided: the upstream's answer is replaced by what
/// the request gets with an empty body.
#[test]
fn an_answer_to_a_request_ngx_proxied_undecided_is_replaced() {
    for (method, path, token, want) in [
        ("POST", "/v1/messages", Token::Good, (400, "missing_model")),
        ("POST", "/v1/messages?beta=true", Token::Missing, (401, "missing_token")),
        ("POST", "/v1/models", Token::Good, (404, "not_found")),
        ("GET", "/api/hello", Token::Missing, (200, "ok")),
    ] {
        let (head, undecided, answer) = sim::ngx_empty_chunked(method, path, token, 401);
        assert!(head.reply.is_none() && head.flow == super::Flow::Continue && undecided, "{path}: {head:?}");
        let answer = answer.expect("the upstream's answer is replaced");
        let status = answer.response_headers.iter().find(|(n, _)| n == ":status").map(|(_, v)| v.as_str());
        assert_eq!(status, Some(want.0.to_string().as_str()), "{method} {path} {token:?}");
        assert!(answer.remove_response_headers.contains(&"content-length".to_owned()));
        let body = answer.response_body.expect("the body is replaced");
        if want.0 != 200 {
            let record = answer.record.as_ref().expect("a record");
            assert_eq!((record.status, record.refusal), (Some(want.0), Some(want.1)));
            let error: serde_json::Value = serde_json::from_slice(&body).expect("Anthropic's error shape");
            assert_eq!(error["type"], "error", "{error}");
        } else {
            assert!(body.is_empty() && answer.record.is_none(), "the connectivity check leaves no record");
        }
        assert!(!answer.forwarded && answer.reply.is_none() && answer.flow == super::Flow::Continue);
    }
    // nginx's own answers about reading the body (it proxies nothing then) stand.
    for status in [408, 413] {
        let (_, undecided, answer) = sim::ngx_empty_chunked("POST", "/v1/messages", Token::Good, status);
        assert!(undecided && answer.is_none(), "{status}");
    }
}

/// A forward the host could not carry out (a header or the body could not be written) is
/// answered 500 `rewrite_failed`: its record says so (it was recorded as a forwarded 500), and
/// what admission held is given back, on both hosts.
#[test]
fn a_forward_the_host_could_not_carry_out_is_recorded_as_refused_and_charges_nothing() {
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        let ([failed, passing, done], held) = sim::not_carried_out_steps(profile);
        let reply = failed.reply.as_ref().unwrap_or_else(|| panic!("{profile:?}: no answer"));
        assert_eq!((reply.status, reply.reason), (500, "rewrite_failed"), "{profile:?}");
        let record = failed.record.as_ref().unwrap_or_else(|| panic!("{profile:?}: no record"));
        assert_eq!((record.status, record.refusal), (Some(500), Some("rewrite_failed")), "{profile:?}");
        assert!(passing.record.is_none() && done.record.is_none(), "{profile:?}: one record only");
        assert_eq!(held, 0, "{profile:?}: the hold was given back");
    }
}

/// ngx forwards the URI the client sent, not the `:path` the filter sets: a request signed for
/// Bedrock would go to the route's upstream (the Anthropic API) with the session token and the
/// conversation. On ngx it is refused before anything is sent, and its hold given back; on
/// Envoy it goes to Bedrock.
#[test]
fn a_bedrock_target_is_refused_on_ngx_and_forwarded_on_envoy() {
    let (step, _, held) = sim::bedrock_steps(HostProfile::Ngx);
    let reply = step.reply.as_ref().unwrap_or_else(|| panic!("no answer: {step:?}"));
    assert_eq!((reply.status, reply.reason), (502, "bedrock_needs_envoy"));
    assert!(reply.headers.contains(&("x-should-retry".into(), "false".into())), "{reply:?}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("(switch with /model): claude-sonnet-4-6."), "the tier's Anthropic model: {body}");
    assert!(!step.forwarded && step.body.is_none() && step.set_headers.is_empty(), "{step:?}");
    assert!(step.warnings.iter().any(|w| w.contains("\"bedrock\" is a Bedrock target")), "{:?}", step.warnings);
    let record = step.record.as_ref().unwrap_or_else(|| panic!("no record"));
    assert_eq!((record.status, record.refusal), (Some(502), Some("bedrock_needs_envoy")));
    assert_eq!(record.model.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(held, 0, "the hold was given back");

    let (step, _, _) = sim::bedrock_steps(HostProfile::Envoy);
    assert!(step.forwarded && step.reply.is_none(), "{step:?}");
    assert!(step.set_headers.iter().any(|(n, v)| n == "x-amz-security-token" && v == "sim-session-token"));
}

/// Who asks comes before what is asked: a request without a usable token is refused 401 on
/// both hosts whatever its body says (none, encoded, declared too large), and a good token's
/// request with such a body gets the body's refusal, without fetching keys for it.
#[test]
fn the_token_is_refused_before_the_body_is_looked_at() {
    let post = [(":method", "POST"), (":path", "/v1/messages")];
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, usize, (u32, &'a str));
    let bodies: [Case; 3] = [
        ("no body", vec![("content-length", "0")], 0, (400, "missing_model")),
        ("encoded", vec![("content-length", "20"), ("content-encoding", "gzip")], 20, (415, "content_encoding")),
        ("too large", vec![("content-length", "99999999999")], 20, (400, "body_too_large")),
    ];
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for (what, extra, len, problem) in &bodies {
            let headers: Vec<(&str, &str)> = post.iter().chain(extra).copied().collect();
            let answer = |kind, keys_loaded| {
                let (head, body, fetches) = sim::head_and_body(profile, kind, keys_loaded, &headers, *len);
                assert!(!head.forwarded, "{profile:?} {what} {kind:?}: forwarded");
                let answered = if head.reply.is_some() { Some(head) } else { body };
                let step = answered.unwrap_or_else(|| panic!("{profile:?} {what} {kind:?}: not answered"));
                let (reply, record) = (step.reply.expect("a reply"), step.record.unwrap_or_default());
                ((reply.status, reply.reason), fetches, record.sub)
            };
            for kind in [Token::Missing, Token::Forged, Token::Expired] {
                let ((status, _), _, _) = answer(kind, true);
                assert_eq!(status, 401, "{profile:?} {what} {kind:?}");
            }
            // The admitted person's record names them on both hosts.
            let (refusal, fetches, sub) = answer(Token::Good, true);
            assert_eq!((refusal, fetches), (*problem, 0), "{profile:?} {what}");
            assert!(sub.is_some(), "{profile:?} {what}: the record names the person");
            // Keys not fetched yet: the body's refusal, and no callout outliving the request.
            let (refusal, fetches, _) = answer(Token::Good, false);
            assert_eq!((refusal, fetches), (*problem, 0), "{profile:?} {what}, keys not loaded");
        }
    }
}

/// ngx_wasm_module hands a filter at most 100 header pairs and drops the rest unseen: a full list
/// is refused at once on ngx (closing the connection when a body follows), whatever hides past
/// it; one pair fewer goes on. Envoy refuses more than 100 headers itself.
#[test]
fn on_ngx_a_header_list_at_the_hosts_cap_is_refused_at_once() {
    let names: Vec<String> = (0..120).map(|i| format!("x-filler-{i}")).collect();
    let head = |profile, count: usize, length: &'static str| {
        let mut headers = vec![(":method", "POST"), (":path", "/v1/messages"), ("content-length", length)];
        headers.extend(names.iter().map(|n| (n.as_str(), "1")));
        // With the credential the sim adds (two pairs), `count` pairs in all.
        headers.truncate(count - 2);
        sim::headers_step(profile, &headers)
    };
    for (length, close) in [("40", true), ("0", false)] {
        let reply = head(HostProfile::Ngx, 100, length).reply.expect("refused at once");
        assert_eq!((reply.status, reply.reason), (431, "too_many_headers"), "length {length}");
        let closes = reply.headers.iter().any(|(n, v)| n == "connection" && v == "close");
        assert_eq!(closes, close, "length {length}: the unread body must not be taken for the next request");
        let step = head(HostProfile::Ngx, 99, length);
        assert!(step.reply.as_ref().is_none_or(|r| r.reason != "too_many_headers"), "99 pairs: {step:?}");
    }
    let step = head(HostProfile::Envoy, 100, "40");
    assert!(step.reply.is_none(), "Envoy: {step:?}");
}

/// The samples' last Envoy route answers a target without a route with a 502 marked
/// `x-gateway-no-route`: recorded as refused and logged, the mark taken away; the same header on
/// another answer (an upstream's) changes nothing but is taken away too.
#[test]
fn the_proxys_no_route_answer_is_recorded_as_refused() {
    let marked = [(":status", "502"), ("content-type", "application/json"), ("x-gateway-no-route", "1")];
    let answer = |status, headers| super::AnswerHead {
        status: Some(status),
        content_type: "application/json",
        length: None,
        error_type: None,
        headers,
    };
    let step = sim::answer_headers_step(HostProfile::Envoy, answer(502, &marked), true);
    assert!(step.warnings.iter().any(|w| w.contains("no route for the target of model")), "{:?}", step.warnings);
    assert!(step.remove_response_headers.contains(&"x-gateway-no-route".to_owned()));
    let record = step.record.unwrap_or_else(|| panic!("no record"));
    assert_eq!((record.status, record.refusal), (Some(502), Some("no_route")));

    let step = sim::answer_headers_step(HostProfile::Envoy, answer(200, &marked[1..]), true);
    assert!(step.warnings.iter().all(|w| !w.contains("no route")), "{:?}", step.warnings);
    assert!(step.remove_response_headers.contains(&"x-gateway-no-route".to_owned()));
    assert_eq!(step.record.and_then(|r| r.refusal), None);
}
