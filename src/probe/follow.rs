//! With `--probe-watch`: how one endpoint is followed, a `Health/Watch` stream or periodic
//! `Health/Check`s, and what each tick of its schedule and each event of its stream mean. Pure:
//! the prober opens, reads and closes the streams; this says when.
//!
//! A stream holds one HTTP/2 connection open per endpoint (a Check holds one only while it
//! runs), which is why watching is opt-in.
//!
//! The stream brings changes at once; a Check still goes out at every tick while it is open. A
//! wedged or partitioned server keeps its stream silent, and HTTP/2 keepalive may not PING it
//! more often than every 5 minutes (grpc-go servers close connections that do), so only the
//! Check notices such a server within the interval: what the prober exists for.

use crate::probe::state::Outcome;

/// How an endpoint is followed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Follow {
    /// No stream: one is opened at the next tick.
    #[default]
    Closed,
    /// A stream was asked for; no status has come yet.
    Opening,
    /// A stream is open (each status it streams is a result at once).
    Open,
    /// The server answered Watch with UNIMPLEMENTED: it is checked periodically from now on.
    CheckOnly,
}

/// What to do at an endpoint's tick (once per interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    OpenStream,
    Check,
    /// A stream is opening: nothing is sent.
    Wait,
}

/// What a stream reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A status streamed (the first one is the answer to the open).
    Status(Outcome),
    /// The stream could not be opened (refused, timed out, an RPC error other than
    /// UNIMPLEMENTED): the outcome a Check would have had.
    OpenFailed(Outcome),
    /// The stream ended or broke after it was open.
    Ended,
    /// The server answered Watch with UNIMPLEMENTED.
    Unimplemented,
}

/// What an event means for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub follow: Follow,
    /// A result for the endpoint's state machine, counted like a Check's.
    pub result: Option<Outcome>,
    /// Send a Check now (the server cannot Watch: do not wait a whole interval for a result).
    pub check_now: bool,
    /// The first time this endpoint falls back to Check: say so once.
    pub fell_back: bool,
}

/// The action at a tick, and the state after it. `watch`: `--probe-watch`.
pub fn tick(watch: bool, follow: Follow) -> (Tick, Follow) {
    match (watch, follow) {
        (false, f) | (true, f @ Follow::CheckOnly) => (Tick::Check, f),
        (true, Follow::Closed) => (Tick::OpenStream, Follow::Opening),
        (true, Follow::Opening) => (Tick::Wait, Follow::Opening),
        // Liveness: a silent stream cannot tell a wedged server from a steady one.
        (true, Follow::Open) => (Tick::Check, Follow::Open),
    }
}

/// What a stream's event means for an endpoint followed as `follow`.
pub fn event(follow: Follow, event: Event) -> Step {
    let step = |follow, result, check_now, fell_back| Step {
        follow,
        result,
        check_now,
        fell_back,
    };
    match event {
        Event::Status(o) => step(Follow::Open, Some(o), false, false),
        // Re-opened at the next tick, not at once: a server that drops every stream must not
        // be hammered.
        Event::OpenFailed(o) => step(Follow::Closed, Some(o), false, false),
        Event::Ended => step(Follow::Closed, Some(Outcome::Unreachable), false, false),
        Event::Unimplemented => step(Follow::CheckOnly, None, true, follow != Follow::CheckOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn without_watch_every_tick_is_a_check() {
        for f in [
            Follow::Closed,
            Follow::Opening,
            Follow::Open,
            Follow::CheckOnly,
        ] {
            assert_eq!(tick(false, f), (Tick::Check, f));
        }
    }

    #[test]
    fn a_stream_is_opened_once_and_a_check_still_goes_out_at_each_tick() {
        let (t, f) = tick(true, Follow::Closed);
        assert_eq!((t, f), (Tick::OpenStream, Follow::Opening));
        // Still opening at the next tick: no second stream, no Check.
        assert_eq!(tick(true, f), (Tick::Wait, Follow::Opening));
        let s = event(f, Event::Status(Serving));
        assert_eq!(s.follow, Follow::Open);
        assert_eq!(s.result, Some(Serving));
        // Open: a Check at every tick proves the server still answers; the stream stays open.
        for _ in 0..3 {
            assert_eq!(tick(true, s.follow), (Tick::Check, Follow::Open));
        }
        // Every streamed status is a result at once.
        let s = event(s.follow, Event::Status(NotServing));
        assert_eq!((s.follow, s.result), (Follow::Open, Some(NotServing)));
    }

    #[test]
    fn a_stream_that_ends_is_a_failure_and_is_reopened_at_the_next_tick() {
        let s = event(Follow::Open, Event::Ended);
        assert_eq!(s.follow, Follow::Closed);
        assert_eq!(s.result, Some(Unreachable));
        assert!(!s.check_now);
        assert_eq!(tick(true, s.follow).0, Tick::OpenStream);
        // One that cannot be opened: the outcome a Check would have had; re-opened next tick.
        for o in [Unreachable, TimedOut, Error] {
            let s = event(Follow::Opening, Event::OpenFailed(o));
            assert_eq!((s.follow, s.result), (Follow::Closed, Some(o)));
            assert_eq!(tick(true, s.follow).0, Tick::OpenStream);
        }
    }

    #[test]
    fn unimplemented_falls_back_to_check_once_and_for_good() {
        let s = event(Follow::Opening, Event::Unimplemented);
        assert_eq!(s.follow, Follow::CheckOnly);
        assert_eq!(s.result, None, "not the server's fault: no failure counted");
        assert!(s.check_now && s.fell_back);
        for _ in 0..3 {
            assert_eq!(tick(true, s.follow), (Tick::Check, Follow::CheckOnly));
        }
        // Said once only.
        assert!(!event(Follow::CheckOnly, Event::Unimplemented).fell_back);
    }
}
