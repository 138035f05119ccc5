//! Every order in which a host can deliver a short request's events, on both hosts, checked by
//! the simulator's invariant and against the answer a correct gateway gives.

use super::sim::{self, Body, End, Event, Idp, Setup, Token};
use super::HostProfile;

fn setups() -> Vec<Setup> {
    let mut out = Vec::new();
    for profile in [HostProfile::Envoy, HostProfile::Ngx] {
        for (keys_loaded, idp) in [(true, Idp::Up), (false, Idp::Up), (false, Idp::Down)] {
            for token in [Token::Good, Token::Forged, Token::NoTier, Token::Missing, Token::DuplicateApiKey] {
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
