//! De-duplication inside one batch: identical safe parts (GET, HEAD) of a route with `dedup = true` make one
//! upstream call, and each of them is answered with that call's status, headers and body under its own
//! Content-ID. The scheduler ([`super::run`]) owns it, since it sees every part.
//!
//! Identical means: the same route, method, normalised target, the part's own headers (every name and value,
//! in order) and body. What else the upstream sees is the same for every part of a batch (its inherited
//! headers and the forwarding headers) or the gateway's own (`traceparent`), so equal parts send equal
//! requests. Parts are compared by a 128-bit digest under two keys drawn per batch, so no client can
//! arrange two different parts to collide: the cost for a batch without duplicates is one digest and one map
//! entry per safe part, no copy of any part.
//!
//! The first of identical parts leads: it is sent, and the others follow it. A follower seated while its
//! leader runs waits for its answer; one seated later is answered from it at once, so a leader's answer is
//! kept while the batch may still bring followers (until its body is all in) or has followers not yet
//! answered. A leader that fails shares nothing: its followers are sent on their own, and so are later ones.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use http::Method;

use crate::stack::{PartRequest, UpstreamResponse};

/// What identifies a part's upstream request within its batch.
pub(crate) type Digest = u128;

/// A part's place among identical parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Shares nothing: an unsafe method, or the leader of its kind failed.
    Alone,
    /// The first of its kind: sent upstream.
    Lead(Digest),
    /// Answered with its leader's answer.
    Follow(Digest),
}

/// One batch's identical-part groups, keyed by digest.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    keys: (RandomState, RandomState),
    pub leaders: HashMap<Digest, Leader>,
}

/// A group of identical parts, through its leader.
#[derive(Debug, Default)]
pub(crate) struct Leader {
    pub state: Sharing,
    /// Followers seated and waiting for the leader's answer: their indexes in the batch.
    pub waiting: Vec<usize>,
    /// Followers handed over and not yet answered, seated or not.
    pub unanswered: usize,
}

/// How far a leader has got.
#[derive(Debug, Default)]
pub(crate) enum Sharing {
    #[default]
    Pending,
    Answered(UpstreamResponse),
    Failed,
}

impl Dedup {
    /// The role of the next part handed over, on `route`. Only GET and HEAD parts can share.
    pub(crate) fn role(&mut self, route: &str, request: &PartRequest) -> Role {
        if !matches!(request.method, Method::GET | Method::HEAD) {
            return Role::Alone;
        }
        let digest = self.digest(route, request);
        match self.leaders.entry(digest) {
            Entry::Vacant(entry) => {
                entry.insert(Leader::default());
                Role::Lead(digest)
            }
            Entry::Occupied(entry) => {
                let leader = entry.into_mut();
                if matches!(leader.state, Sharing::Failed) {
                    return Role::Alone;
                }
                leader.unanswered += 1;
                Role::Follow(digest)
            }
        }
    }

    fn digest(&self, route: &str, request: &PartRequest) -> Digest {
        let mut first = self.keys.0.build_hasher();
        let mut second = self.keys.1.build_hasher();
        feed(&mut first, route, request);
        feed(&mut second, route, request);
        (u128::from(first.finish()) << 64) | u128::from(second.finish())
    }
}

/// Everything that makes two parts' upstream requests differ within one batch.
fn feed<H: Hasher>(h: &mut H, route: &str, request: &PartRequest) {
    route.hash(h);
    request.method.as_str().hash(h);
    request.path.as_str().hash(h);
    request.headers.len().hash(h);
    for (name, value) in &request.headers {
        name.as_str().hash(h);
        value.as_bytes().hash(h);
    }
    request.body.hash(h);
}
